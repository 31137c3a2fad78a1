"""The staged pipeline: hand-off, manifest, report, skipping, resuming after SIGKILL."""

import copy
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import CONF, REPO

from mmsent.cli import build_cli
from mmsent.data.schema import ID_SEPARATOR
from mmsent.errors import ConfigError
from mmsent.metrics import METRIC_NAMES
from mmsent.pipeline import load_pipeline, run
from mmsent.selection import bootstrap_p_value, select_modalities, validation_errors, video_groups
from mmsent.tasks.checkpoints import load_weights

QUICKSTART = REPO / "pipelines" / "quickstart"
STAGES = ["text", "audio", "video", "fusion", "finetune"]


def write_pipeline(folder: Path, raw_root: Path, cache: Path, fusion_epochs: int = 1,
                   with_video: bool = True) -> Path:
    """The quickstart stages over the tiny dataset (without the video stage, cheaper)."""
    base = [str(QUICKSTART / "base.yaml")]
    fused = base + [str(QUICKSTART / "4_fusion.yaml")]
    spec = {
        "name": "tiny",
        "output_dir": str(folder / "out"),
        "args": ["-c", str(CONF / "tiny_data.yaml"), f"--data.source.init_args.root={raw_root}",
                 f"--data.cache_dir={cache}", "--trainer.max_epochs=1"],
        "stages": [
            {"name": "text", "configs": base + [str(QUICKSTART / "1_text.yaml")]},
            {"name": "audio", "configs": base + [str(QUICKSTART / "2_audio.yaml")]},
            {"name": "video", "configs": base + [str(QUICKSTART / "3_video.yaml")]},
            {"name": "fusion", "configs": fused, "args": [f"--trainer.max_epochs={fusion_epochs}"],
             "checkpoints": {"model.init_args.encoders.text": "text",
                             "model.init_args.encoders.audio": "audio",
                             "model.init_args.encoders.video": "video"}},
            {"name": "finetune", "configs": fused + [str(QUICKSTART / "5_finetune.yaml")],
             "checkpoints": {"model.init_args.init_checkpoint": "fusion"}},
        ],
    }
    if not with_video:
        del spec["stages"][2]
        del spec["stages"][2]["checkpoints"]["model.init_args.encoders.video"]
        for stage in spec["stages"][2:]:
            stage["args"] = stage.get("args", []) + ["--model.init_args.video_encoder=null"]
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def manifest(folder: Path) -> dict:
    return json.loads((folder / "out" / "manifest.json").read_text())


def checkpoint_times(folder: Path, stages) -> dict:
    return {s: Path(manifest(folder)["stages"][s]["best_checkpoint"]).stat().st_mtime_ns for s in stages}


