"""Stages follow the data: a modality no clip has skips its stages, the fused stage uses the rest."""

import json
import pickle
import shutil

import numpy as np
import pytest
from helpers import REPO
from test_pipeline import write_pipeline
from test_readers import mmsa_split

from mmsent.data import MMSAPickleSource
from mmsent.data.cache import prepare
from mmsent.pipeline import run
from mmsent.tasks.checkpoints import META_KEY, read_checkpoint

MMSA_PIPELINE = REPO / "pipelines" / "mmsa.yaml"
ARRAYS = {"text": ("text", "text_bert"), "vision": ("vision", "vision_lengths")}


def write_pickle(path, without: str):
    """A small MMSA pickle (24/8/8 clips) lacking one array, as a corpus without it would."""
    data = {}
    for index, (split, count) in enumerate((("train", 24), ("valid", 8), ("test", 8))):
        ids = [f"v{split}{k // 2}$_${k % 2 + 1}" for k in range(count)]
        data[split] = mmsa_split(ids, np.linspace(-2.5, 2.5, count), seed=index)
        for key in ARRAYS[without]:
            del data[split][key]
    path.write_bytes(pickle.dumps(data))
    return path


def test_mmsa_source_prepares_the_modalities_the_pickle_holds(tmp_path):
    path = write_pickle(tmp_path / "no_text.pkl", without="text")
    assert prepare(MMSAPickleSource(str(path)), tmp_path / "cache").spec.modalities == ["audio", "video"]
    with pytest.raises(ValueError, match="no 'text' array for the text modality"):
        prepare(MMSAPickleSource(str(path), modalities=["text", "audio"]), tmp_path / "cache")


@pytest.mark.parametrize(("without", "skipped", "fused"), [("text", "text", ["audio", "video"]),
                                                          ("vision", "visual", ["text", "audio"])])
def test_mmsa_pipeline_skips_the_stage_of_a_modality_the_pickle_lacks(tmp_path, capsys, without, skipped, fused):
    path = write_pickle(tmp_path / f"no_{without}.pkl", without)
    out = run(MMSA_PIPELINE, output_dir=str(tmp_path / "out"), use_wandb=False,
              extra=[f"--data.source.init_args.path={path}", f"--data.cache_dir={tmp_path / 'cache'}",
                     "--trainer.max_epochs=1", "--trainer.logger=false", "--trainer.enable_progress_bar=false"])
    printed = capsys.readouterr().err
    assert f"=== stage {skipped}: skipped: no clip of its data has" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    statuses = {name: record["status"] for name, record in manifest["stages"].items()}
    assert statuses == {**{s: "done" for s in ("text", "audio", "visual", "fusion")}, skipped: "skipped"}
    fusion = read_checkpoint(manifest["stages"]["fusion"]["best_checkpoint"], "fusion")
    assert list(fusion[META_KEY]["encoder_configs"]) == fused
    report = json.loads((out / "report.json").read_text())
    assert list(report["skipped"]) == [skipped] and "no clip of its data has" in report["skipped"][skipped]
    assert skipped not in [row["stage"] for row in report["stages"]]
    assert f"- {skipped}: no clip of its data has" in (out / "report.md").read_text()


def test_raw_folder_without_any_audio_skips_the_audio_stage(tiny_raw, tmp_path):
    folder = tmp_path / "raw"
    shutil.copytree(tiny_raw, folder)
    for wav in (folder / "Raw").rglob("*.wav"):
        wav.unlink()  # the generated videos carry no audio stream of their own
    out = run(write_pipeline(tmp_path, folder, tmp_path / "cache", with_video=False), use_wandb=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["audio"]["status"] == "skipped"
    assert "encoders.audio" not in manifest["stages"]["fusion"]["command"]
    assert all(manifest["stages"][s]["status"] == "done" for s in ("text", "fusion", "finetune"))
    fusion = read_checkpoint(manifest["stages"]["finetune"]["best_checkpoint"], "finetune")
    assert list(fusion[META_KEY]["encoder_configs"]) == ["text"]
