"""The one LightningCLI of mmsent, behind ``mmsent fit|validate|test|predict`` and every stage."""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import rich
from jsonargparse import ArgumentError, Namespace
from lightning_fabric.plugins import CheckpointIO
from pytorch_lightning.callbacks import LearningRateMonitor, ProgressBar, RichProgressBar
from pytorch_lightning.cli import LightningCLI

from mmsent.callbacks.checkpoint import LastEpochCheckpoint
from mmsent.callbacks.random_state import RandomState
from mmsent.data.datamodule import MultimodalDataModule
from mmsent.errors import ConfigError, user_error
from mmsent.selection import Selection, select, starting_weights
from mmsent.tasks.base import BaseTask
from mmsent.tasks.checkpoint_io import AtomicCheckpointIO, current_hyperparameters, read_checkpoint

MONITOR = "val/MAE"
# Optimizer options no mmsent type guards (the class is torch's), and what a negative does.
NEGATIVE = {"lr": "a negative learning rate climbs the loss",
            "weight_decay": "a negative weight decay pushes the weights away from zero"}

# Not the user's to act on: the pipeline passes each stage's args while sys.argv holds the
# pipeline's own, frozen encoders are in eval mode on purpose, CSV is the intended
# logger without W&B, and the pytree deprecation is inside Lightning.
warnings.filterwarnings("ignore", message=r"(?s).*not recommended to provide both args and command line arguments")
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
warnings.filterwarnings("ignore", message=r"Starting from v1\.9\.0, `tensorboardX` has been removed")
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


