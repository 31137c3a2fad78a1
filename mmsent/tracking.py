"""Weights & Biases for the staged pipeline: a group per pipeline run, a run per stage,
model artifacts with lineage, and media.

A pipeline run is one W&B group (a stable id kept in ``manifest.json``); each stage is
one run in it, named after the stage, with the stage as its job type. A stage logs
its best checkpoint as a ``model`` artifact with its validation and test metrics, and
declares the checkpoints it starts from as used artifacts, so W&B's lineage graph
draws the pipeline. Media: predicted against true score, the 7-class confusion
matrix, the per-modality contributions, a table of every stage's test predictions so
far, a few video frames, and any PNG the stage writes under ``<stage dir>/media/``.

Without credentials (no ``WANDB_API_KEY``, no netrc entry for the W&B host) every run
is written offline and nothing asks for a login; ``wandb sync`` uploads it later.
"""

from __future__ import annotations

import logging
import netrc
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytorch_lightning as pl
import yaml
from pytorch_lightning.loggers import Logger, WandbLogger

from mmsent import figures

if TYPE_CHECKING:
    import pandas as pd
    import wandb

    from mmsent.pipeline import Manifest, Pipeline, Stage

log = logging.getLogger(__name__)

MODES = ("auto", "online", "offline")
SETTINGS_KEYS = {"enabled", "project", "entity", "tags", "mode"}
# WANDB_MODE values and the mode they mean here; None turns W&B off.
ENV_MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline",
             "disabled": None}
DEFAULT_HOST = "https://api.wandb.ai"
MEDIA_DIR = "media"
FRAME_CLIPS = 6
ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


@dataclass
class WandbSettings:
    """The ``wandb:`` section of a pipeline file.

    Attributes:
        enabled (bool): Log every stage to W&B. False (or no ``wandb:`` section) leaves
            each stage's own ``trainer.logger`` as configured.
        project (str): The W&B project.
        entity (str | None): The W&B team or user; None uses the account's default.
        tags (list[str]): Tags on every run of the pipeline.
        mode (str): ``auto`` (online with credentials, offline without), ``online`` or
            ``offline``. ``WANDB_MODE``, when set, overrides it; without credentials a
            run is always offline.
    """

    enabled: bool = True
    project: str = "mmsent"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)
    mode: str = "auto"

    @classmethod
    def from_dict(cls, raw: dict | None, where: str) -> WandbSettings:
        """Reads and validates the section.

        Args:
            raw (dict | None): The section; None when the file has none.
            where (str): The file and key, for messages.

        Returns:
            WandbSettings: The settings; disabled when there is no section.

        Raises:
            ValueError: On an unknown key or mode, naming it.
            TypeError: When the section is not a mapping or ``tags`` not a list.
        """
        if raw is None:
            return cls(enabled=False)
        if not isinstance(raw, dict):
            raise TypeError(f"{where}: expected a mapping with keys {sorted(SETTINGS_KEYS)}")
        unknown = set(raw) - SETTINGS_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(SETTINGS_KEYS)}")
        settings = cls(**raw)
        if settings.mode not in MODES:
            raise ValueError(f"{where}.mode must be one of {MODES}, got {settings.mode!r}")
        if isinstance(settings.tags, str) or not isinstance(settings.tags, list):
            raise TypeError(f"{where}.tags must be a list, got {settings.tags!r}")
        settings.tags = [str(tag) for tag in settings.tags]
        return settings


