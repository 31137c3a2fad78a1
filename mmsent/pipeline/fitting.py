"""Fitting and evaluating one stage, the same in every process of a multi-process stage."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mmsent.cli import MMSentCLI
from mmsent.io import atomic_write
from mmsent.pipeline import ranks
from mmsent.pipeline.figures import PREDICTIONS_FILE, predictions_table
from mmsent.pipeline.spec import Stage
from mmsent.selection import select, starting_weights

INTERRUPTED = "interrupted (SIGINT)"


def fit_and_evaluate(cli: MMSentCLI, stage: Stage, resume: str | None, folder: Path,
                     unimodal: dict[str, dict] | None = None) -> dict:
    """Fits one stage (resuming it), then evaluates the checkpoint it hands on.

    That checkpoint is the selection's (when the config has a ``selection``), else the best
    validation checkpoint.

    Args:
        cli: The stage's CLI, built but not run.
        stage: The stage.
        resume: The checkpoint to resume the fit from.
        folder: The stage folder.
        unimodal: For the selection, per modality, the ``val_MAE`` and ``checkpoint`` of the
            unimodal stage the stage builds on.

    Returns:
        ``selection``, ``config``, ``best_checkpoint``, ``last_checkpoint``, ``metrics`` (``val``
            and ``test``) and ``predictions``, as the manifest records them.

    Raises:
        SystemExit: When SIGTERM or SIGINT stopped the stage (which Lightning ends with status 0
            or a bare 1), naming the stage.
    """
    try:
        return _fit_and_evaluate(cli, stage, resume, folder, unimodal)
    except SIGTERMException:
        raise SystemExit(stopped(stage, "stopped by SIGTERM")) from None
    except SystemExit as error:
        # Lightning answers Ctrl+C with sys.exit(1) while handling the KeyboardInterrupt.
        if isinstance(error.__context__, KeyboardInterrupt):
            raise SystemExit(stopped(stage, INTERRUPTED)) from None
        raise


def stopped(stage: Stage, how: str) -> str:
    """What the manifest and the terminal say of a stage stopped by a signal."""
    return f"stage {stage.name!r} {how}; run the same command again to resume it from its last checkpoint"


def _fit_and_evaluate(cli: MMSentCLI, stage: Stage, resume: str | None, folder: Path,
                      unimodal: dict[str, dict] | None) -> dict:
    start = starting_weights(cli.model, cli.selection)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=resume)
    # Every process reads the checkpoints the main one wrote.
    cli.trainer.strategy.barrier("mmsent.pipeline: checkpoints written")
    # Read before validate/test: loading the best checkpoint resets the callback's state.
    last = cli.trainer.checkpoint_callback.last_model_path
    selection, selected = select(cli.trainer, cli.model, cli.selection, start, unimodal)
    best = selected or cli.trainer.checkpoint_callback.best_model_path or last
    metrics = {
        "val": flat_metrics(cli.trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path=best)),
        "test": flat_metrics(cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best)),
    }
    # trainer.log_dir is a collective call on several processes.
    config = str(Path(cli.trainer.log_dir or folder) / "config.yaml")
    return {"selection": selection, "config": config, "best_checkpoint": best,
            "last_checkpoint": last, "metrics": metrics, "predictions": save_predictions(cli, best, folder)}


def save_predictions(cli: MMSentCLI, checkpoint: str, folder: Path) -> str | None:
    """Predicts the test split into ``<folder>/predictions.csv``, written by the main process.

    Args:
        cli: The stage's CLI.
        checkpoint: The checkpoint to predict with.
        folder: The stage folder.

    Returns:
        The file, or None when the model predicts no score (a generative stage).
    """
    outputs = cli.trainer.predict(cli.model, dataloaders=cli.datamodule.test_dataloader(),
                                  ckpt_path=checkpoint)
    table = predictions_table(outputs) if outputs and "prediction" in outputs[0] else None
    if cli.trainer.world_size > 1:
        shares = [share for share in ranks.gather(table) if share is not None]
        order = {str(clip): position for position, clip in enumerate(cli.datamodule.split("test")["id"])}
        table = pd.concat(shares).sort_values("id", key=lambda ids: ids.map(order), kind="stable",
                                              ignore_index=True) if shares else None
    if table is None:
        return None
    path = folder / PREDICTIONS_FILE
    if cli.trainer.is_global_zero:
        atomic_write(path, lambda part: table.to_csv(part, index=False), "predictions")
    return str(path)


def flat_metrics(results: list[dict]) -> dict[str, float]:
    """What ``trainer.validate`` or ``trainer.test`` returned, merged, without the split prefix."""
    merged = {}
    for result in results:
        merged.update({key.split("/", 1)[1]: float(value) for key, value in result.items() if "/" in key})
    return merged
