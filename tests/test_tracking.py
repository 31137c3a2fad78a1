"""W&B tracking of the staged pipeline, checked by reading the offline run files.

The pipeline runs text -> fusion -> fine-tuning (text only, to stay fast) in a
subprocess with no W&B credentials, no reachable W&B host and stdin closed; the tests
then read each stage's ``run-<id>.wandb`` transaction log.
"""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import wandb
import yaml
from conftest import CONF, REPO
from wandb.proto import wandb_internal_pb2

from mmsent import tracking
from mmsent.pipeline import load_pipeline, run

QUICKSTART = REPO / "pipelines" / "quickstart"
STAGES = ["text", "fusion", "finetune"]
TEXT_ONLY = {"model": {"init_args": {"audio_encoder": None, "video_encoder": None}}}
TEXT_ONLY_GROUPS = {"model": {"init_args": {"param_groups": {
    "text": {"lr": 0.002, "schedule": {"name": "cosine", "epochs": 8}},
    "fusion": {"lr": 0.002, "schedule": {"name": "cosine", "epochs": 8}},
}}}}

# The .wandb file is a LevelDB-style log: a 7-byte file header, then 32 KiB blocks of
# chunks, each with a 7-byte header (CRC, length, type); a record spans chunks
# FIRST/MIDDLE/LAST or fits in one FULL chunk.
BLOCK, CHUNK_HEADER, FULL, LAST = 32768, 7, 1, 4


def read_records(path: Path) -> list:
    """Every protobuf record of an offline run's transaction log."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    records, parts, pos = [], [], 7
    while pos + CHUNK_HEADER <= len(data):
        if BLOCK - pos % BLOCK < CHUNK_HEADER:
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + CHUNK_HEADER])
        pos += CHUNK_HEADER
        if kind == 0:
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        parts.append(data[pos:pos + length])
        pos += length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            records.append(record)
            parts = []
    return records


def _key(item) -> str:
    return item.key or item.nested_key[0]


class OfflineRun:
    """What one offline run recorded: run settings, config, history keys, artifacts."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        records = read_records(next(folder.glob("run-*.wandb")))
        self.run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        self.config = {u.key: json.loads(u.value_json) for u in self.run.config.update}
        for record in records:
            if record.WhichOneof("record_type") == "config":
                self.config.update({_key(u): json.loads(u.value_json) for u in record.config.update})
        self.history = {_key(item) for r in records if r.WhichOneof("record_type") == "history"
                        for item in r.history.item}
        self.artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]

    def models(self, used: bool) -> dict:
        """Model artifacts by name: those it declared used, or those it produced."""
        return {a.name: a for a in self.artifacts if a.type == "model" and a.use_after_commit == used}


