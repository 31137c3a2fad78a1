"""Figures and prediction tables of the report, without W&B."""

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from mmsent.metrics import regression_metrics
from mmsent.pipeline import figures
from mmsent.pipeline.report import write_report


def test_confusion_matrix_counts_the_classes_of_mult_acc_7():
    rng = np.random.default_rng(0)
    labels = np.concatenate([rng.uniform(-3, 3, 200), [-3.4, 3.2, 0.5, -0.5, 1.5, 2.5]])
    predictions = np.concatenate([labels[:200] + rng.normal(0, 0.8, 200), [-9.0, 0.5, 0.5, -1.5, 2.5, 1.5]])
    matrix = figures.confusion_matrix(labels, predictions)
    assert matrix.shape == (7, 7) and matrix.sum() == len(labels)
    expected = regression_metrics(torch.tensor(predictions), torch.tensor(labels))["Mult_acc_7"]
    assert matrix.trace() / matrix.sum() == pytest.approx(expected, abs=1e-6)
    assert figures.confusion_matrix([-3.4], [3.2])[0, 6] == 1, "true -3 (row 0), predicted 3 (column 6)"


def test_predictions_table_from_predict_outputs():
    outputs = [{"id": ["a", "b"], "transcript": ["good", "bad"], "label": torch.tensor([1.0, -1.0]),
                "prediction": torch.tensor([0.5, -0.25])},
               {"id": ["c"], "transcript": ["fine"], "label": torch.tensor([0.0]), "prediction": torch.tensor([0.1])}]
    table = figures.predictions_table(outputs)
    assert list(table.columns) == ["id", "text", "label", "prediction"]
    assert table["id"].tolist() == ["a", "b", "c"]
    assert table["prediction"].tolist() == pytest.approx([0.5, -0.25, 0.1])


def test_merge_predictions_aligns_stages_by_id():
    first = pd.DataFrame({"id": ["a", "b"], "text": ["x", "y"], "label": [1.0, -1.0], "prediction": [0.1, 0.2]})
    second = pd.DataFrame({"id": ["b", "c"], "text": ["y", "z"], "label": [-1.0, 2.0], "prediction": [0.3, 0.4]})
    merged = figures.merge_predictions({"text": first, "fusion": second}).set_index("id")
    assert list(merged.columns) == ["text", "label", "pred_text", "pred_fusion"]
    assert merged.loc["b", "pred_text"] == 0.2 and merged.loc["b", "pred_fusion"] == 0.3
    assert np.isnan(merged.loc["a", "pred_fusion"]) and merged.loc["c", "text"] == "z"


def test_frame_strip_shows_first_middle_and_last_frame_enlarged():
    video = torch.linspace(-1, 1, 5).view(1, 5, 1, 1).expand(3, 5, 8, 8)
    strip = figures.frame_strip(video, count=3, min_height=32)
    assert strip.shape == (32, 96, 3) and strip.dtype == np.uint8
    assert [strip[0, 32 * i, 0] for i in range(3)] == [0, 127, 255]


def stage_record(folder, name, rng, status="done", contributions=None):
    labels = rng.uniform(-3, 3, 20)
    path = folder / f"{name}.csv"
    pd.DataFrame({"id": [f"clip{i}" for i in range(20)], "text": ["a, quoted \"text\""] * 20,
                  "label": labels, "prediction": labels + rng.normal(0, 0.5, 20)}).to_csv(path, index=False)
    test = {"MAE": 0.4, "Corr": 0.9} | {f"contribution/{m}": v for m, v in (contributions or {}).items()}
    return {"status": status, "predictions": str(path), "metrics": {"val": {"MAE": 0.5}, "test": test},
            "wall_time_s": 1.0}


def test_report_writes_figures_and_merged_predictions_beside_it(tmp_path):
    rng = np.random.default_rng(0)
    manifest = {"pipeline": "demo", "baselines": {"constant": {"MAE": 1.5}}, "stages": {
        "text": stage_record(tmp_path, "text", rng),
        "fusion": stage_record(tmp_path, "fusion", rng, contributions={"text": 0.3, "audio": -0.01}),
        "finetune": stage_record(tmp_path, "finetune", rng, status="running"),
    }}
    write_report(manifest, tmp_path)
    merged = figures.read_predictions(tmp_path / "predictions.csv")
    assert list(merged.columns) == ["id", "text", "label", "pred_text", "pred_fusion"]
    assert merged["text"].iloc[0] == 'a, quoted "text"'
    for name in ("scatter.png", "confusion.png", "contributions.png", "report.png"):
        assert (tmp_path / name).stat().st_size > 0
    report = (tmp_path / "report.md").read_text()
    assert "![confusion](confusion.png)" in report and "[predictions.csv](predictions.csv)" in report


def test_report_without_predictions_writes_no_figures(tmp_path):
    manifest = {"pipeline": "demo", "baselines": {"constant": {"MAE": 1.5}},
                "stages": {"text": {"status": "done", "metrics": {"test": {"MAE": 1.0}}}}}
    assert figures.write_figures(manifest, tmp_path) == []
    write_report(manifest, tmp_path)
    assert "Test predictions" not in (tmp_path / "report.md").read_text()


def test_figures_have_a_panel_per_stage():
    table = pd.DataFrame({"label": [0.0, 1.0], "prediction": [0.5, 1.5]})
    figure = figures.stage_panels({"a": table, "b": table, "c": table, "d": table}, figures.draw_scatter)
    assert isinstance(figure, Figure)
    assert sum(ax.get_visible() for ax in figure.axes) == 4
    assert figure.axes[0].get_title() == "a (MAE 0.500)"
    bars = figures.contribution_figure({"fusion": {"text": 0.2, "audio": 0.1}, "finetune": {"text": 0.3}})
    assert [t.get_text() for t in bars.axes[0].get_xticklabels()] == ["text", "audio"]
