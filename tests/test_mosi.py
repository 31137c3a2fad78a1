"""Real CMU-MOSI: the source prepares the standard split, and the pipeline's configs run.

The tests marked ``mosi`` read the folder named by ``$MMSENT_MOSI_DIR`` and skip
without it. The accuracy over seeds is measured by ``benchmarks/quality/mosi.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmsent.data import MOSISource
from mmsent.data.cache import prepare
from mmsent.main import main
from mmsent.pipeline import run

MOSI = "pipelines/mosi"


@pytest.mark.mosi
def test_mosi_source_prepares_the_standard_split(mosi_dir, tmp_path):
    data = prepare(MOSISource(str(mosi_dir)), tmp_path)
    assert {name: len(part) for name, part in data.splits.items()} == {"train": 1284, "valid": 229, "test": 686}
    assert data.spec.input_dims["audio"] == 73 and data.spec.text_kind == "tokens"
    issues = data.spec.extras["issues"]
    assert not any(issues.values()), f"every clip should have audio and a label: {issues}"
    train = np.concatenate([np.asarray(a) for a in data.splits["train"]["audio"]])
    assert train.shape == (1284, 73)
    np.testing.assert_allclose(train.mean(0), 0, atol=1e-4)
    labels = np.asarray(data.splits["test"]["label"])
    assert labels.min() >= -3 and labels.max() <= 3 and (labels != 0).sum() > 600


@pytest.mark.mosi
def test_mosi_audio_stage_fast_dev_run(mosi_dir, tmp_path):
    main(["fit", "-c", f"{MOSI}/base.yaml", "-c", f"{MOSI}/2_audio.yaml",
          f"--data.source.init_args.root={mosi_dir}", "--data.source.init_args.modalities=[audio]",
          "--data.source.init_args.text_features=null", f"--data.cache_dir={tmp_path / 'cache'}",
          f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.fast_dev_run=1",
          "--trainer.logger=false"])


def test_missing_mosi_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MMSENT_MOSI_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"(?s)CMU-MOSI not found.*nowhere.*MMSENT_MOSI_DIR.*label\.csv"):
        MOSISource()


def test_unset_mosi_location_names_the_key_and_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("MMSENT_MOSI_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"neither data\.source\.init_args\.root nor .*MMSENT_MOSI_DIR"):
        MOSISource()


def fake_mosi(folder):
    folder.mkdir()
    (folder / "label.csv").write_text("video_id,clip_id,text,label,annotation,mode\n")
    return folder


def test_mosi_folder_comes_from_the_key_before_the_variable(tmp_path, monkeypatch):
    from_env, from_key = fake_mosi(tmp_path / "env"), fake_mosi(tmp_path / "key")
    monkeypatch.setenv("MMSENT_MOSI_DIR", str(from_env))
    assert MOSISource().root == from_env
    assert MOSISource(str(from_key)).root == from_key
    with pytest.raises(FileNotFoundError, match=r"(?s)missing .*from data\.source\.init_args\.root"):
        MOSISource(str(tmp_path / "missing"))


@pytest.mark.mosi
@pytest.mark.slow
def test_mosi_pipeline_runs_every_stage(mosi_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MMSENT_MOSI_DIR", str(mosi_dir))
    short = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2",
             f"--data.cache_dir={tmp_path / 'cache'}", "--trainer.enable_progress_bar=false"]
    out = run("pipelines/mosi.yaml", extra=short, output_dir=str(tmp_path / "run"), use_wandb=False)
    report = json.loads((out / "report.json").read_text())
    assert [row["stage"] for row in report["stages"]] == ["text", "audio", "fusion", "finetune"]
    assert all(np.isfinite(row["test"]["MAE"]) for row in report["stages"])
    selection = {row["stage"]: row.get("selection") for row in report["stages"]}
    assert selection["fusion"]["kept"] and selection["finetune"]["handed_on"] in ("trained", "start")


@pytest.mark.mosi
def test_mosi_fine_tuned_text_pipeline_runs_every_stage(mosi_dir, tmp_path, monkeypatch):
    # The fused stages start from the text stage's head, which has a hidden layer.
    monkeypatch.setenv("MMSENT_MOSI_DIR", str(mosi_dir))
    short = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2",
             "--trainer.limit_test_batches=2", f"--data.cache_dir={tmp_path / 'cache'}",
             "--trainer.enable_progress_bar=false"]
    out = run("pipelines/mosi_finetuned_text.yaml", extra=short, output_dir=str(tmp_path / "run"), use_wandb=False)
    report = json.loads((out / "report.json").read_text())
    assert [row["stage"] for row in report["stages"]] == ["text", "audio", "fusion", "finetune"]
    assert all(np.isfinite(row["test"]["MAE"]) for row in report["stages"])


@pytest.mark.mosi
def test_mosi_fine_tuned_text_stage_fast_dev_run(mosi_dir, tmp_path):
    # The data are MiniLM's word-piece ids, which the fine-tuned MiniLM reads itself.
    main(["fit", "-c", f"{MOSI}/base.yaml", "-c", "pipelines/mosi_finetuned_text/base.yaml",
          "-c", "pipelines/mosi_finetuned_text/1_text.yaml", f"--data.source.init_args.root={mosi_dir}",
          f"--data.cache_dir={tmp_path / 'cache'}", f"--trainer.default_root_dir={tmp_path / 'run'}",
          "--trainer.fast_dev_run=1", "--trainer.logger=false"])
