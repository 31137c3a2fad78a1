"""Reuse: networks saved and loaded alone, the exported model folder, scoring raw clips."""

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import training_modules_after
from safetensors import safe_open
from test_pipeline import write_pipeline

from mmsent import SentimentModel
from mmsent.errors import ConfigError, MissingFileError
from mmsent.hub import export as export_command
from mmsent.hub import score as score_command
from mmsent.hub.export import export, folder_writer, stage_data
from mmsent.io import write_folder
from mmsent.models import AcousticMLPEncoder, ConcatFusion, ConditionalVAE, TextLSTMEncoder
from mmsent.pipeline import run


@pytest.fixture(scope="module")
def pipeline_run(tiny_raw, tiny_cache, tmp_path_factory) -> Path:
    """A finished tiny pipeline (text and audio stages, fusion, fine-tuning)."""
    folder = tmp_path_factory.mktemp("hub_pipeline")
    run(write_pipeline(folder, tiny_raw, tiny_cache, with_video=False), use_wandb=False)
    return folder / "out"


@pytest.fixture(scope="module")
def model_dir(pipeline_run, tmp_path_factory) -> Path:
    return export(pipeline_run, tmp_path_factory.mktemp("models") / "tiny")


def test_encoder_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    encoder = AcousticMLPEncoder(40, hidden_dims=[16, 16], out_dim=8, residual=True).eval()
    encoder.save_pretrained(tmp_path / "audio")
    loaded = AcousticMLPEncoder.from_pretrained(tmp_path / "audio").eval()
    x, mask = torch.randn(4, 7, 40), torch.ones(4, 7, dtype=torch.bool)
    assert torch.equal(encoder(x, mask), loaded(x, mask))
    text = TextLSTMEncoder(50, embed_dim=8, hidden_dim=8, out_dim=8).eval()
    text.save_pretrained(tmp_path / "text")
    tokens = torch.randint(1, 50, (3, 5))
    assert torch.equal(text(tokens, tokens > 0), TextLSTMEncoder.from_pretrained(tmp_path / "text").eval()(tokens, tokens > 0))


def test_fusion_module_round_trip_keeps_the_modality_order(tmp_path):
    torch.manual_seed(0)
    # Not alphabetical: a config saved with sorted keys would concatenate in another order.
    fusion = ConcatFusion({"text": 4, "audio": 3, "video": 2}, hidden_dim=8, out_dim=5).eval()
    fusion.save_pretrained(tmp_path)
    loaded = ConcatFusion.from_pretrained(tmp_path).eval()
    embeddings = {"text": torch.randn(2, 4), "audio": torch.randn(2, 3), "video": torch.randn(2, 2)}
    assert loaded.modalities == ["text", "audio", "video"]
    assert torch.equal(fusion(embeddings), loaded(embeddings))


def test_generator_round_trip_gives_identical_weights(tmp_path):
    torch.manual_seed(0)
    generator = ConditionalVAE(12, latent_dim=4, hidden_dims=[8])
    generator.save_pretrained(tmp_path)
    loaded = ConditionalVAE.from_pretrained(tmp_path)
    saved = generator.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in loaded.state_dict().items())


def test_fused_model_round_trip_gives_identical_outputs(model_dir, pipeline_run, tmp_path):
    model = SentimentModel.from_pretrained(model_dir)
    model.save_pretrained(tmp_path)
    again = SentimentModel.from_pretrained(tmp_path)
    batch = next(iter(stage_data(json.loads((pipeline_run / "manifest.json").read_text())
                                 ["stages"]["finetune"]["config"]).test_dataloader()))
    assert torch.equal(model(batch), again(batch))