def has_credentials() -> bool:
    """bool: Whether W&B can log in without asking: ``WANDB_API_KEY``,
    ``WANDB_IDENTITY_TOKEN_FILE``, or an entry for the W&B host (``WANDB_BASE_URL``)
    in the netrc file (``NETRC`` or ``~/.netrc``), where ``wandb login`` stores the key."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or DEFAULT_HOST).netloc
    path = Path(os.environ.get("NETRC") or "~/.netrc").expanduser()
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def resolve_mode(requested: str = "auto") -> str | None:
    """The mode a run starts in.

    Args:
        requested (str): ``auto``, ``online`` or ``offline``; ``WANDB_MODE``, when set,
            overrides it.

    Returns:
        str | None: ``"online"`` (only with credentials), ``"offline"``, or None when
        ``WANDB_MODE=disabled``.

    Raises:
        ValueError: If ``WANDB_MODE`` holds a value W&B does not know.
    """
    env = _env_mode()
    if env and env not in ENV_MODES:
        raise ValueError(f"WANDB_MODE={os.environ['WANDB_MODE']!r} is not one of {sorted(ENV_MODES)}; "
                         f"unset it to let the pipeline file's wandb.mode decide")
    mode = ENV_MODES.get(env, requested)
    if mode is None or mode == "offline":
        return mode
    if has_credentials():
        return "online"
    if mode == "online":
        log.warning("W&B mode is online but no credentials were found (WANDB_API_KEY or "
                    "`wandb login`): writing offline runs to upload later with `wandb sync`")
    return "offline"


def default_to_offline() -> None:
    """Makes W&B write offline in this process when nobody chose a mode and there are
    no credentials, so a ``WandbLogger`` in a config never asks for a login."""
    if not _env_mode() and not has_credentials():
        os.environ["WANDB_MODE"] = "offline"


def _env_mode() -> str:
    """``WANDB_MODE`` normalized; a blank one is removed, since W&B rejects it and
    nobody chose a mode by leaving it empty."""
    if "WANDB_MODE" in os.environ and not os.environ["WANDB_MODE"].strip():
        del os.environ["WANDB_MODE"]
    return os.environ.get("WANDB_MODE", "").strip().lower()


def new_id(length: int = 8) -> str:
    """str: A random id in W&B's run-id alphabet (lower-case letters and digits)."""
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(length))


def new_group(pipeline: str) -> str:
    """A new pipeline-run id, used as the W&B group of its stages.

    Args:
        pipeline (str): The pipeline's name.

    Returns:
        str: E.g. ``quickstart-20250101-120000-k3x9``.
    """
    return f"{pipeline}-{time.strftime('%Y%m%d-%H%M%S')}-{new_id(4)}"