def write_pipeline(folder: Path, raw_root: Path, stages: list[str], wandb: dict | None) -> Path:
    """A pipeline over the quickstart stage configs, the tiny dataset and text only."""
    (folder / "text_only.yaml").write_text(yaml.safe_dump(TEXT_ONLY))
    (folder / "text_only_groups.yaml").write_text(yaml.safe_dump(TEXT_ONLY_GROUPS))
    base = [str(QUICKSTART / "base.yaml")]
    fused = base + [str(QUICKSTART / "4_fusion.yaml"), str(folder / "text_only.yaml")]
    every = {
        "text": {"name": "text", "configs": base + [str(QUICKSTART / "1_text.yaml")]},
        "fusion": {"name": "fusion", "configs": fused,
                   "checkpoints": {"model.init_args.text_checkpoint": "text"}},
        "finetune": {"name": "finetune",
                     "configs": fused + [str(QUICKSTART / "5_finetune.yaml"), str(folder / "text_only_groups.yaml")],
                     "checkpoints": {"model.init_args.init_checkpoint": "fusion"}},
    }
    spec = {
        "name": "tiny",
        "output_dir": str(folder / "out"),
        "args": ["-c", str(CONF / "tiny_data.yaml"), f"--data.source.init_args.root={raw_root}",
                 f"--data.cache_dir={folder / 'cache'}", "--trainer.max_epochs=1",
                 "--trainer.log_every_n_steps=1"],
        "stages": [every[name] for name in stages],
    }
    if wandb is not None:
        spec["wandb"] = wandb
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def clean_environment(home: Path) -> dict:
    """The environment without any W&B credential, setting or reachable server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    env.update(HOME=str(home), WANDB_BASE_URL="http://127.0.0.1:9")
    return env


@pytest.fixture(scope="module")
def offline_pipeline(tiny_raw, tmp_path_factory) -> dict:
    """Runs the pipeline once as a user without W&B credentials would."""
    folder = tmp_path_factory.mktemp("offline")
    (folder / "home").mkdir()
    pipeline = write_pipeline(folder, tiny_raw, STAGES, {"project": "mmsent-tests", "tags": ["tiny"]})
    # A stage's own pictures (the generative stage's samples) go to <stage dir>/media.
    media = folder / "out" / "fusion" / "media"
    media.mkdir(parents=True)
    import matplotlib.pyplot as plt
    plt.imsave(media / "samples.png", [[0.0, 1.0], [1.0, 0.0]])
    env = clean_environment(folder / "home") | {"WANDB_DIR": str(folder / "wandb-dir")}
    command = [sys.executable, "-m", "mmsent", "pipeline", "run", str(pipeline)]
    done = subprocess.run(command, cwd=folder, check=False,
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    manifest = json.loads((folder / "out" / "manifest.json").read_text())
    runs = {name: OfflineRun(Path(manifest["stages"][name]["wandb"]["dir"])) for name in STAGES}
    return {"folder": folder, "manifest": manifest, "runs": runs, "output": done.stdout + done.stderr}


def test_runs_offline_without_credentials_and_never_prompts(offline_pipeline):
    folder, output = offline_pipeline["folder"], offline_pipeline["output"]
    for name in STAGES:
        record = offline_pipeline["manifest"]["stages"][name]
        assert record["status"] == "done"
        assert record["wandb"]["mode"] == "offline"
        assert Path(record["wandb"]["dir"]).parent == folder / "wandb-dir" / "wandb"
    assert "API key" not in output and "wandb login" not in output
    assert f"wandb sync -n 1 {folder / 'wandb-dir' / 'wandb'}/offline-run-*" in output


def test_one_group_with_a_run_per_stage_and_its_job_type(offline_pipeline):
    manifest, runs = offline_pipeline["manifest"], offline_pipeline["runs"]
    assert manifest["group"].startswith("tiny-")
    for name, offline in runs.items():
        assert offline.run.run_id == manifest["stages"][name]["wandb"]["run_id"]
        assert offline.run.run_group == manifest["group"]
        assert offline.run.job_type == name
        assert offline.run.display_name == name
        assert offline.run.project == "mmsent-tests"
        assert list(offline.run.tags) == ["tiny"]
    assert len({offline.run.run_id for offline in runs.values()}) == len(STAGES)


def test_config_holds_the_resolved_stage_config_and_hyperparameters(offline_pipeline):
    manifest, runs = offline_pipeline["manifest"], offline_pipeline["runs"]
    text, finetune = runs["text"].config, runs["finetune"].config
    assert text["pipeline"] == {"name": "tiny", "stage": "text", "group": manifest["group"],
                                "command": manifest["stages"]["text"]["command"]}
    assert text["model"]["class_path"] == "mmsent.tasks.UnimodalTask"
    assert text["trainer"]["max_epochs"] == 1
    assert text["data"]["batch_size"] == 8
    assert text["modality"] == "text" and text["loss"] == "l1"
    assert finetune["model"]["init_args"]["optimizer"]["class_path"] == "torch.optim.SGD"
    assert finetune["freeze_encoders"] is False
    assert finetune["init_checkpoint"] == manifest["stages"]["fusion"]["best_checkpoint"]


def test_history_has_metrics_learning_rates_and_media(offline_pipeline):
    runs = offline_pipeline["runs"]
    for offline in runs.values():
        assert {"train/loss", "val/MAE", "val/Corr", "test/MAE", "test/Mult_acc_7", "figures/scatter",
                "figures/confusion_matrix", "figures/frames", "predictions"} <= offline.history
    assert {"lr/text", "lr/head"} <= runs["text"].history
    assert {"lr/text", "lr/fusion"} <= runs["finetune"].history
    assert {"test/contribution/text", "figures/contributions", "media/samples"} <= runs["fusion"].history
    # ModalitySelection (in the fusion configs) reports its test against the stage's start.
    assert {"selection/start/gain_MAE", "selection/start/p_value"} <= runs["fusion"].history
    assert "media/samples" not in runs["text"].history


def test_predictions_table_of_the_last_stage_holds_every_stage(offline_pipeline):
    folder = offline_pipeline["runs"]["finetune"].folder
    table = json.loads(next((folder / "files" / "media" / "table").glob("predictions_*.table.json")).read_text())
    assert table["columns"] == ["id", "text", "label", "pred_text", "pred_fusion", "pred_finetune"]
    csv = (Path(offline_pipeline["manifest"]["stages"]["text"]["predictions"])).read_text().splitlines()
    assert len(table["data"]) == len(csv) - 1 > 0


def test_each_stage_logs_its_best_checkpoint_with_metrics(offline_pipeline):
    manifest, runs = offline_pipeline["manifest"], offline_pipeline["runs"]
    for name, offline in runs.items():
        (artifact,) = offline.models(used=False).values()
        record = manifest["stages"][name]
        assert artifact.name == f"tiny-{name}"
        assert {"best", manifest["group"]} <= set(artifact.aliases)
        metadata = json.loads(artifact.metadata)
        assert metadata["test"]["MAE"] == pytest.approx(record["metrics"]["test"]["MAE"])
        assert metadata["val"]["MAE"] == pytest.approx(record["metrics"]["val"]["MAE"])
        assert [entry.path for entry in artifact.manifest.contents] == ["model.ckpt"]
        assert artifact.manifest.contents[0].size == Path(record["best_checkpoint"]).stat().st_size


def test_lineage_each_stage_uses_the_artifacts_it_loads(offline_pipeline):
    runs = offline_pipeline["runs"]
    produced = {name: runs[name].models(used=False)[f"tiny-{name}"] for name in STAGES}
    assert runs["text"].models(used=True) == {}
    for consumer, source in (("fusion", "text"), ("finetune", "fusion")):
        used = runs[consumer].models(used=True)
        assert list(used) == [f"tiny-{source}"]
        # The same name and digest make `wandb sync` resolve it to the producer's version.
        assert used[f"tiny-{source}"].digest == produced[source].digest
        assert used[f"tiny-{source}"].metadata == produced[source].metadata


def test_report_figures_are_written_beside_the_report(offline_pipeline):
    out = offline_pipeline["folder"] / "out"
    for name in ("scatter.png", "confusion.png", "contributions.png"):
        assert (out / name).stat().st_size > 0
    header = (out / "predictions.csv").read_text().splitlines()[0]
    assert header == "id,text,label,pred_text,pred_fusion,pred_finetune"
    assert "![scatter](scatter.png)" in (out / "report.md").read_text()


def test_a_resumed_stage_keeps_its_wandb_run_group_and_configured_logger(tiny_raw, tmp_path):
    pipeline = write_pipeline(tmp_path, tiny_raw, ["text"], {"project": "mmsent-tests", "mode": "offline"})
    out = tmp_path / "out"
    out.mkdir()
    interrupted = {"pipeline": "tiny", "group": "tiny-earlier",
                   "stages": {"text": {"status": "running", "wandb": {"run_id": "resume01"}}}}
    (out / "manifest.json").write_text(json.dumps(interrupted))
    run(pipeline, extra=["--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={tmp_path / 'csv'}"])
    wandb.teardown()  # waits until the run file is complete
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["group"] == "tiny-earlier"
    offline = OfflineRun(Path(manifest["stages"]["text"]["wandb"]["dir"]))
    assert (offline.run.run_id, offline.run.run_group) == ("resume01", "tiny-earlier")
    assert "val/MAE" in offline.history
    assert "val/MAE" in next((tmp_path / "csv").rglob("metrics.csv")).read_text()


def test_without_wandb_the_stage_keeps_its_own_logger(tiny_raw, tmp_path):
    pipeline = write_pipeline(tmp_path, tiny_raw, ["text"], {"project": "mmsent-tests"})
    run(pipeline, use_wandb=False,
        extra=["--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={tmp_path / 'csv'}"])
    record = json.loads((tmp_path / "out" / "manifest.json").read_text())["stages"]["text"]
    assert "wandb" not in record
    assert not list(tmp_path.rglob("offline-run-*"))
    assert "val/MAE" in next((tmp_path / "csv").rglob("metrics.csv")).read_text()
    assert Path(record["predictions"]).is_file()


def test_wandb_section_is_validated(tmp_path):
    path = write_pipeline(tmp_path, tmp_path, ["text"], {"project": "p", "modes": "offline"})
    with pytest.raises(ValueError, match=r"wandb: unknown key\(s\) \['modes'\]"):
        load_pipeline(path)
    path = write_pipeline(tmp_path, tmp_path, ["text"], {"mode": "sometimes"})
    with pytest.raises(ValueError, match=r"wandb.mode must be one of"):
        load_pipeline(path)
    assert not load_pipeline(write_pipeline(tmp_path, tmp_path, ["text"], None)).wandb.enabled
    assert load_pipeline(write_pipeline(tmp_path, tmp_path, ["text"], {})).wandb.project == "mmsent"


@pytest.fixture()
def no_credentials(tmp_path, monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    return tmp_path / "netrc"


def test_mode_is_offline_without_credentials_and_online_with_them(no_credentials, monkeypatch):
    assert not tracking.has_credentials()
    assert [tracking.resolve_mode(m) for m in ("auto", "online", "offline")] == ["offline"] * 3
    no_credentials.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert tracking.has_credentials()
    assert [tracking.resolve_mode(m) for m in ("auto", "online", "offline")] == ["online", "online", "offline"]
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com")
    assert not tracking.has_credentials()
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert tracking.has_credentials()
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert tracking.resolve_mode("online") == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.resolve_mode("auto") is None
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match="WANDB_MODE='sometimes' is not one of"):
        tracking.resolve_mode("auto")


def test_a_blank_wandb_mode_counts_as_unset(no_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", " ")
    tracking.default_to_offline()
    assert os.environ["WANDB_MODE"] == "offline"  # no credentials: offline, as if unset
    monkeypatch.setenv("WANDB_MODE", "")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert tracking.resolve_mode("auto") == "online"
    assert "WANDB_MODE" not in os.environ  # W&B itself rejects an empty mode


def test_single_stage_fit_with_a_wandb_logger_in_yaml_writes_offline(no_credentials, tiny_data_args,
                                                                     tmp_path):
    tracking.default_to_offline()
    assert os.environ["WANDB_MODE"] == "offline"
    logger = {"trainer": {"logger": {"class_path": "pytorch_lightning.loggers.WandbLogger",
                                     "init_args": {"project": "mmsent-tests", "save_dir": str(tmp_path / "w")}}}}
    (tmp_path / "logger.yaml").write_text(yaml.safe_dump(logger))
    from mmsent.main import main

    main(["fit", "-c", str(QUICKSTART / "2_audio.yaml"), *tiny_data_args, "-c", str(tmp_path / "logger.yaml"),
          "--trainer.log_every_n_steps=1"])
    wandb.finish()  # as the process exit does for a `mmsent fit` run
    wandb.teardown()  # waits until the run file is complete
    (folder,) = (tmp_path / "w" / "wandb").glob("offline-run-*")
    offline = OfflineRun(folder)
    assert {"train/loss", "val/MAE"} <= offline.history
    assert offline.config["modality"] == "audio"
