"""``mmsent pipeline run FILE``: the stages in order, each through the same CLI.

Each stage is a stack of LightningCLI config files. The pipeline hands every
stage the best checkpoints of the stages it names (as init arguments, never
``--ckpt_path``), records each stage in ``manifest.json`` as it goes, and writes the
report at the end. A rerun skips finished stages and resumes an interrupted one from
its last checkpoint. With a ``wandb:`` section, every stage is also a W&B run in the
pipeline run's group (see :mod:`mmsent.tracking`).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mmsent import tracking
from mmsent.figures import PREDICTIONS_FILE, predictions_table
from mmsent.io import save_json

log = logging.getLogger(__name__)


@dataclass
class Stage:
    """One stage of a pipeline file.

    Attributes:
        name (str): Unique stage name.
        configs (list[Path]): Config files stacked with ``-c``, in order.
        checkpoints (dict[str, str]): Config key -> earlier stage whose best
            checkpoint it receives.
        args (list[str]): Further command-line arguments for this stage.
    """

    name: str
    configs: list[Path]
    checkpoints: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)


@dataclass
class Pipeline:
    """A parsed pipeline file.

    Attributes:
        name (str): The pipeline's name.
        output_dir (Path): Where stage folders, the manifest and the report go.
        stages (list[Stage]): The stages in run order.
        args (list[str]): Command-line arguments added to every stage.
        wandb (tracking.WandbSettings): The ``wandb:`` section; off when absent.
    """

    name: str
    output_dir: Path
    stages: list[Stage]
    args: list[str] = field(default_factory=list)
    wandb: tracking.WandbSettings = field(default_factory=lambda: tracking.WandbSettings(enabled=False))

    def stage(self, name: str) -> Stage:
        """Stage: The stage called ``name``."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ValueError(f"no stage {name!r}; the pipeline has {[s.name for s in self.stages]}")


PIPELINE_KEYS = {"name", "output_dir", "stages", "args", "wandb"}
STAGE_KEYS = {"name", "configs", "checkpoints", "args"}


def load_pipeline(path: str | Path) -> Pipeline:
    """Reads and validates a pipeline file.

    Args:
        path (str | Path): The YAML file; config paths inside are relative to it.

    Returns:
        Pipeline: The pipeline.

    Raises:
        ValueError: On an unknown key, a missing config file, a duplicate stage, or a
            checkpoint taken from a stage that does not run earlier, naming the key.
    """
    path = Path(path)
    raw = yaml.safe_load(path.read_text()) or {}
    _check_keys(raw, PIPELINE_KEYS, str(path))
    stages, seen = [], set()
    for index, entry in enumerate(raw.get("stages") or []):
        where = f"{path}: stages[{index}]"
        _check_keys(entry, STAGE_KEYS, where)
        stage = Stage(entry["name"], [path.parent / c for c in entry.get("configs", [])],
                      dict(entry.get("checkpoints") or {}), list(entry.get("args") or []))
        _check_stage(stage, seen, where)
        seen.add(stage.name)
        stages.append(stage)
    if not stages:
        raise ValueError(f"{path}: the pipeline lists no stage")
    return Pipeline(raw.get("name", path.stem), Path(raw.get("output_dir", f"runs/{path.stem}")),
                    stages, list(raw.get("args") or []),
                    tracking.WandbSettings.from_dict(raw.get("wandb"), f"{path}: wandb"))


def _check_keys(entry: dict, allowed: set[str], where: str) -> None:
    unknown = set(entry) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")


def _check_stage(stage: Stage, earlier: set[str], where: str) -> None:
    if stage.name in earlier:
        raise ValueError(f"{where}: duplicate stage name {stage.name!r}")
    for config in stage.configs:
        if not config.is_file():
            raise ValueError(f"{where}: config file {config} does not exist")
    for key, source in stage.checkpoints.items():
        if source not in earlier:
            raise ValueError(f"{where}: checkpoints.{key} takes stage {source!r}, "
                             f"which does not run before {stage.name!r}")


class Manifest:
    """``manifest.json``: per stage its status, command, checkpoints, metrics and time.

    Args:
        path (Path): The manifest file; read if it exists.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {"stages": {}}

    def stage(self, name: str) -> dict:
        """dict: The record of one stage (created empty if new)."""
        return self.data["stages"].setdefault(name, {})

    def is_done(self, name: str) -> bool:
        """bool: Whether the stage finished and its best checkpoint still exists."""
        record = self.data["stages"].get(name, {})
        return record.get("status") == "done" and Path(record.get("best_checkpoint", "")).is_file()

    def save(self) -> None:
        """Writes the manifest atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        save_json(self.path, self.data)


