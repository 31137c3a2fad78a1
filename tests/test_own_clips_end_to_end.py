"""One's own recordings end to end: the awkward clips folder (:mod:`clips`) trained on
by each unimodal stage and the fused stage, the fused model exported and the folder
scored with it, the clips lacking a modality counted the same at every step."""

from __future__ import annotations

import contextlib
import io
import json
import logging

import pandas as pd
import pytest
import torch
from clips import AWKWARD_CLIPS, AWKWARD_MISSING, VIDEO_ID
from helpers import CONF

from mmsent.data.schema import MODALITIES, make_id
from mmsent.main import main

PIPELINE = CONF / "awkward_clips_pipeline.yaml"
STAGES = ["text", "audio", "video", "fusion"]
# Prepared, c06 has no audio at all (no stream, no file beside it) and c12 no
# transcript (empty in label.csv, no subtitle); c07's audio is the .flac beside it and
# c11's transcript its .srt.
WITHOUT = {"text": ["c12"], "audio": ["c06"], "video": []}


class Lines(logging.Handler):
    """Keeps the messages logged to it."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def scored(awkward_clips, tmp_path_factory) -> dict:
    """The pipeline run over the clips, its export and ``mmsent score`` of the folder."""
    folder = tmp_path_factory.mktemp("own_clips")
    run, model, scores = folder / "run", folder / "model", folder / "scores.csv"
    logged = Lines()
    cache_log = logging.getLogger("mmsent.data.cache")
    cache_log.addHandler(logged)
    level = cache_log.level
    cache_log.setLevel(logging.INFO)
    try:
        main(["pipeline", "run", str(PIPELINE), "--output-dir", str(run), "--no-wandb", "--",
              f"--data.source.init_args.root={awkward_clips}", f"--data.cache_dir={folder / 'cache'}"])
    finally:
        cache_log.removeHandler(logged)
        cache_log.setLevel(level)
    main(["export", str(run), "--to", str(model)])
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        main(["score", str(model), str(awkward_clips), "-o", str(scores)])  # exit status 0: no SystemExit
    return {"run": run, "model": model, "scores": pd.read_csv(scores, keep_default_na=False),
            "cache": folder / "cache", "prepared_log": logged.lines, "stderr": stderr.getvalue()}


def test_the_clips_lacking_each_modality_are_the_ones_the_fixture_counts():
    assert {m: len(clips) for m, clips in WITHOUT.items()} == AWKWARD_MISSING
    assert set(WITHOUT) == set(MODALITIES)


def test_each_unimodal_stage_and_the_fused_stage_train_one_epoch_on_the_clips(scored):
    manifest = json.loads((scored["run"] / "manifest.json").read_text())
    assert list(manifest["stages"]) == STAGES
    for name in STAGES:
        stage = manifest["stages"][name]
        assert stage["status"] == "done", name
        assert torch.load(stage["last_checkpoint"], weights_only=True)["epoch"] == 0, name
    config = json.loads((scored["model"] / "config.json").read_text())
    assert config["active_modalities"] == list(MODALITIES)


def test_preparation_counts_the_masked_modalities_and_the_transcript_sources(scored):
    (spec,) = scored["cache"].glob("*/spec.json")
    record = json.loads(spec.read_text())
    assert record["summary"] == {"clips": len(AWKWARD_CLIPS), "missing": AWKWARD_MISSING,
                                 "transcript": {"label.csv": 12, "subtitle": 1, "none": 1}}
    assert record["missing"] == {m: [make_id(VIDEO_ID, c) for c in clips] for m, clips in WITHOUT.items()}
    prepared = [line for line in scored["prepared_log"] if "clip(s) prepared" in line]
    assert len(prepared) == 1, "the clips are prepared once for every stage"
    assert prepared[0].startswith(f"raw: {len(AWKWARD_CLIPS)} clip(s) prepared, 1 without text, 1 without audio "
                                  f"(transcript: label.csv 12, none 1, subtitle 1)")


def test_scoring_the_folder_counts_the_clips_scored_without_each_modality(scored):
    err = scored["stderr"]
    counts = ", ".join(f"{m} {n}" for m, n in AWKWARD_MISSING.items())
    assert (f"scored {len(AWKWARD_CLIPS)} of {len(AWKWARD_CLIPS)} clip(s); scored without each modality "
            f"the model uses: {counts}") in err.splitlines()
    assert f"metrics on {len(AWKWARD_CLIPS)} clip(s), with text+audio+video (text on 13, audio on 13 of them):" in err
    assert "error" not in err
    rows = scored["scores"].set_index("id")
    assert sorted(rows.index) == sorted(make_id(VIDEO_ID, c) for c in AWKWARD_CLIPS)
    for clip in AWKWARD_CLIPS:
        row = rows.loc[make_id(VIDEO_ID, clip)]
        had = [m for m in MODALITIES if clip not in WITHOUT[m]]
        assert row["modalities"] == "+".join(had), clip
        for modality in MODALITIES:
            assert (row[f"score_{modality}"] != "") == (modality in had), (clip, modality)
        assert row["score"] != "", clip
    assert rows.loc[make_id(VIDEO_ID, "c06"), "problems"].endswith("c06.avi: no audio stream")
    assert (rows["problems"] != "").sum() == 1


def test_the_exported_model_scores_the_test_clips_as_the_fused_stage_predicted(scored):
    manifest = json.loads((scored["run"] / "manifest.json").read_text())
    predicted = pd.read_csv(manifest["stages"]["fusion"]["predictions"])
    test = [make_id(VIDEO_ID, c) for c, (split, *_) in AWKWARD_CLIPS.items() if split == "test"]
    assert sorted(predicted["id"]) == sorted(test)  # the clip without a transcript among them
    joined = predicted.merge(scored["scores"], on="id")
    assert len(joined) == len(test)
    assert (joined["prediction"] - joined["score"].astype(float)).abs().max() < 1e-5