class _WithoutAdvertisements(logging.Filter):
    """Drops Lightning's per-trainer advertisement for its hosted logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip:")


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_WithoutAdvertisements())


class EpochLearningRates(LearningRateMonitor):
    """Lightning's ``LearningRateMonitor``, logging every parameter group's learning
    rate (``lr-<optimizer>/<group>``) once per epoch by default; it stands aside without
    a logger, where Lightning's would stop the fit.
    """

    def on_train_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)


class MMSentCLI(LightningCLI):
    """LightningCLI with the data's input sizes linked to the model, checkpoints kept
    for the best validation MAE and the last epoch, the learning rates logged, and
    after ``fit`` the ``selection`` of a fused stage.

    Its trainers write checkpoints atomically, read them with ``weights_only=True`` and
    keep the random states in them, so a resumed fit ends as one never stopped. Notices
    go to stderr; stdout holds only data (``--print_config``, the metrics as JSON).
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.input_dims", "model.init_args.input_dims", apply_on="instantiate")
        parser.link_arguments("data.label_statistics", "model.init_args.label_statistics", apply_on="instantiate")
        parser.add_lightning_class_args(LastEpochCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": MONITOR,
            "checkpoint.mode": "min",
            "checkpoint.save_last": True,
            "checkpoint.filename": "best-epoch{epoch:03d}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_lightning_class_args(EpochLearningRates, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "epoch"})
        parser.add_argument("--selection", type=Selection | None, default=None,
                            help="What a fused stage hands on after its fit (mmsent.selection.Selection); "
                                 "null: its best checkpoint")

    @property
    def selection(self) -> Selection | None:
        """Selection | None: The configuration's ``selection`` (:func:`mmsent.selection.select`)."""
        return self.config_init.get(str(self.subcommand), self.config_init).get("selection")

    def before_fit(self) -> None:
        """Keeps the weights the selection after the fit may hand on instead."""
        self.start = starting_weights(self.model, self.selection)

    def after_fit(self) -> None:
        """Chooses what the fitted stage hands on, when the configuration has a ``selection``."""
        select(self.trainer, self.model, self.selection, self.start)

    def parse_arguments(self, parser, args) -> None:
        """Parses, then takes the model's hyperparameters from ``--ckpt_path``, read safely
        (a bad file is named, not shown with torch's traceback) and under today's names."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not path or not Path(path).is_file():
            return
        hparams = current_hyperparameters(read_checkpoint(path, "--ckpt_path").get("hyper_parameters", {}))
        hparams.pop("_instantiator", None)
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        if hparams:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        # LightningCLI would read the file's hyperparameters again, under their saved
        # names, before before_instantiate_classes; it is handed the path back there.
        self._ckpt_path = path
        self.config[subcommand].ckpt_path = None

    def before_instantiate_classes(self) -> None:
        """Gives back the ``--ckpt_path`` whose hyperparameters :meth:`parse_arguments` took."""
        path = getattr(self, "_ckpt_path", None)
        if path:
            self.config[self.config["subcommand"]].ckpt_path = path

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        """Adds the atomic checkpoint I/O (unless configured), :class:`RandomState` and a
        progress bar on stderr to the trainer."""
        config = {**self.config_init.get(str(self.subcommand), self.config_init).get("trainer", {}), **kwargs}
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            plugins.append(AtomicCheckpointIO())
        # Lightning's default bar and its rich tables print to stdout.
        rich.reconfigure(stderr=True)
        callbacks = config.get("callbacks") or []
        callbacks = [*(callbacks if isinstance(callbacks, list) else [callbacks]), RandomState()]
        if config.get("enable_progress_bar", True) is not False and not any(
                isinstance(callback, ProgressBar) for callback in callbacks):
            callbacks.append(RichProgressBar(console_kwargs={"stderr": True}))
        return super().instantiate_trainer(**{**kwargs, "plugins": plugins, "callbacks": callbacks})

    def after_validate(self) -> None:
        """Prints the validation metrics to stdout, as one JSON object."""
        self._print_metrics()

    def after_test(self) -> None:
        """Prints the test metrics to stdout, as one JSON object."""
        self._print_metrics()

    def _print_metrics(self) -> None:
        if self.trainer.is_global_zero:
            metrics = {name: float(value) for name, value in sorted(self.trainer.callback_metrics.items())}
            print(json.dumps(metrics))

    def instantiate_classes(self) -> None:
        """Checks the values, then instantiates, raising a class's own error (a missing
        checkpoint, a bad label row), not jsonargparse's wrapper repeating the config.

        Raises:
            Exception: The error a class raised, as it raised it.
        """
        check_values(self.config.get(str(self.subcommand), self.config))
        try:
            super().instantiate_classes()
        except Exception as error:
            shown = user_error(error)
            if shown is error:
                raise
            # Hides the wrappers, keeps what caused the error shown.
            raise shown from shown.__cause__


def build_cli(args: list[str] | None = None, run: bool = True) -> MMSentCLI:
    """Builds (and by default runs) the CLI.

    Args:
        args (list[str] | None): Command-line arguments; None reads ``sys.argv``.
        run (bool): Run the subcommand; False parses and instantiates only (no subcommand).

    Returns:
        MMSentCLI: The CLI, with ``model``, ``datamodule`` and ``trainer``.

    Raises:
        ArgumentError: If the arguments do not parse (jsonargparse's message).
    """
    return MMSentCLI(
        BaseTask,
        MultimodalDataModule,
        subclass_mode_model=True,
        seed_everything_default=0,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"exit_on_error": False},
        args=args,
        run=run,
    )


class ConfigCheckCLI(MMSentCLI):
    """Parses a configuration and checks its values without data, model or seeding."""

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        self.config.seed_everything = False

    def instantiate_classes(self) -> None:
        check_values(self.config)


def check_config(args: list[str]) -> Namespace:
    """Parses and checks a configuration (no subcommand) as ``mmsent fit`` would, building nothing.

    Args:
        args (list[str]): Command-line arguments, e.g. ``-c`` files and overrides.

    Returns:
        Namespace: The parsed configuration.

    Raises:
        ConfigError: On an unknown key, a wrongly typed value or one that cannot work.
    """
    try:
        return ConfigCheckCLI(BaseTask, MultimodalDataModule, subclass_mode_model=True,
                              seed_everything_default=0, auto_configure_optimizers=False,
                              parser_kwargs={"exit_on_error": False}, args=args, run=False).config
    except ArgumentError as error:
        raise ConfigError(" ".join(str(error).split())) from None


def check_values(config: Namespace) -> None:
    """Refuses an optimizer learning rate or weight decay that is negative or not finite.

    The types allow them (the parameter groups' own are typed, :class:`~mmsent.optim.ParamGroup`).

    Args:
        config (Namespace): The parsed configuration.

    Raises:
        ConfigError: Naming the key and the value.
    """
    for key, value in _leaves(config.as_dict() if isinstance(config, Namespace) else config):
        name = key.rsplit(".", 1)[-1]
        if name not in NEGATIVE or value is None or isinstance(value, bool):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        if number < 0:
            raise ConfigError(f"{key} must be >= 0, got {value!r}: {NEGATIVE[name]}")


def _leaves(tree: Any, prefix: str = ""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, tree
