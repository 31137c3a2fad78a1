"""Helpers shared by the benchmark scripts: run one stage, summarize seeds, machine facts."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def fit_and_test(args: list[str], measure=None) -> dict:
    """Fits one stage through the CLI, then tests its best checkpoint.

    Args:
        args (list[str]): ``mmsent fit`` arguments without the subcommand.
        measure (Callable | None): Called with the CLI after the test (its model
            holds the best checkpoint's weights); the dict it returns joins the result.

    Returns:
        dict: Test metrics (MMSA names), ``val_MAE`` of the selected checkpoint, the
        best checkpoint path and the wall time in seconds.
    """
    from mmsent.cli import build_cli

    started = time.time()
    cli = build_cli(args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    best = cli.trainer.checkpoint_callback.best_model_path
    (test,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best, verbose=False)
    metrics = {key.split("/", 1)[1]: float(value) for key, value in test.items()}
    metrics["val_MAE"] = float(cli.trainer.checkpoint_callback.best_model_score)
    if measure is not None:
        metrics.update(measure(cli))
    metrics["checkpoint"] = best
    metrics["seconds"] = round(time.time() - started, 1)
    return metrics


def mean_std(values: list[float]) -> str:
    """Formats ``mean ± std`` of a list (std over seeds, n-1 denominator).

    Args:
        values (list[float]): One value per seed.

    Returns:
        str: E.g. ``"0.812 ± 0.014"``.
    """
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def machine() -> str:
    """str: The machine a benchmark ran on, for BENCHMARKS.md."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {device}, "
            f"torch {torch.__version__}, Python {platform.python_version()}")


def save(name: str, payload: dict) -> Path:
    """Writes raw results as JSON under ``benchmarks/results``.

    Args:
        name (str): File stem.
        payload (dict): The results.

    Returns:
        Path: The file written.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def stacked_setting(configs: list[Path], section: str, key: str, default=None):
    """A setting of stacked config files as LightningCLI resolves it: the last file that sets it wins.

    Args:
        configs (list[Path]): The config files, in stacking order.
        section (str): ``"trainer"`` or ``"model"`` (for the model, under ``init_args``).
        key (str): The key in that section.
        default: The value when no file sets it.

    Returns:
        The value.
    """
    value = default
    for config in configs:
        part = (yaml.safe_load(Path(config).read_text()) or {}).get(section) or {}
        if section == "model":
            part = part.get("init_args") or {}
        value = part.get(key, value)
    return value


def save_measurement(name: str, command: str, results: list[dict]) -> Path:
    """Writes one benchmark run's results with its command, machine and date.

    Args:
        name (str): File stem under ``benchmarks/results``.
        command (str): The command that produced them.
        results (list[dict]): One record per measured case.

    Returns:
        Path: The file written.
    """
    return save(name, {"command": command, "machine": machine(), "threads": 1,
                       "date": datetime.now(UTC).isoformat(timespec="minutes"), "results": results})
