"""The one LightningCLI of mmsent, behind ``mmsent fit|validate|test|predict`` and
every pipeline stage."""

from __future__ import annotations

import warnings
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.cli import LightningCLI

from mmsent.data.datamodule import MultimodalDataModule
from mmsent.errors import user_error
from mmsent.tasks.base import BaseTask

MONITOR = "val/MAE"

# Not the user's to act on: the pipeline passes each stage's args while sys.argv holds the
# pipeline's own, and frozen encoders are in eval mode on purpose.
warnings.filterwarnings("ignore", message=r"(?s).*not recommended to provide both args and command line arguments")
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


class EpochLearningRates(LearningRateMonitor):
    """Lightning's ``LearningRateMonitor``, logging every parameter group's learning
    rate (``lr-<optimizer>/<group>``) once per epoch by default.

    Lightning's stops the fit when the trainer has no logger (``trainer.logger:
    false``); this one then has nothing to log to and stands aside.
    """

    def on_train_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)


class MMSentCLI(LightningCLI):
    """LightningCLI with the data's input sizes linked to the model, checkpoints kept
    for the best validation MAE and the last epoch, and the learning rates logged."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.input_dims", "model.init_args.input_dims", apply_on="instantiate")
        parser.link_arguments("data.label_statistics", "model.init_args.label_statistics", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": MONITOR,
            "checkpoint.mode": "min",
            "checkpoint.save_last": True,
            "checkpoint.filename": "best-epoch{epoch:03d}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_lightning_class_args(EpochLearningRates, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "epoch"})

    def instantiate_classes(self) -> None:
        """Instantiates as LightningCLI does, but raises the error a class raised (a
        missing checkpoint, a bad label row) itself, not jsonargparse's wrapper around
        it, which repeats the whole configuration (:func:`mmsent.errors.user_error`).

        Raises:
            Exception: The error a class raised, as it raised it.
        """
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
        run (bool): Run the subcommand; False parses and instantiates only (then
            ``args`` holds no subcommand).

    Returns:
        MMSentCLI: The CLI, with ``model``, ``datamodule`` and ``trainer``.
    """
    return MMSentCLI(
        BaseTask,
        MultimodalDataModule,
        subclass_mode_model=True,
        seed_everything_default=0,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )
