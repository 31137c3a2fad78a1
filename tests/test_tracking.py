"""W&B tracking of the staged pipeline, checked by reading the offline run files.

The pipeline runs text -> fusion -> fine-tuning (text only, to stay fast) in a
subprocess with no W&B credentials, no reachable W&B host and stdin closed; the tests
then read each stage's offline run back (:mod:`wandb_offline`).
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import wandb
import yaml
from helpers import CONF, REPO
from wandb_offline import OfflineRun

from mmsent.errors import ConfigError
from mmsent.pipeline import load_pipeline, run, tracking, wandb_mode

QUICKSTART = REPO / "pipelines" / "quickstart"
STAGES = ["text", "fusion", "finetune"]
TEXT_ONLY = {"model": {"init_args": {"audio_encoder": None, "video_encoder": None}}}
TEXT_ONLY_GROUPS = {"model": {"init_args": {"param_groups": {
    "text": {"lr": 0.002, "schedule": {"name": "cosine", "epochs": 8}},
    "fusion": {"lr": 0.002, "schedule": {"name": "cosine", "epochs": 8}},
}}}}

def write_pipeline(folder: Path, raw_root: Path, stages: list[str], wandb: dict | None) -> Path:
    """A pipeline over the quickstart stage configs, the tiny dataset and text only."""
    (folder / "text_only.yaml").write_text(yaml.safe_dump(TEXT_ONLY))
    (folder / "text_only_groups.yaml").write_text(yaml.safe_dump(TEXT_ONLY_GROUPS))
    base = [str(QUICKSTART / "base.yaml")]
    fused = base + [str(QUICKSTART / "4_fusion.yaml"), str(folder / "text_only.yaml")]
    every = {
        "text": {"name": "text", "configs": base + [str(QUICKSTART / "1_text.yaml")]},
        "fusion": {"name": "fusion", "configs": fused,
                   "checkpoints": {"model.init_args.encoders.text": "text"}},
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
    assert f"wandb sync {folder / 'wandb-dir' / 'wandb'}/offline-run-*" in output


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
                                "command": manifest["stages"]["text"]["command"], "inputs": {}}
    assert text["model"]["class_path"] == "mmsent.tasks.UnimodalTask"
    assert text["trainer"]["max_epochs"] == 1
    assert text["data"]["batch_size"] == 8
    assert text["modality"] == "text" and text["loss"] == "l1"
    assert finetune["model"]["init_args"]["optimizer"]["class_path"] == "torch.optim.SGD"
    assert finetune["freeze_encoders"] == ["video"], "the quickstart fine-tunes text and audio, video stays frozen"
    assert finetune["init_checkpoint"] == manifest["stages"]["fusion"]["best_checkpoint"]


def learning_rate_groups(history: set[str]) -> set[str]:
    """The parameter groups whose learning rate Lightning's LearningRateMonitor logged
    (``lr-<optimizer>/<group>``)."""
    return {key.split("/", 1)[1] for key in history if key.startswith("lr-") and "/" in key}


def test_history_has_metrics_learning_rates_and_media(offline_pipeline):
    runs = offline_pipeline["runs"]
    for offline in runs.values():
        assert {"train/loss", "val/MAE", "val/Corr", "test/MAE", "test/Mult_acc_7", "figures/scatter",
                "figures/confusion_matrix", "figures/frames", "predictions"} <= offline.history
    assert learning_rate_groups(runs["text"].history) == {"text", "head"}
    assert learning_rate_groups(runs["finetune"].history) == {"text", "fusion"}
    assert {"test/contribution/text", "figures/contributions", "media/samples"} <= runs["fusion"].history
    # The selection (in the fusion configs) reports its test against the stage's start.
    assert {"selection/start/gain_MAE", "selection/start/p_value"} <= runs["fusion"].history
    assert "media/samples" not in runs["text"].history
    # On generated data a unimodal stage logs how well it recovers its own modality's score.
    assert "test/own_score_corr/text" in runs["text"].history
    assert not any(key.startswith("test/own_score_corr") for key in runs["fusion"].history)


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


def test_each_run_names_the_artifact_versions_it_starts_from(offline_pipeline):
    manifest, runs = offline_pipeline["manifest"], offline_pipeline["runs"]
    group = manifest["group"]
    assert runs["text"].config["pipeline"]["inputs"] == {}
    assert runs["fusion"].config["pipeline"]["inputs"] == {"model.init_args.encoders.text": f"tiny-text:{group}"}
    assert runs["finetune"].config["pipeline"]["inputs"] == {
        "model.init_args.init_checkpoint": f"tiny-fusion:{group}"}
    for offline in runs.values():
        # W&B refuses to declare a used artifact offline; the config names it instead.
        assert offline.models(used=True) == {}


def test_an_online_run_declares_the_artifacts_it_loads_as_used(offline_pipeline):
    manifest, runs = offline_pipeline["manifest"], offline_pipeline["runs"]
    pipeline = SimpleNamespace(name="tiny")
    stage = SimpleNamespace(checkpoints={"model.init_args.init_checkpoint": "fusion"})
    records = SimpleNamespace(stage=lambda name: manifest["stages"][name])
    used = []
    tracking.declare_inputs(SimpleNamespace(offline=True, use_artifact=used.append), pipeline, stage, records)
    assert used == []
    tracking.declare_inputs(SimpleNamespace(offline=False, use_artifact=used.append), pipeline, stage, records)
    (artifact,) = used
    produced = runs["fusion"].models(used=False)["tiny-fusion"]
    # The same name and digest make W&B resolve it to the producer's version.
    assert (artifact.name, artifact.type, artifact.digest) == ("tiny-fusion", "model", produced.digest)
    assert artifact.metadata == json.loads(produced.metadata)


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
    with pytest.raises(ConfigError, match=r"pipeline.yaml: wandb: .*'modes'.* \(the keys are enabled, project"):
        load_pipeline(path)
    path = write_pipeline(tmp_path, tmp_path, ["text"], {"mode": "sometimes"})
    with pytest.raises(ConfigError, match=r"wandb: .*mode.*Expected a typing.Literal\['auto', 'online', 'offline'\]"):
        load_pipeline(path)
    path = write_pipeline(tmp_path, tmp_path, ["text"], {"tags": "quickstart"})
    with pytest.raises(ConfigError, match=r"wandb: .*tags.*Expected a <class 'list'>"):
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
    assert not wandb_mode.has_credentials()
    assert [wandb_mode.resolve_mode(m) for m in ("auto", "online", "offline")] == ["offline"] * 3
    no_credentials.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert wandb_mode.has_credentials()
    assert [wandb_mode.resolve_mode(m) for m in ("auto", "online", "offline")] == ["online", "online", "offline"]
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com")
    assert not wandb_mode.has_credentials()
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert wandb_mode.has_credentials()
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode.resolve_mode("online") == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode.resolve_mode("auto") is None
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match="WANDB_MODE='sometimes' is not one of"):
        wandb_mode.resolve_mode("auto")


def test_a_blank_wandb_mode_counts_as_unset(no_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", " ")
    wandb_mode.default_to_offline()
    assert os.environ["WANDB_MODE"] == "offline"  # no credentials: offline, as if unset
    monkeypatch.setenv("WANDB_MODE", "")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert wandb_mode.resolve_mode("auto") == "online"
    assert "WANDB_MODE" not in os.environ  # W&B itself rejects an empty mode


def test_single_stage_fit_with_a_wandb_logger_in_yaml_writes_offline(no_credentials, tiny_data_args,
                                                                     tmp_path):
    wandb_mode.default_to_offline()
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
