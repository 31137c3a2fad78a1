"""Weights & Biases for the staged pipeline: a group per pipeline run, a run per stage.

The guide "Tracking with Weights & Biases" describes what is logged. This module only reads
the manifest, and hands what it started back to the runner to record.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
import wandb
import yaml
from pytorch_lightning.loggers import Logger, WandbLogger

from mmsent.data.batches import ExampleDataset, collate_columns
from mmsent.pipeline import figures
from mmsent.pipeline.manifest import Manifest
from mmsent.pipeline.report import own_score_correlations
from mmsent.pipeline.spec import Pipeline, Stage
from mmsent.pipeline.wandb_mode import resolve_mode

MEDIA_DIR = "media"
FRAME_CLIPS = 6
ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def new_id(length: int = 8) -> str:
    """A random id in W&B's run-id alphabet (lower-case letters and digits)."""
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(length))


def new_group(pipeline: str) -> str:
    """A new id for a run of ``pipeline``, the W&B group of its stages: ``<name>-<time>-<id>``."""
    return f"{pipeline}-{time.strftime('%Y%m%d-%H%M%S')}-{new_id(4)}"


def artifact_name(pipeline: str, stage: str) -> str:
    """A stage's model artifact name, e.g. ``quickstart-text``; each run adds a version."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{pipeline}-{stage}")


def model_artifact(pipeline: str, stage: str, record: dict) -> wandb.Artifact:
    """A stage's best checkpoint as a ``model`` artifact, its metrics in the metadata.

    Built from the manifest record alone, so a later stage rebuilds the identical artifact
    (name, file digest, metadata) to declare it used.

    Args:
        pipeline: The pipeline's name.
        stage: The stage's name.
        record: The stage's manifest record (``best_checkpoint``, ``metrics``).

    Returns:
        The artifact, not logged yet.
    """
    metrics = record.get("metrics", {})
    metadata = {"pipeline": pipeline, "stage": stage,
                "checkpoint": Path(record["best_checkpoint"]).name,
                "val": metrics.get("val", {}), "test": metrics.get("test", {})}
    artifact = wandb.Artifact(artifact_name(pipeline, stage), type="model", metadata=metadata)
    artifact.add_file(record["best_checkpoint"], name="model.ckpt")
    return artifact


class StageWandbLogger(WandbLogger):
    """A ``WandbLogger`` writing W&B files in the pipeline's folder, Lightning's in the stage's.

    One W&B folder per pipeline lists the offline runs in time order.

    Args:
        stage_dir: The stage folder, reported as ``save_dir``.
        **kwargs: :class:`WandbLogger` arguments; ``save_dir`` is where W&B writes.
    """

    def __init__(self, stage_dir: str | Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._stage_dir = str(stage_dir)

    @property
    def save_dir(self) -> str:
        """The stage folder, which Lightning uses as ``trainer.log_dir``."""
        return self._stage_dir


class StageTracker(pl.Callback):
    """One stage's W&B run: closed by :meth:`finish`, or marked failed when training raises.

    Args:
        logger: The stage's logger; its experiment is the run.
        pipeline: The pipeline's name.
        stage: The stage's name.
        stage_dir: The stage folder (``media/`` in it is logged).
        group: The pipeline-run id, used as an artifact alias.
        datamodule: The stage's DataModule, for video frames; None for none.
    """

    def __init__(self, logger: WandbLogger, pipeline: str, stage: str, stage_dir: Path, group: str,
                 datamodule=None) -> None:
        self.logger = logger
        self.pipeline = pipeline
        self.stage = stage
        self.stage_dir = Path(stage_dir)
        self.group = group
        self.datamodule = datamodule

    @property
    def run(self) -> wandb.Run:
        """The stage's run."""
        return self.logger.experiment

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        self.run.finish(exit_code=1)

    @property
    def record(self) -> dict:
        """What the manifest keeps of the run, so that a rerun resumes it."""
        return {"run_id": self.run.id, "mode": "offline" if self.run.offline else "online",
                "project": self.run.project, "dir": self.run.sync_dir}

    def finish(self, manifest: Manifest) -> None:
        """Logs the media and the best checkpoint as a ``model`` artifact, then closes the run.

        Args:
            manifest: The manifest, this stage recorded as done.
        """
        self.run.log(self.media(manifest.data))
        record = manifest.stage(self.stage)
        self.run.log_artifact(model_artifact(self.pipeline, self.stage, record),
                              aliases=["best", self.group])
        self.run.finish()

    def media(self, manifest: dict) -> dict[str, Any]:
        """The stage's figures, tables, frames and pictures, from ``manifest``, for ``run.log``."""
        logged: dict[str, Any] = {}
        tables = figures.stage_predictions(manifest)
        own = tables.get(self.stage)
        if own is not None:
            for key, draw in (("scatter", figures.draw_scatter), ("confusion_matrix", figures.draw_confusion)):
                logged[f"figures/{key}"] = wandb.Image(figures.stage_panels({self.stage: own}, draw))
            logged["predictions"] = wandb.Table(dataframe=figures.merge_predictions(tables))
        this_stage = {"stages": {self.stage: manifest["stages"][self.stage]}}
        own_score = own_score_correlations(this_stage).get(self.stage)
        if own_score is not None:
            logged[f"test/own_score_corr/{own_score['modality']}"] = own_score["corr"]
        contributions = figures.contributions(this_stage)
        if contributions:
            logged["figures/contributions"] = wandb.Image(figures.contribution_figure(contributions))
        frames = self.frames(own)
        if frames:
            logged["figures/frames"] = frames
        logged.update(stage_pictures(self.stage_dir / MEDIA_DIR))
        return logged

    def frames(self, predictions: pd.DataFrame | None) -> list[wandb.Image]:
        """A few test clips as frame strips, captioned with their true and predicted score.

        Args:
            predictions: This stage's test predictions.

        Returns:
            Empty when the data has no video frames.
        """
        spec = getattr(self.datamodule, "spec", None)
        if spec is None or "video" not in spec.modalities or spec.video_kind != "frames":
            return []
        # Read the frames even in stages whose batches carry no video (text, audio).
        clips = ExampleDataset(self.datamodule.split("test"), spec, 0, ["video"])
        batch = collate_columns(clips.__getitems__(list(range(min(FRAME_CLIPS, len(clips))))), spec)
        predicted = {} if predictions is None else dict(zip(predictions["id"], predictions["prediction"]))
        images = []
        for index, clip in enumerate(batch["id"][:FRAME_CLIPS]):
            if not bool(batch["video_present"][index]):
                continue
            caption = f"{clip}: true {float(batch['label'][index]):+.2f}"
            if clip in predicted:
                caption += f", predicted {predicted[clip]:+.2f}"
            images.append(wandb.Image(figures.frame_strip(batch["video"][index]), caption=caption))
        return images


