"""``mmsent score``: clean streams, a summary of what it used, and bad input refused."""

import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import CONF, REPO

from mmsent.errors import MMSentError
from mmsent.hub import score as score_command
from mmsent.hub.export import export
from mmsent.main import main
from mmsent.pipeline import run

QUICKSTART = REPO / "pipelines" / "quickstart"
FUSION = {"model": {"class_path": "mmsent.tasks.FusionTask", "init_args": {
    "freeze_encoders": True, "fusion": {"class_path": "mmsent.models.ConcatFusion"},
    "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.001}}}}}


@pytest.fixture(scope="module")
def video_model(tiny_raw, tiny_cache, tmp_path_factory) -> Path:
    """An exported model that uses audio and video (no selection switches either off)."""
    folder = tmp_path_factory.mktemp("score_io")
    base = str(QUICKSTART / "base.yaml")
    (folder / "fusion.yaml").write_text(yaml.safe_dump(FUSION))
    spec = {"name": "av", "output_dir": str(folder / "out"),
            "args": ["-c", str(CONF / "tiny_data.yaml"), f"--data.source.init_args.root={tiny_raw}",
                     f"--data.cache_dir={tiny_cache}", "--trainer.max_epochs=1"],
            "stages": [{"name": "audio", "configs": [base, str(QUICKSTART / "2_audio.yaml")]},
                       {"name": "video", "configs": [base, str(QUICKSTART / "3_video.yaml")]},
                       {"name": "fusion", "configs": [base, str(folder / "fusion.yaml")],
                        "checkpoints": {"model.init_args.encoders.audio": "audio",
                                        "model.init_args.encoders.video": "video"}}]}
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(spec))
    run(folder / "pipeline.yaml", use_wandb=False)
    model = export(folder / "out", folder / "model")
    assert json.loads((model / "config.json").read_text())["active_modalities"] == ["audio", "video"]
    return model


def test_scores_on_stdout_parse_as_csv_and_jsonl(video_model, tiny_raw, capsys):
    test_clips = (pd.read_csv(tiny_raw / "label.csv")["mode"] == "test").sum()
    score_command.main([str(video_model), str(tiny_raw), "--split", "test"])
    captured = capsys.readouterr()
    table = pd.read_csv(io.StringIO(captured.out))
    assert list(table.columns) == score_command.COLUMNS and len(table) == test_clips
    assert f"metrics on {test_clips} clip(s), with audio+video:" in captured.err
    score_command.main([str(video_model), str(tiny_raw), "--split", "test", "--format", "jsonl"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == test_clips and all(r["modalities"] == ["text", "audio", "video"] for r in rows)


def test_every_clip_without_its_video_is_an_error_unless_allowed(video_model, tiny_raw, tmp_path, capsys):
    folder = tmp_path / "raw"
    shutil.copytree(tiny_raw, folder)
    for video in (folder / "Raw").rglob("*.mp4"):
        video.unlink()  # the .wav beside each clip still gives its audio
    test_clips = (pd.read_csv(folder / "label.csv")["mode"] == "test").sum()
    with pytest.raises(SystemExit) as exit_info:
        score_command.main([str(video_model), str(folder), "--split", "test"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "error: no clip had video, which the model uses" in err
    score_command.main([str(video_model), str(folder), "--split", "test", "--allow-missing"])
    captured = capsys.readouterr()
    assert len(pd.read_csv(io.StringIO(captured.out))) == test_clips
    assert (f"scored {test_clips} of {test_clips} clip(s); scored without each modality the model uses: "
            f"audio 0, video {test_clips}") in captured.err
    assert f"metrics on {test_clips} clip(s), with audio:" in captured.err


def label_folder(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "label.csv").write_text(text)
    return folder


def test_a_bad_label_names_file_row_column_and_value(video_model, tmp_path):
    folder = label_folder(tmp_path, "video_id,clip_id,text,label\nv,1,fine,0.5\nv,2,good,high\n")
    with pytest.raises(MMSentError, match=r"label.csv, row 3 \(v/2\): label 'high' is not a number"):
        score_command.main([str(video_model), str(folder)])


def test_a_header_only_table_is_refused(video_model, tmp_path):
    folder = label_folder(tmp_path, "video_id,clip_id,text,label\n")
    with pytest.raises(MMSentError, match="label.csv: no clip"):
        score_command.main([str(video_model), str(folder)])


def test_output_onto_an_input_is_refused(video_model, tiny_raw, tmp_path):
    folder = tmp_path / "raw"
    shutil.copytree(tiny_raw, folder)
    before = (folder / "label.csv").read_bytes()
    with pytest.raises(MMSentError, match="that is an input"):
        score_command.main([str(video_model), str(folder), "-o", str(folder / "label.csv")])
    assert (folder / "label.csv").read_bytes() == before


def test_batch_size_zero_is_refused(video_model, tiny_raw, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["score", str(video_model), str(tiny_raw), "--batch-size", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("mmsent: error: mmsent score: argument --batch-size: must be a whole number "
                                       ">= 1, got 0 (see mmsent score --help)\n")


def test_the_media_column_names_a_clip_stored_elsewhere(video_model, tiny_raw, tmp_path, capsys):
    folder = tmp_path / "raw"
    shutil.copytree(tiny_raw, folder)
    table = pd.read_csv(folder / "label.csv", dtype=str, keep_default_na=False)
    table = table[table["mode"] == "test"].copy()
    first = table.iloc[0]
    (folder / "elsewhere").mkdir()
    for suffix in (".mp4", ".wav"):
        (folder / "Raw" / first["video_id"] / f"{first['clip_id']}{suffix}").rename(folder / "elsewhere" / f"take{suffix}")
    table["media"] = ["elsewhere/take.mp4"] + [""] * (len(table) - 1)
    table.to_csv(folder / "label.csv", index=False)
    score_command.main([str(video_model), str(folder)])
    scores = pd.read_csv(io.StringIO(capsys.readouterr().out), keep_default_na=False)
    assert set(scores["modalities"]) == {"text+audio+video"} and set(scores["problems"]) == {""}


def test_an_interrupted_score_leaves_the_earlier_output_file_whole(tmp_path, monkeypatch):
    output = tmp_path / "scores.csv"
    output.write_text("id,score\nearlier,0.5\n")

    def interrupted(results, out, kind):
        out.write("id,score\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(score_command, "write_rows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        score_command.write_output(iter([]), str(output), "csv")
    assert output.read_text() == "id,score\nearlier,0.5\n"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]