def stage_arguments(pipeline: Pipeline, stage: Stage, manifest: Manifest, extra: list[str]) -> list[str]:
    """The CLI arguments of one stage (without the subcommand).

    Args:
        pipeline (Pipeline): The pipeline.
        stage (Stage): The stage.
        manifest (Manifest): Where earlier stages' checkpoints are recorded.
        extra (list[str]): Arguments from the command line, added last.

    Returns:
        list[str]: ``-c`` files, handed-on checkpoints, the stage and checkpoint folders,
        then overrides.
    """
    args = []
    for config in stage.configs:
        args += ["-c", str(config)]
    for key, source in stage.checkpoints.items():
        args.append(f"--{key}={manifest.stage(source)['best_checkpoint']}")
    args.append(f"--trainer.default_root_dir={pipeline.output_dir / stage.name}")
    # Whatever the logger, checkpoints land where a resumed stage looks for them.
    args.append(f"--checkpoint.dirpath={pipeline.output_dir / stage.name / 'checkpoints'}")
    return args + pipeline.args + stage.args + extra


def run_stage(pipeline: Pipeline, stage: Stage, manifest: Manifest, extra: list[str]) -> None:
    """Fits one stage (resuming it if it was interrupted), then validates, tests and
    predicts the test split with its best checkpoint, recording everything in the
    manifest (and in the stage's W&B run, when W&B is on).

    Args:
        pipeline (Pipeline): The pipeline.
        stage (Stage): The stage to run.
        manifest (Manifest): Updated and saved as the stage progresses.
        extra (list[str]): Arguments from the command line.
    """
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from mmsent.callbacks import ModalitySelection
    from mmsent.main import build_cli

    record = manifest.stage(stage.name)
    args = stage_arguments(pipeline, stage, manifest, extra)
    resume = _resume_checkpoint(pipeline, stage, record)
    command = "mmsent fit " + shlex.join(args)
    print(f"\n=== stage {stage.name}: {command}" + (f" --ckpt_path={resume}" if resume else ""))
    record.update({"status": "running", "command": command, "resumed_from": resume})
    manifest.save()
    started = time.time() - (record.get("wall_time_s", 0.0) if resume else 0.0)
    cli = build_cli(args, run=False)
    tracker = tracking.start_stage(pipeline, stage, manifest, cli)
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=resume)
    except SIGTERMException:
        # Lightning stops the fit cleanly on SIGTERM and would exit with status 0.
        raise SystemExit(f"stage {stage.name!r} stopped by SIGTERM; run the same command again to "
                         f"resume it from its last checkpoint") from None
    # Read before validate/test: loading the best checkpoint resets the callback's state.
    last = cli.trainer.checkpoint_callback.last_model_path
    best = cli.trainer.checkpoint_callback.best_model_path or last
    selection = [c for c in cli.trainer.callbacks if isinstance(c, ModalitySelection)]
    if selection and selection[-1].selected_path:
        best = selection[-1].selected_path
    metrics = {
        "val": _metrics(cli.trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path=best)),
        "test": _metrics(cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best)),
    }
    record.update({
        "status": "done",
        "selection": selection[-1].record if selection else None,
        "config": str(Path(cli.trainer.log_dir or pipeline.output_dir / stage.name) / "config.yaml"),
        "best_checkpoint": best,
        "last_checkpoint": last,
        "metrics": metrics,
        "predictions": save_predictions(cli, best, pipeline.output_dir / stage.name),
        "wall_time_s": round(time.time() - started, 1),
    })
    if "baselines" not in manifest.data:
        manifest.data["baselines"] = constant_baseline(cli.datamodule)
    manifest.save()
    if tracker:
        tracker.finish(manifest)


def save_predictions(cli, checkpoint: str, folder: Path) -> str | None:
    """Predicts the test split with a checkpoint into ``<folder>/predictions.csv``.

    Args:
        cli (MMSentCLI): The stage's CLI.
        checkpoint (str): The checkpoint to predict with.
        folder (Path): The stage folder.

    Returns:
        str | None: The file, or None when the model predicts no score (a generative
        stage).
    """
    outputs = cli.trainer.predict(cli.model, dataloaders=cli.datamodule.test_dataloader(),
                                  ckpt_path=checkpoint)
    if not outputs or "prediction" not in outputs[0]:
        return None
    path = folder / PREDICTIONS_FILE
    predictions_table(outputs).to_csv(path, index=False)
    return str(path)


def _resume_checkpoint(pipeline: Pipeline, stage: Stage, record: dict) -> str | None:
    last = pipeline.output_dir / stage.name / "checkpoints" / "last.ckpt"
    if record.get("status") == "running" and last.is_file():
        return str(last)
    return None