def stage_pictures(folder: Path) -> dict[str, Any]:
    """Every PNG under ``folder`` as a W&B image keyed ``media/<relative path>``."""
    return {f"{MEDIA_DIR}/{path.relative_to(folder).with_suffix('').as_posix()}": wandb.Image(str(path))
            for path in sorted(folder.rglob("*.png"))}


def resolved_config(cli) -> dict:
    """The full configuration of a stage's ``cli`` as plain data, as ``config.yaml`` holds it."""
    return yaml.safe_load(cli.parser.dump(cli.config, skip_none=False))


def attach_logger(trainer: pl.Trainer, logger: Logger, configured) -> None:
    """Makes ``logger`` the trainer's first; loggers the stage configured itself stay after it.

    Args:
        trainer: The stage's trainer.
        logger: The W&B logger.
        configured: The stage's ``trainer.logger`` setting.
    """
    explicit = configured not in (None, True, False)
    kept = [other for other in trainer.loggers if explicit and not isinstance(other, WandbLogger)]
    trainer.loggers = [logger, *kept]


def stage_inputs(pipeline: Pipeline, stage: Stage, group: str) -> dict[str, str]:
    """The artifacts a stage starts from: config key -> ``<artifact>:<group>``.

    Args:
        pipeline: The pipeline.
        stage: The stage.
        group: The pipeline-run id, the alias of this run's versions.

    Returns:
        Empty for a stage that starts from scratch.
    """
    return {key: f"{artifact_name(pipeline.name, source)}:{group}"
            for key, source in stage.checkpoints.items()}


def start_stage(pipeline: Pipeline, stage: Stage, manifest: Manifest, cli) -> StageTracker | None:
    """Starts a stage's W&B run in the pipeline run's group and attaches it to the trainer.

    A stage interrupted before resumes its run (its id is in the manifest).

    Args:
        pipeline: The pipeline (its ``wandb`` settings and output folder).
        stage: The stage.
        manifest: Holds the group, the stage's command and any earlier run id; read only.
        cli: The stage's instantiated CLI.

    Returns:
        The run's tracker (also a callback of the trainer), or None when W&B is off.
    """
    settings = pipeline.wandb
    mode = resolve_mode(settings.mode) if settings.enabled else None
    if mode is None:
        return None
    record = manifest.stage(stage.name)
    wandb_dir = Path(os.environ.get("WANDB_DIR") or pipeline.output_dir)
    wandb_dir.mkdir(parents=True, exist_ok=True)
    stage_dir = pipeline.output_dir / stage.name
    group = manifest.group
    config = {"pipeline": {"name": pipeline.name, "stage": stage.name, "group": group,
                           "command": record.get("command"),
                           "inputs": stage_inputs(pipeline, stage, group)},
              **resolved_config(cli)}
    run_id = record.get("wandb", {}).get("run_id") or new_id()
    logger = StageWandbLogger(stage_dir, name=stage.name, save_dir=str(wandb_dir), id=run_id,
                              project=settings.project, entity=settings.entity, group=group,
                              job_type=stage.name, tags=settings.tags, mode=mode, config=config)
    attach_logger(cli.trainer, logger, cli.config.get("trainer.logger"))
    tracker = StageTracker(logger, pipeline.name, stage.name, stage_dir, group, cli.datamodule)
    cli.trainer.callbacks.append(tracker)
    declare_inputs(tracker.run, pipeline, stage, manifest)
    return tracker


def declare_inputs(run: wandb.Run, pipeline: Pipeline, stage: Stage, manifest: Manifest) -> None:
    """Declares the artifacts a stage starts from as used, for W&B's lineage graph.

    Offline W&B refuses to; the run's config names them instead (:func:`stage_inputs`).

    Args:
        run: The stage's run.
        pipeline: The pipeline.
        stage: The stage.
        manifest: The records of the stages it starts from.
    """
    if run.offline:
        return
    for source in stage.checkpoints.values():
        # The producer's artifact rebuilt: same name and digest, so W&B links its version.
        run.use_artifact(model_artifact(pipeline.name, source, manifest.stage(source)))


def sync_hint(manifest: dict) -> str | None:
    """The command that uploads the offline runs ``manifest`` records; None when there are none."""
    folders = sorted({str(Path(record["wandb"]["dir"]).parent)
                      for record in manifest.get("stages", {}).values()
                      if record.get("wandb", {}).get("mode") == "offline" and "dir" in record["wandb"]})
    if not folders:
        return None
    patterns = " ".join(f"{folder}/offline-run-*" for folder in folders)
    return f"W&B runs were written offline; upload them with:\n  wandb sync {patterns}"