def artifact_name(pipeline: str, stage: str) -> str:
    """str: The name of a stage's model artifact, e.g. ``quickstart-text``; each
    pipeline run adds a version, aliased with its group."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{pipeline}-{stage}")


def model_artifact(pipeline: str, stage: str, record: dict) -> wandb.Artifact:
    """A stage's best checkpoint as a ``model`` artifact, its metrics in the metadata.

    Built from the manifest record alone, so a later stage rebuilds the identical
    artifact (name, file digest, metadata) to declare it used.

    Args:
        pipeline (str): The pipeline's name.
        stage (str): The stage's name.
        record (dict): The stage's manifest record (``best_checkpoint``, ``metrics``).

    Returns:
        wandb.Artifact: The artifact, not logged yet.
    """
    import wandb

    metrics = record.get("metrics", {})
    metadata = {"pipeline": pipeline, "stage": stage,
                "checkpoint": Path(record["best_checkpoint"]).name,
                "val": metrics.get("val", {}), "test": metrics.get("test", {})}
    artifact = wandb.Artifact(artifact_name(pipeline, stage), type="model", metadata=metadata)
    artifact.add_file(record["best_checkpoint"], name="model.ckpt")
    return artifact


def use_artifact(run: wandb.Run, artifact: wandb.Artifact) -> None:
    """Declares an artifact as an input of the run, online or offline.

    Args:
        run (wandb.Run): The consuming run.
        artifact (wandb.Artifact): An artifact built as its producer logged it.
    """
    if not run.offline:
        run.use_artifact(artifact)
        return
    # wandb refuses use_artifact offline. Online, use_artifact on a draft artifact
    # logs it with use_after_commit, and that is what this does: the record waits in
    # the offline run file, and `wandb sync` commits it (the producer's version: same
    # name and digest) and marks it used by this run.
    run._log_artifact(artifact, is_user_created=True, use_after_commit=True)


class StageWandbLogger(WandbLogger):
    """A ``WandbLogger`` whose W&B run folder is the pipeline's, while Lightning's files
    (``config.yaml`` and anything under ``trainer.log_dir``) stay in the stage folder.

    One W&B folder per pipeline lists the offline runs in time order, the order
    ``wandb sync`` must upload them in: a stage's model before the stage that uses it.

    Args:
        stage_dir (str | Path): The stage folder, reported as ``save_dir``.
        **kwargs: :class:`WandbLogger` arguments; ``save_dir`` is where W&B writes.
    """

    def __init__(self, stage_dir: str | Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._stage_dir = str(stage_dir)

    @property
    def save_dir(self) -> str:
        """str: The stage folder, which Lightning uses as ``trainer.log_dir``."""
        return self._stage_dir


class StageTracker(pl.Callback):
    """One stage's W&B run: started by :func:`start_stage`, closed by :meth:`finish`,
    or marked failed when training raises.

    Args:
        logger (WandbLogger): The stage's logger; its experiment is the run.
        pipeline (str): The pipeline's name.
        stage (str): The stage's name.
        stage_dir (Path): The stage folder (``media/`` in it is logged).
        group (str): The pipeline-run id, used as an artifact alias.
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
        """wandb.Run: The stage's run."""
        return self.logger.experiment

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        self.run.finish(exit_code=1)

    def finish(self, manifest: Manifest) -> None:
        """Logs the media and the best checkpoint as a ``model`` artifact, then closes
        the run.

        Args:
            manifest (Manifest): The manifest, this stage recorded as done.
        """
        self.run.log(self.media(manifest.data))
        record = manifest.stage(self.stage)
        self.run.log_artifact(model_artifact(self.pipeline, self.stage, record),
                              aliases=["best", self.group])
        self.run.finish()

    def media(self, manifest: dict) -> dict[str, Any]:
        """The stage's figures, the predictions table of every stage so far, video
        frames and the stage's own pictures, keyed for ``run.log``.

        Args:
            manifest (dict): The manifest's data.

        Returns:
            dict[str, Any]: W&B media by key.
        """
        import wandb

        logged: dict[str, Any] = {}
        tables = figures.stage_predictions(manifest)
        own = tables.get(self.stage)
        if own is not None:
            logged["figures/scatter"] = wandb.Image(figures.scatter_figure({self.stage: own}))
            logged["figures/confusion_matrix"] = wandb.Image(figures.confusion_figure({self.stage: own}))
            logged["predictions"] = wandb.Table(dataframe=figures.merge_predictions(tables))
        contributions = figures.contributions({"stages": {self.stage: manifest["stages"][self.stage]}})
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
            predictions (pd.DataFrame | None): This stage's test predictions.

        Returns:
            list[wandb.Image]: Empty when the data has no video frames.
        """
        import wandb

        spec = getattr(self.datamodule, "spec", None)
        if spec is None or "video" not in spec.modalities or spec.video_kind != "frames":
            return []
        batch = next(iter(self.datamodule.test_dataloader()))
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
    """Every PNG under a folder as a ``wandb.Image`` keyed ``media/<relative path>``;
    this is how a stage (the generative one's samples) adds its own pictures.

    Args:
        folder (Path): ``<stage dir>/media``.

    Returns:
        dict[str, Any]: Key -> image; empty when the folder does not exist.
    """
    import wandb

    return {f"{MEDIA_DIR}/{path.relative_to(folder).with_suffix('').as_posix()}": wandb.Image(str(path))
            for path in sorted(folder.rglob("*.png"))}


def resolved_config(cli) -> dict:
    """The stage's full configuration, as ``config.yaml`` holds it.

    Args:
        cli (MMSentCLI): The stage's CLI.

    Returns:
        dict: The configuration as plain data.
    """
    return yaml.safe_load(cli.parser.dump(cli.config, skip_none=False))


def attach_logger(trainer: pl.Trainer, logger: Logger, configured) -> None:
    """Makes ``logger`` the trainer's first logger. Loggers the stage configured itself
    (a CSV or TensorBoard logger) stay after it; Lightning's default one does not.

    Args:
        trainer (pl.Trainer): The stage's trainer.
        logger (Logger): The W&B logger.
        configured: The stage's ``trainer.logger`` setting.
    """
    explicit = configured not in (None, True, False)
    kept = [other for other in trainer.loggers if explicit and not isinstance(other, WandbLogger)]
    trainer.loggers = [logger, *kept]


def start_stage(pipeline: Pipeline, stage: Stage, manifest: Manifest, cli) -> StageTracker | None:
    """Starts a stage's W&B run and attaches it to the stage's trainer.

    The run is named after the stage, in the pipeline run's group, with the stage as
    its job type; it holds the resolved configuration and declares the checkpoints the
    stage starts from as used artifacts. A stage interrupted before resumes its run.

    Args:
        pipeline (Pipeline): The pipeline (its ``wandb`` settings and output folder).
        stage (Stage): The stage.
        manifest (Manifest): Holds the group and, per stage, the W&B run id; saved.
        cli (MMSentCLI): The stage's instantiated CLI.

    Returns:
        StageTracker | None: The run's tracker (also a callback of the trainer), or
        None when W&B is off.
    """
    settings = pipeline.wandb
    mode = resolve_mode(settings.mode) if settings.enabled else None
    if mode is None:
        return None
    record = manifest.stage(stage.name)
    tracked = record.setdefault("wandb", {})
    tracked["run_id"] = tracked.get("run_id") or new_id()
    wandb_dir = Path(os.environ.get("WANDB_DIR") or pipeline.output_dir)
    wandb_dir.mkdir(parents=True, exist_ok=True)
    stage_dir = pipeline.output_dir / stage.name
    group = manifest.data["group"]
    config = {"pipeline": {"name": pipeline.name, "stage": stage.name, "group": group,
                           "command": record.get("command")}, **resolved_config(cli)}
    logger = StageWandbLogger(stage_dir, name=stage.name, save_dir=str(wandb_dir), id=tracked["run_id"],
                              project=settings.project, entity=settings.entity, group=group,
                              job_type=stage.name, tags=settings.tags, mode=mode, config=config)
    attach_logger(cli.trainer, logger, cli.config.get("trainer.logger"))
    tracker = StageTracker(logger, pipeline.name, stage.name, stage_dir, group, cli.datamodule)
    cli.trainer.callbacks.append(tracker)
    for source in stage.checkpoints.values():
        use_artifact(tracker.run, model_artifact(pipeline.name, source, manifest.stage(source)))
    tracked.update({"mode": mode, "project": settings.project, "dir": tracker.run.settings.sync_dir})
    manifest.save()
    return tracker


def sync_hint(manifest: dict) -> str | None:
    """The command that uploads the pipeline's offline runs.

    Args:
        manifest (dict): The manifest's data.

    Returns:
        str | None: The message, or None when no run was written offline.
    """
    folders = sorted({str(Path(record["wandb"]["dir"]).parent)
                      for record in manifest.get("stages", {}).values()
                      if record.get("wandb", {}).get("mode") == "offline" and "dir" in record["wandb"]})
    if not folders:
        return None
    patterns = " ".join(f"{folder}/offline-run-*" for folder in folders)
    # One run at a time, oldest first: a stage's model must exist before a later stage
    # declares it used, or the lineage would name the later stage as its producer.
    return f"W&B runs were written offline; upload them with:\n  wandb sync -n 1 {patterns}"