def _metrics(results: list[dict]) -> dict[str, float]:
    merged = {}
    for result in results:
        merged.update({key.split("/", 1)[1]: float(value) for key, value in result.items() if "/" in key})
    return merged


def constant_baseline(datamodule) -> dict:
    """The test error of predicting the training median, the best constant under L1.

    Args:
        datamodule (MultimodalDataModule): The data of the pipeline.

    Returns:
        dict: ``{"constant": {"MAE": ...}}``.
    """
    import numpy as np

    train = np.asarray(datamodule.split("train")["label"], dtype=float)
    test = np.asarray(datamodule.split("test")["label"], dtype=float)
    return {"constant": {"value": float(np.median(train)),
                         "MAE": float(np.abs(test - np.median(train)).mean())}}


def select_stages(pipeline: Pipeline, manifest: Manifest, start: str | None, only: str | None) -> list[Stage]:
    """The stages to run now, forgetting the records of stages that must run again.

    Args:
        pipeline (Pipeline): The pipeline.
        manifest (Manifest): What has run before.
        start (str | None): ``--from``: rerun this stage and every later one.
        only (str | None): ``--only``: rerun this stage alone.

    Returns:
        list[Stage]: The stages that are not finished, in order.
    """
    names = [s.name for s in pipeline.stages]
    forced: list[str] = []
    if only:
        forced = [pipeline.stage(only).name]
    elif start:
        forced = names[names.index(pipeline.stage(start).name):]
    for name in forced:
        manifest.data["stages"].pop(name, None)
        shutil.rmtree(pipeline.output_dir / name, ignore_errors=True)
    selected = [s for s in pipeline.stages if not manifest.is_done(s.name)]
    if only:
        selected = [s for s in selected if s.name == only]
    for stage in selected:
        for source in stage.checkpoints.values():
            if source not in [s.name for s in selected] and not manifest.is_done(source):
                raise ValueError(f"stage {stage.name!r} needs stage {source!r}, which has not finished")
    return selected


def run(path: str | Path, start: str | None = None, only: str | None = None,
        extra: list[str] | None = None, output_dir: str | None = None,
        use_wandb: bool = True) -> Path:
    """Runs a pipeline file and writes its report.

    Args:
        path (str | Path): The pipeline file.
        start (str | None): Rerun from this stage on.
        only (str | None): Rerun only this stage.
        extra (list[str] | None): CLI arguments added to every stage.
        output_dir (str | None): Overrides the file's ``output_dir``.
        use_wandb (bool): False turns the file's ``wandb:`` section off.

    Returns:
        Path: The output folder (manifest, stage folders, report).
    """
    pipeline = load_pipeline(path)
    if output_dir:
        pipeline.output_dir = Path(output_dir)
    if not use_wandb:
        pipeline.wandb.enabled = False
    manifest = Manifest(pipeline.output_dir / "manifest.json")
    manifest.data["pipeline"] = pipeline.name
    manifest.data.setdefault("group", tracking.new_group(pipeline.name))
    for stage in pipeline.stages:
        if manifest.is_done(stage.name) and not (start or only):
            print(f"=== stage {stage.name}: finished before, skipped")
    for stage in select_stages(pipeline, manifest, start, only):
        run_stage(pipeline, stage, manifest, list(extra or []))
    from mmsent.report import write_report

    write_report(manifest.data, pipeline.output_dir)
    hint = tracking.sync_hint(manifest.data)
    if hint:
        print(hint)
    return pipeline.output_dir


def main(args: list[str] | None = None) -> None:
    """``mmsent pipeline run FILE [--from STAGE | --only STAGE] [--output-dir DIR]
    [--no-wandb] [-- CLI args]``.

    Args:
        args (list[str] | None): Arguments after ``pipeline``.
    """
    parser = argparse.ArgumentParser(prog="mmsent pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    runner = sub.add_parser("run", help="run (or resume) a pipeline file",
                            epilog="after --, arguments added to every stage (e.g. -- --trainer.max_epochs=2)")
    runner.add_argument("file", help="the pipeline YAML, e.g. pipelines/quickstart.yaml")
    group = runner.add_mutually_exclusive_group()
    group.add_argument("--from", dest="start", help="rerun this stage and every later one")
    group.add_argument("--only", help="rerun this stage alone")
    runner.add_argument("--output-dir", help="override the pipeline's output_dir")
    runner.add_argument("--no-wandb", action="store_true",
                        help="ignore the file's wandb section; stages keep their own trainer.logger")
    args = list(sys.argv[1:] if args is None else args)
    cut = args.index("--") if "--" in args else len(args)
    parsed = parser.parse_args(args[:cut])
    run(parsed.file, parsed.start, parsed.only, args[cut + 1:], parsed.output_dir, not parsed.no_wandb)