def test_pipeline_runs_every_stage_hands_checkpoints_on_and_reports(tiny_raw, tiny_cache, tmp_path):
    out = run(write_pipeline(tmp_path, tiny_raw, tiny_cache))
    record = manifest(tmp_path)
    assert list(record["stages"]) == STAGES
    for name in STAGES:
        stage = record["stages"][name]
        assert stage["status"] == "done"
        assert Path(stage["best_checkpoint"]).is_file()
        assert stage["command"].startswith("mmsent fit -c ")
        assert {"MAE", "Corr", "Non0_acc_2"} <= set(stage["metrics"]["test"])
    fusion_command = record["stages"]["fusion"]["command"]
    assert record["stages"]["text"]["best_checkpoint"] in fusion_command
    assert record["stages"]["fusion"]["best_checkpoint"] in record["stages"]["finetune"]["command"]
    report = json.loads((out / "report.json").read_text())
    assert [row["stage"] for row in report["stages"]] == STAGES
    assert all("best_achievable_MAE" in row for row in report["stages"])
    # The trivial predictors on every metric, validation and test, in the report and logged by each stage.
    for split in ("val", "test"):
        assert set(report["baselines"][split]) == set(METRIC_NAMES)
        assert record["stages"]["text"]["metrics"][split]["baseline/MAE"] == report["baselines"][split]["MAE"]
    assert report["baselines"]["test"]["Corr"] == 0.0
    trivial = next(line for line in (out / "report.md").read_text().splitlines() if "*trivial predictor*" in line)
    assert f"{report['baselines']['test']['MAE']:.3f}" in trivial
    assert f"{100 * report['baselines']['test']['Non0_acc_2']:.1f}" in trivial
    assert (out / "report.md").read_text().count("\n| ") >= len(STAGES) + 1
    # The fused stages' selection outcome: in the manifest, the best checkpoint and the report.
    fused = record["stages"]["fusion"]
    best = torch.load(fused["best_checkpoint"], weights_only=True)
    assert fused["selection"] == best["mmsent"]["modality_selection"]
    assert fused["selection"]["handed_on"] in ("trained", "start") and fused["selection"]["kept"]
    assert record["stages"]["text"]["selection"] is None
    assert "- fusion: " in (out / "report.md").read_text().split("Modality selection")[1]
    assert (out / "report.png").stat().st_size > 0
    check_selections_follow_the_statistics(record)

    before = checkpoint_times(tmp_path, STAGES)
    run(tmp_path / "pipeline.yaml")
    assert checkpoint_times(tmp_path, STAGES) == before, "finished stages must not run again"
    run(tmp_path / "pipeline.yaml", only="audio")
    after = checkpoint_times(tmp_path, STAGES)
    assert after["audio"] != before["audio"]
    assert {s: after[s] for s in STAGES if s != "audio"} == {s: before[s] for s in STAGES if s != "audio"}


def elimination(candidates: list[str], errors, groups: list[str], settings) -> tuple[list[str], list[dict]]:
    """What backward elimination keeps, and its tests as a selection record holds them."""
    kept, tests = select_modalities(candidates, errors, groups, settings.alpha, settings.samples, settings.seed,
                                    settings.min_gain)
    return kept, [{**asdict(t), "others": list(t.others)} for t in tests]