def test_model_folder_holds_weights_config_and_card_each_tensor_once(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    assert config["format_version"] == 1
    assert {"tokenizer_fingerprint", "max_length"} <= set(config["preprocessing"]["text"])
    assert {"frames", "frame_size"} <= set(config["preprocessing"]["video"])
    assert {"n_mels", "sample_rate", "normalization"} <= set(config["preprocessing"]["audio"])
    assert "Test metrics per pipeline stage" in (model_dir / "README.md").read_text()
    # Each tensor once: the encoders live in model.safetensors only.
    assert {p.name for p in model_dir.iterdir()} <= {"config.json", "model.safetensors", "README.md", "tokenizer.json"}


def test_scoring_raw_test_clips_reproduces_the_pipeline_predictions(model_dir, pipeline_run, tiny_raw, tmp_path,
                                                                      capsys):
    output = tmp_path / "scores.csv"
    score_command.main([str(model_dir), str(tiny_raw), "--split", "test", "-o", str(output)])
    scores = pd.read_csv(output)
    manifest = json.loads((pipeline_run / "manifest.json").read_text())
    expected = pd.read_csv(manifest["stages"]["finetune"]["predictions"])
    joined = scores.merge(expected, on="id", suffixes=("", "_pipeline"))
    assert len(joined) == len(expected) == len(scores)
    assert (joined["score"] - joined["prediction"]).abs().max() < 1e-5
    mae = manifest["stages"]["finetune"]["metrics"]["test"]["MAE"]
    assert abs((joined["score"] - joined["label_pipeline"]).abs().mean() - mae) < 1e-5
    assert f"MAE {mae:.4f}" in capsys.readouterr().err  # stdout or -o carries the scores only
    assert set(scores["label_7"]) <= set(range(-3, 4))


def test_predict_takes_raw_inputs_and_lists(model_dir, tiny_raw):
    model = SentimentModel.from_pretrained(model_dir)
    video = str(next((tiny_raw / "Raw").rglob("*.mp4")))
    one = model.predict(video=video, text="the acting was wonderful")
    assert set(one["modalities"]) == {"text", "audio", "video"}
    assert {"score", "label_2", "label_5", "label_7", "problems"} <= set(one)
    many = model.predict(video=[video, None], text=["good", "bad"])
    assert [m["modalities"] for m in many] == [["text", "audio", "video"], ["text"]]


def test_missing_audio_track_empty_text_and_unreadable_video_are_scored_from_the_rest(model_dir, tiny_raw, tmp_path):
    model = SentimentModel.from_pretrained(model_dir)
    alone = tmp_path / "alone.mp4"  # no .wav beside it, and no audio stream of its own
    shutil.copyfile(next((tiny_raw / "Raw").rglob("*.mp4")), alone)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    wav = str(next((tiny_raw / "Raw").rglob("*.wav")))
    no_audio, no_text, bad_video = model.predict(video=[str(alone), str(alone), str(broken)],
                                                 audio=[None, wav, wav], text=["fine", " ", "fine"])
    assert no_audio["modalities"] == ["text", "video"] and "no audio stream" in no_audio["problems"][0]
    assert no_text["modalities"] == ["audio", "video"] and no_text["problems"] == []
    assert bad_video["modalities"] == ["text", "audio"] and str(broken) in bad_video["problems"][0]
    for result in (no_audio, no_text, bad_video):
        usable = set(result["modalities"]) & set(model.modalities)
        assert (result["score"] is not None) == bool(usable)
        assert (result.get(f"score_{model.modalities[0]}") is not None) == (model.modalities[0] in usable)


def test_unreadable_clip_gets_a_one_line_error_and_the_others_are_scored(model_dir, tiny_raw, tmp_path, capsys):
    folder = tmp_path / "raw"
    shutil.copytree(tiny_raw, folder)
    table = pd.read_csv(folder / "label.csv", dtype=str, keep_default_na=False)
    test = table[table["mode"] == "test"].copy()
    bad = test.iloc[0]
    test.loc[test.index[0], "text"] = ""
    test.drop(columns=["label"]).to_csv(folder / "label.csv", index=False)
    clip = folder / "Raw" / bad["video_id"] / f"{bad['clip_id']}.mp4"
    clip.write_bytes(b"garbage")
    clip.with_suffix(".wav").write_bytes(b"garbage")
    output = tmp_path / "scores.jsonl"
    with pytest.raises(SystemExit) as exit_info:
        score_command.main([str(model_dir), str(folder), "-o", str(output)])
    assert exit_info.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(clip) in errors[0]
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == len(test) - 1 and all(r["score"] is not None for r in rows)


def test_model_folder_of_another_version_or_missing_a_file_fails_naming_it(model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ConfigError, match="format version 99"):
        SentimentModel.from_pretrained(copy)
    (copy / "model.safetensors").unlink()
    with pytest.raises(MissingFileError, match="missing model.safetensors"):
        SentimentModel.from_pretrained(copy)
    with pytest.raises(MissingFileError, match="missing model.safetensors"):
        score_command.main([str(copy), str(tmp_path)])


def test_export_names_a_folder_without_a_pipeline_run(tmp_path):
    with pytest.raises(MissingFileError, match="no manifest.json"):
        export_command.main([str(tmp_path), "--to", str(tmp_path / "model")])


def folder_files(folder: Path) -> dict[str, object]:
    """Each file's content; of a weights file, its metadata and tensors (the order of
    the metadata in its header changes from one process to the next)."""
    return {str(p.relative_to(folder)): weights_content(p) if p.suffix == ".safetensors" else p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def weights_content(path: Path) -> tuple:
    with safe_open(str(path), framework="pt") as weights:
        return (sorted((weights.metadata() or {}).items()),
                [(name, weights.get_tensor(name).numpy().tobytes()) for name in sorted(weights.keys())])


def differing(found: dict[str, object], reference: dict[str, object]) -> list[str]:
    """The files that are missing, added or changed in ``found``."""
    return sorted(n for n in set(found) | set(reference) if found.get(n) != reference.get(n))


def export_killed_at(write, to: Path, boundary: int) -> tuple[bool, int]:
    """Writes an export (what :func:`export` does once the run is read) in a forked
    process that SIGKILLs itself at its ``boundary``-th file operation next to ``to``
    (a file opened for writing, a folder made, a rename, a deletion).

    Returns:
        tuple[bool, int]: Whether it was killed; if not, how many such operations it made.
    """
    watched = str(to.parent)
    pid = os.fork()
    if pid == 0:
        count = 0

        def kill_at_boundary(event, args):
            nonlocal count
            if event in ("open", "os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree"):
                writes = event != "open" or (isinstance(args[1], str) and any(c in args[1] for c in "wax+"))
                if writes and any(isinstance(a, str | Path) and str(a).startswith(watched) for a in args):
                    count += 1
                    if count == boundary:
                        os.kill(os.getpid(), signal.SIGKILL)

        sys.addaudithook(kill_at_boundary)
        try:
            write_folder(to, write)
        finally:
            os._exit(min(count, 255))
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    return killed, 0 if killed else os.WEXITSTATUS(status)


@pytest.mark.parametrize("every", [pytest.param(1, marks=pytest.mark.slow), 6])
def test_an_export_killed_at_any_file_boundary_leaves_the_previous_folder_or_none(pipeline_run, tmp_path, every):
    old, new = tmp_path / "old", tmp_path / "new"
    export(pipeline_run, old, "fusion")
    write = folder_writer(pipeline_run, "finetune")
    write_folder(new, write)
    references = [folder_files(old), folder_files(new)]
    assert references[0]["model.safetensors"] != references[1]["model.safetensors"]
    for reference in (old, new):
        SentimentModel.from_pretrained(reference)
    # The default run replaces an earlier export, the harder case; -m slow also writes a new folder.
    for first in (None, old) if every == 1 else (old,):
        target = tmp_path / "killed" / f"over_{first.name if first else 'nothing'}"
        if first:
            shutil.copytree(first, target)
        _, boundaries = export_killed_at(write, target, 10**6)
        assert boundaries > 4  # every file, folder and rename of the export is a kill point
        # The default run kills at every sixth boundary and at each of the last (the renames).
        for boundary in sorted(set(range(1, boundaries + 1, every)) | set(range(boundaries - 4, boundaries + 1))):
            shutil.rmtree(target, ignore_errors=True)
            if first:
                shutil.copytree(first, target)
            assert export_killed_at(write, target, boundary)[0]
            if target.exists():  # and then, file for file, one of the two folders that load whole
                found = folder_files(target)
                assert found in references, (f"a mixed folder after a kill at boundary {boundary}: "
                                             f"{[differing(found, r) for r in references]}")


def test_a_re_export_replaces_the_old_folder_whole(pipeline_run, model_dir, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(model_dir, target)
    (target / "stale.txt").write_text("from an older export")
    export(pipeline_run, target, "fusion")
    assert not (target / "stale.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing left beside it


def test_loading_and_scoring_import_neither_lightning_nor_the_training_side():
    code = "from mmsent import SentimentModel; import mmsent.hub.score"
    assert training_modules_after(code, ("mmsent.pipeline", "mmsent.tasks")) == []


MINILM_TEXT = {"class_path": "mmsent.models.TextLSTMEncoder",
               "init_args": {"input_dim": 30522, "pretrained_embeddings": "minilm", "freeze_embeddings": True,
                             "hidden_dim": 8, "out_dim": 4}}


def rewrite_header(path: Path, drop: str | None = None, tensors: dict | None = None, **metadata: str) -> None:
    """Rewrites a weights file with one tensor dropped, tensors and header entries replaced."""
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as weights:
        state = {k: weights.get_tensor(k) for k in weights.keys() if k != drop}  # noqa: SIM118
        header = {**weights.metadata(), **metadata}
    save_file({**state, **(tensors or {})}, str(path), metadata=header)


def test_a_frozen_pretrained_table_is_stored_in_no_file_and_rebuilt_only_as_saved(tmp_path):
    from mmsent.models.config import REBUILT_METADATA
    from mmsent.models.weights import fingerprint

    torch.manual_seed(0)
    config = {"format_version": 1, "encoders": {"text": MINILM_TEXT},
              "fusion": {"class_path": "mmsent.models.ConcatFusion", "init_args": {"input_dims": {"text": 4}}},
              "head": {"class_path": "mmsent.models.RegressionHead", "init_args": {"in_dim": 64}},
              "active_modalities": ["text"], "preprocessing": {}}
    model = SentimentModel(config)
    model.save_pretrained(tmp_path / "model")
    model.encoders["text"].save_pretrained(tmp_path / "text")
    for weights in (tmp_path / "model" / "model.safetensors", tmp_path / "text" / "model.safetensors"):
        with safe_open(str(weights), framework="pt") as stored:
            assert not any(k.endswith("embed.weight") for k in stored.keys()), weights  # noqa: SIM118
        assert weights.stat().st_size < 200_000, weights  # the table alone is 47 MB
    batch = {"text": torch.randint(1, 30522, (3, 6)), "text_mask": torch.ones(3, 6, dtype=torch.bool),
             "text_present": torch.ones(3, dtype=torch.bool)}
    assert torch.equal(SentimentModel.from_pretrained(tmp_path / "model")(batch), model(batch))
    text = TextLSTMEncoder.from_pretrained(tmp_path / "text")
    assert torch.equal(text(batch["text"]), model.encoders["text"](batch["text"]))

    # Left out must mean rebuilt, and rebuilt as saved: any other gap is refused.
    weights = tmp_path / "text" / "model.safetensors"
    with safe_open(str(weights), framework="pt") as stored:
        sha1 = stored.get_tensor("embed.weight_sha1")
    assert bytes(sha1.tolist()).hex() == fingerprint(text.embed.weight)["sha1"]
    rewrite_header(weights, tensors={"embed.weight_sha1": torch.zeros(20, dtype=torch.uint8)})
    with pytest.raises(ConfigError, match=r"(?s)text/model.safetensors: .*embed.weight was left out of the saved "
                                          r"weights, to be rebuilt"):
        TextLSTMEncoder.from_pretrained(tmp_path / "text")
    rewrite_header(weights, drop="embed.weight_sha1")
    with pytest.raises(ConfigError, match="text/model.safetensors: .*missing embed.weight$"):
        TextLSTMEncoder.from_pretrained(tmp_path / "text")
    # Files written before record the weights left out in their header.
    recorded = {"embed.weight": fingerprint(text.embed.weight)}
    rewrite_header(weights, **{REBUILT_METADATA: json.dumps(recorded)})
    assert torch.equal(TextLSTMEncoder.from_pretrained(tmp_path / "text")(batch["text"]), text(batch["text"]))
    rewrite_header(weights, **{REBUILT_METADATA: json.dumps({"embed.weight": {**recorded["embed.weight"],
                                                                              "sha1": "0" * 40}})})
    with pytest.raises(ConfigError, match="embed.weight was left out of the saved weights, to be rebuilt"):
        TextLSTMEncoder.from_pretrained(tmp_path / "text")
    rewrite_header(weights, drop="lstm.weight_ih_l0",
                   **{REBUILT_METADATA: json.dumps({**recorded, "lstm.weight_ih_l0": recorded["embed.weight"]})})
    with pytest.raises(ConfigError, match="missing lstm.weight_ih_l0; unexpected lstm.weight_ih_l0_sha1"):
        TextLSTMEncoder.from_pretrained(tmp_path / "text")
    rewrite_header(weights, **{REBUILT_METADATA: "[]"})
    with pytest.raises(ConfigError, match="record of the weights left out.* is not a mapping of fingerprints"):
        TextLSTMEncoder.from_pretrained(tmp_path / "text")
    # Files written before the table was left out hold it in full.
    text.save_pretrained(tmp_path / "text")
    rewrite_header(weights, drop="embed.weight_sha1", tensors={"embed.weight": text.embed.weight.detach()},
                   **{REBUILT_METADATA: "{}"})
    assert torch.equal(TextLSTMEncoder.from_pretrained(tmp_path / "text")(batch["text"]), text(batch["text"]))


WRITTEN_BY_C6799CC = Path(__file__).parent / "data" / "weights_c6799cc"
"""A model folder and a stage's checkpoint as mmsent c6799cc writes them, with the frozen
MiniLM table left out and recorded beside the tensors (``make.py`` beside them)."""


def test_weights_written_with_the_table_recorded_beside_them_load_and_score_the_same():
    from functools import partial

    from mmsent.models.weights import weights_digest
    from mmsent.tasks import UnimodalTask
    from mmsent.tasks.checkpoints import load_weights

    expected = torch.load(WRITTEN_BY_C6799CC / "expected.pt", weights_only=True)
    model = SentimentModel.from_pretrained(WRITTEN_BY_C6799CC / "model")
    text = partial(TextLSTMEncoder, pretrained_embeddings="minilm", freeze_embeddings=True, embed_dim=384,
                   hidden_dim=2, out_dim=2)
    task = UnimodalTask("text", text, head_hidden=0, input_dims={"text": 30522})
    load_weights(task, WRITTEN_BY_C6799CC / "text.ckpt")
    with torch.no_grad():
        assert torch.equal(model(expected["batch"]), expected["model"])
        assert torch.equal(task.eval()(expected["batch"]), expected["text"])
    # The digests generative checkpoints record of their encoders take the table in.
    assert weights_digest(model.model.encoders["text"]) == expected["digests"]["model"]
    assert weights_digest(task.encoder) == expected["digests"]["text"]
    # Lightning's own loading (--ckpt_path) takes the record through the task's hook,
    # and a checkpoint that holds the table itself loads it.
    checkpoint = torch.load(WRITTEN_BY_C6799CC / "text.ckpt", weights_only=True)
    fresh = UnimodalTask("text", text, head_hidden=0, input_dims={"text": 30522})
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])
    whole = {**checkpoint["state_dict"], "encoder.embed.weight": task.encoder.embed.weight.detach()}
    del whole["encoder.embed.weight_sha1"]
    UnimodalTask("text", text, head_hidden=0, input_dims={"text": 30522}).load_state_dict(whole)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(expected["batch"]), expected["text"])


def test_an_exported_folder_is_readable_by_others_as_the_umask_allows(tmp_path):
    import torch
    from safetensors.torch import save_file

    def write(folder):
        save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))  # safetensors writes 0600
        (folder / "config.json").write_text("{}")

    previous = os.umask(0o022)
    try:
        write_folder(tmp_path / "model", write)
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [tmp_path / "model", *(tmp_path / "model").iterdir()]}
    assert modes == {"model": 0o755, "model.safetensors": 0o644, "config.json": 0o644}
