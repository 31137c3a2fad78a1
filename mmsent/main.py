"""The one command line: ``mmsent fit|validate|test|predict`` and ``mmsent pipeline``."""

from __future__ import annotations

import sys

from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningCLI

from mmsent.data.datamodule import MultimodalDataModule
from mmsent.tasks.base import BaseTask
from mmsent.tracking import default_to_offline

MONITOR = "val/MAE"


class MMSentCLI(LightningCLI):
    """LightningCLI with the data's input sizes linked to the model and checkpoints
    kept for the best validation MAE and the last epoch."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.input_dims", "model.init_args.input_dims", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": MONITOR,
            "checkpoint.mode": "min",
            "checkpoint.save_last": True,
            "checkpoint.filename": "best-epoch{epoch:03d}",
            "checkpoint.auto_insert_metric_name": False,
        })

    def instantiate_classes(self) -> None:
        """Instantiates as LightningCLI does, but surfaces the error a class raised
        (a missing checkpoint, a bad label row) instead of jsonargparse's wrapper,
        which repeats the whole configuration around it."""
        try:
            super().instantiate_classes()
        except ValueError as error:
            raise root_cause(error) from None


def root_cause(error: BaseException) -> BaseException:
    """The first exception in a ``raise ... from ...`` chain not raised by jsonargparse.

    Unwrapping stops there, so a message the project wrote around a lower-level
    error (a checkpoint whose weights do not fit) is the one shown.

    Args:
        error (BaseException): The outermost exception.

    Returns:
        BaseException: The exception a class raised.
    """
    while error.__cause__ is not None and _raised_in(error, "jsonargparse"):
        error = error.__cause__
    return error


def _raised_in(error: BaseException, package: str) -> bool:
    trace = error.__traceback__
    while trace is not None and trace.tb_next is not None:
        trace = trace.tb_next
    return trace is not None and f"{package}/" in trace.tb_frame.f_code.co_filename


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


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``mmsent`` command.

    Args:
        args (list[str] | None): Command-line arguments; None reads ``sys.argv``.
    """
    args = sys.argv[1:] if args is None else list(args)
    if args and args[0] == "pipeline":
        from mmsent.pipeline import main as pipeline_main

        pipeline_main(args[1:])
        return
    default_to_offline()
    build_cli(args)


if __name__ == "__main__":
    main()