def check_selections_follow_the_statistics(record: dict) -> None:
    """Each fused stage's record is what the statistics decide on the validation errors
    of its best epoch and of its start (the model its config builds), against the
    unimodal stages' validation MAE in the manifest."""
    scores = {m: record["stages"][m]["metrics"]["val"]["MAE"] for m in STAGES[:3]}
    for name in ("fusion", "finetune"):
        stage, decided = record["stages"][name], record["stages"][name]["selection"]
        cli = build_cli(shlex.split(stage["command"])[2:], run=False)
        settings, data = cli.selection, SimpleNamespace(datamodule=cli.datamodule)
        start = copy.deepcopy(cli.model)  # built from the stage's config and seed, as the fit began
        (best,) = Path(stage["best_checkpoint"]).parent.glob("best-epoch*.ckpt")
        load_weights(cli.model, best)
        errors, ids = validation_errors(data, cli.model)
        start_errors, _ = validation_errors(data, start)
        groups = video_groups(ids)
        kept, tests = elimination(cli.model.model.active_modalities, errors, groups, settings)
        gain = start_errors(frozenset(kept)) - errors(frozenset(kept))
        assert decided["start_gain"] == float(gain.mean())
        assert decided["start_p_value"] == bootstrap_p_value(gain, groups, settings.samples, settings.seed)
        trained = decided["start_gain"] > 0 and decided["start_p_value"] < settings.start_alpha
        assert decided["handed_on"] == ("trained" if trained else "start")
        if not trained:
            kept, more = elimination(kept, start_errors, groups, settings)
            tests += more
        assert decided["tests"] == tests
        fused = float((errors if trained else start_errors)(frozenset(kept)).mean())
        best_unimodal = min(scores, key=scores.get)
        worse = fused > scores[best_unimodal] + 1e-5
        assert decided["unimodal"] == {"modality": best_unimodal, "val_MAE": scores[best_unimodal],
                                       "fused_val_MAE": fused, "handed_on": "unimodal" if worse else "fused"}
        assert decided["kept"] == ([best_unimodal] if worse else kept)


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def test_pipeline_file_errors_name_the_file_and_key(tmp_path):
    config = str(QUICKSTART / "1_text.yaml")
    path = tmp_path / "bad.yaml"
    cases = [
        ({"stages": [{"name": "a", "checkpoint": {"model.init_args.x": "b"}}]},
         rf"{path}: stages\[0\]: .*'checkpoint\..*' .*the keys are name, configs, checkpoints, args"),
        ({"stages": [{"name": "a"}], "output": "runs/x"}, rf"{path}: .*'output'"),
        ({"stages": [{"name": "a", "configs": config}]}, r"stages\[0\]: .*configs.*Expected a <class 'list'>"),
        ({"stages": [{"configs": [config]}]}, r"stages\[0\]: .*required: name"),
        ({"stages": ["text"]}, rf"{path}: .*stages.*Expected a <class 'dict'>. Got value: text"),
        ({"stages": [{"name": "a", "configs": ["nowhere.yaml"]}]},
         rf"stages\[0\]: config file {tmp_path / 'nowhere.yaml'} does not exist"),
        ({"stages": [{"name": "a"}, {"name": "a"}]}, r"stages\[1\]: duplicate stage name 'a'"),
        ({"stages": [{"name": "a", "checkpoints": {"model.init_args.x": "b"}}, {"name": "b"}]},
         r"stages\[0\]: checkpoints.model.init_args.x takes stage 'b', which does not run before 'a'"),
        ({"stages": []}, rf"{path}: the pipeline lists no stage"),
        ({"name": "x"}, rf"{path}: the pipeline lists no stage"),
        (["text", "audio"], rf"{path}: expected a mapping with the keys stages, extends, name, output_dir, args, wandb"),
    ]
    for spec, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_pipeline(write_spec(path, spec))


def test_pipeline_file_paths_are_relative_to_it(tmp_path):
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "one.yaml").write_text("trainer: {max_epochs: 1}\n")
    pipeline = load_pipeline(write_spec(tmp_path / "p.yaml", {
        "args": ["--seed_everything=3"],
        "stages": [{"name": "one", "configs": ["stages/one.yaml"], "args": ["--trainer.max_epochs=2"]},
                   {"name": "two", "checkpoints": {"model.init_args.init_checkpoint": "one"}}]}))
    assert (pipeline.name, pipeline.output_dir) == ("p", Path("runs") / "p")
    assert pipeline.stage("one").configs == [tmp_path / "stages" / "one.yaml"]
    assert pipeline.stage("two").checkpoints == {"model.init_args.init_checkpoint": "one"}
    assert pipeline.args == ["--seed_everything=3"] and not pipeline.wandb.enabled
    with pytest.raises(ConfigError, match=r"no stage 'three'; the pipeline has \['one', 'two'\]"):
        pipeline.stage("three")


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_stop_in_stage_four_resumes_from_its_last_checkpoint(tiny_raw, tiny_cache, tmp_path, stop):
    # Enough epochs that the stop lands inside the fit, where Lightning handles SIGTERM.
    pipeline = write_pipeline(tmp_path, tiny_raw, tiny_cache, fusion_epochs=16, with_video=False)
    stages = [s for s in STAGES if s != "video"]
    command = [sys.executable, "-m", "mmsent", "pipeline", "run", str(pipeline)]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    stderr = (tmp_path / "stderr.txt").open("w")
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                               stderr=stderr, start_new_session=True)
    last = tmp_path / "out" / "fusion" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 600
    while not last.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, stop)
    process.wait()
    stderr.close()
    if stop == signal.SIGTERM:
        # Lightning ends the fit cleanly; the pipeline must still report the stop.
        assert process.returncode == 1
        assert "stage 'fusion' stopped by SIGTERM" in (tmp_path / "stderr.txt").read_text()
    killed = manifest(tmp_path)
    # SIGKILL leaves the stage running; the pipeline records a SIGTERM stop as failed.
    status = "running" if stop == signal.SIGKILL else "failed"
    assert killed["stages"]["fusion"]["status"] == status, "the kill must land inside stage 4"
    assert "finetune" not in killed["stages"]
    before = checkpoint_times(tmp_path, ["text", "audio"])

    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    final = manifest(tmp_path)
    assert checkpoint_times(tmp_path, ["text", "audio"]) == before
    assert final["stages"]["fusion"]["resumed_from"] == str(last)
    assert all(final["stages"][s]["status"] == "done" for s in stages)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [row["stage"] for row in report["stages"]] == stages


def test_the_minilm_quickstart_fine_tunes_the_transformer_in_stages_one_and_five(tiny_raw, tiny_cache, tmp_path):
    # The shipped pipeline file itself, over the tiny dataset, one epoch a stage.
    extra = ["-c", str(CONF / "tiny_data.yaml"), f"--data.source.init_args.root={tiny_raw}",
             f"--data.cache_dir={tiny_cache}", "--trainer.max_epochs=1"]
    run(REPO / "pipelines" / "quickstart_minilm.yaml", extra=extra, output_dir=str(tmp_path / "out"),
        use_wandb=False)
    record = manifest(tmp_path)
    backfit = ["text_backfit", "audio_backfit", "video_backfit"]
    assert list(record["stages"]) == STAGES[:3] + backfit + STAGES[3:]
    assert all(stage["status"] == "done" for stage in record["stages"].values())

    def transformer(stage: str) -> dict:
        weights = torch.load(record["stages"][stage]["best_checkpoint"], weights_only=True)["state_dict"]
        prefix = "encoder." if stage.startswith("text") else "model.encoders.text."
        found = {k.removeprefix(prefix): v for k, v in weights.items()
                 if k.startswith(prefix + "transformer.") and "word_embeddings" not in k}
        assert found, f"no transformer weights in the {stage} checkpoint"
        return found

    pretrained, refit = transformer("text"), transformer("text_backfit")
    fused, finetuned = transformer("fusion"), transformer("finetune")
    assert all(torch.equal(refit[k], fused[k]) for k in refit), "stage 4 takes the backfit encoder, frozen"
    assert any(not torch.equal(pretrained[k], fused[k]) for k in pretrained)
    assert any(not torch.equal(fused[k], finetuned[k]) for k in fused), "stage 5 trains the transformer"
    # A backfit stage's predictions are the sum's; the report correlates its own part with its score.
    table = pd.read_csv(record["stages"]["text_backfit"]["predictions"], dtype={"id": str})
    assert not np.allclose(table["own_prediction"], table["prediction"])
    truth = pd.read_csv(tiny_raw / "label.csv", dtype={"video_id": str, "clip_id": str})
    truth.index = truth["video_id"] + ID_SEPARATOR + truth["clip_id"]
    expected = np.corrcoef(table["own_prediction"], truth.loc[table["id"], "text_score"])[0, 1]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["own_score_correlations"]["text_backfit"]["corr"] == pytest.approx(expected, abs=1e-5)
    # The fused stage still measures itself against the unimodal stages, not the backfit ones.
    checked = record["stages"]["fusion"]["selection"]["unimodal"]
    scores = {m: record["stages"][m]["metrics"]["val"]["MAE"] for m in STAGES[:3]}
    assert (checked["modality"], checked["val_MAE"]) == (min(scores, key=scores.get), min(scores.values()))
    finetune_command = record["stages"]["finetune"]["command"]
    assert finetune_command.index("5_finetune.yaml") < finetune_command.index("5_finetune_minilm.yaml")
