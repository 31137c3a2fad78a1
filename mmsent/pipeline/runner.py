"""Running a pipeline: the stages in order, each through the same CLI.

A stage gets earlier stages' best checkpoints as init arguments (never ``--ckpt_path``); a
rerun skips finished stages and resumes an interrupted one. Only the main process writes the
pipeline's files. Progress goes to stderr; stdout holds the report's table alone.
"""

from __future__ import annotations

import pickle
import shlex
import shutil
import sys
import time
from pathlib import Path

from jsonargparse import Namespace

from mmsent.cli import build_cli, check_config
from mmsent.data.schema import MODALITIES
from mmsent.errors import ConfigError, user_error
from mmsent.models.weights import read_weights_file
from mmsent.pipeline import ranks, tracking
from mmsent.pipeline.fitting import INTERRUPTED, fit_and_evaluate, stopped
from mmsent.pipeline.lock import RunLock
from mmsent.pipeline.manifest import Manifest
from mmsent.pipeline.modalities import follow_data
from mmsent.pipeline.report import write_report
from mmsent.pipeline.spec import Pipeline, Stage, load_pipeline


def stage_arguments(pipeline: Pipeline, stage: Stage, manifest: Manifest | None, extra: list[str]) -> list[str]:
    """The CLI arguments of one stage (without the subcommand).

    Args:
        pipeline: The pipeline.
        stage: The stage.
        manifest: Where earlier stages' checkpoints are recorded; None puts placeholders for
            them, to check the configuration before those stages have run.
        extra: Arguments from the command line, added last.

    Returns:
        ``-c`` files, handed-on checkpoints, the stage and checkpoint folders, then overrides.
    """
    args = []
    for config in stage.configs:
        args += ["-c", str(config)]
    for key, source in stage.checkpoints.items():
        handed = manifest.stage(source)["best_checkpoint"] if manifest else f"<best checkpoint of {source}>"
        args.append(f"--{key}={handed}")
    args.append(f"--trainer.default_root_dir={pipeline.output_dir / stage.name}")
    # Whatever the logger, checkpoints land where a resumed stage looks for them.
    args.append(f"--checkpoint.dirpath={pipeline.output_dir / stage.name / 'checkpoints'}")
    return args + pipeline.args + stage.args + extra


def run_stage(pipeline: Pipeline, stage: Stage, manifest: Manifest, extra: list[str]) -> None:
    """Runs one stage in the main process, recording it in the manifest (and W&B, when on).

    Args:
        pipeline: The pipeline.
        stage: The stage to run.
        manifest: Updated as the stage progresses.
        extra: Arguments from the command line.
    """
    args = stage_arguments(pipeline, stage, manifest, extra)
    resume = resume_checkpoint(pipeline, stage, manifest.stage(stage.name))
    command = "mmsent fit " + shlex.join(args)
    print(f"\n=== stage {stage.name}: {command}" + (f" --ckpt_path={resume}" if resume else ""), file=sys.stderr)
    started = time.time() - manifest.start_stage(stage.name, command, resume)
    cli = build_cli(args, run=False)
    if cli.trainer.world_size > 1:
        ranks.announce_stage(stage.name, cli.trainer.world_size, resume)
    tracker = tracking.start_stage(pipeline, stage, manifest, cli)
    if tracker:
        manifest.track_stage(stage.name, **tracker.record)
    results = fit_and_evaluate(cli, stage, resume, pipeline.output_dir / stage.name,
                               unimodal_figures(pipeline, stage, manifest))
    manifest.finish_stage(stage.name, **results, wall_time_s=round(time.time() - started, 1))
    if tracker:
        tracker.finish(manifest)


def unimodal_figures(pipeline: Pipeline, stage: Stage, manifest: Manifest) -> dict[str, dict]:
    """Per modality, the validation MAE and best checkpoint of the unimodal stage it builds on.

    The stage is ``model.init_args.unimodal.<modality>``, else ``encoders.<modality>``, also
    through the stage its ``init_checkpoint`` comes from; the selection compares with these.

    Args:
        pipeline: The pipeline.
        stage: The fused stage.
        manifest: Where the earlier stages are recorded.

    Returns:
        ``{modality: {"val_MAE": ..., "checkpoint": ...}}``.
    """
    figures = {}
    init = stage.checkpoints.get("model.init_args.init_checkpoint")
    if init:
        figures.update(unimodal_figures(pipeline, pipeline.stage(init), manifest))
    for modality in MODALITIES:
        source = (stage.checkpoints.get(f"model.init_args.unimodal.{modality}")
                  or stage.checkpoints.get(f"model.init_args.encoders.{modality}"))
        record = manifest.stage(source) if source else {}
        if "MAE" in record.get("metrics", {}).get("val", {}):
            figures[modality] = {"val_MAE": record["metrics"]["val"]["MAE"], "checkpoint": record["best_checkpoint"]}
    return figures


def follow(pipeline: Pipeline, start: str | None, only: str | None, extra: list[str]) -> None:
    """Runs the multi-process stages in a non-main process, writing nothing of the pipeline's own.

    After each stage, the main process names the next one and its resume checkpoint, or None.

    Args:
        pipeline: The pipeline.
        start: ``--from``, as the main process got it.
        only: ``--only``, as the main process got it.
        extra: Arguments from the command line.
    """
    manifest = Manifest(pipeline.output_dir / "manifest.json")
    configs = stage_configs(pipeline, pipeline.stages, extra)
    pipeline, _, start, only = follow_data(pipeline, configs, start, only)
    stages, forced = select_stages(pipeline, manifest, start, only)
    if ranks.launched_processes() > 1:
        check_stages(pipeline, stages, extra, configs)
        # The main process forgets the stages to rerun, so resumes none of them.
        resume = None if not stages or stages[0].name in forced else resume_checkpoint(
            pipeline, stages[0], manifest.stage(stages[0].name))
    else:
        stages = [s for s in stages if not manifest.is_done(s.name)]
        resume = manifest.stage(stages[0].name).get("resumed_from") if stages else None
    announced = (stages[0].name, resume) if stages else None
    while announced:
        name, resume = announced
        manifest = Manifest(pipeline.output_dir / "manifest.json")
        stage = pipeline.stage(name)
        cli = build_cli(stage_arguments(pipeline, stage, manifest, extra), run=False)
        if cli.trainer.world_size == 1:
            raise ConfigError(f"stage {name!r} runs in one process, yet this process was started for it")
        fit_and_evaluate(cli, stage, resume, pipeline.output_dir / name)
        announced = ranks.share_from_main(None)


def resume_checkpoint(pipeline: Pipeline, stage: Stage, record: dict) -> str | None:
    """The checkpoint to resume an interrupted or failed stage's fit from.

    That is ``last.ckpt``, else (unreadable: damaged or cut short) the newest readable one,
    saying so. A file holding more than tensors and plain data is refused, never skipped over.

    Args:
        pipeline: The pipeline.
        stage: The stage.
        record: The stage's manifest record.

    Returns:
        The checkpoint, or None for a stage to start afresh.

    Raises:
        ConfigError: If a checkpoint of the stage is refused, naming the file.
    """
    if record.get("status") not in ("running", "failed"):
        return None
    folder = pipeline.output_dir / stage.name / "checkpoints"
    last = folder / "last.ckpt"
    others = sorted((p for p in folder.glob("*.ckpt") if p.name != last.name),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for candidate in [last, *others] if last.is_file() else others:
        try:
            loaded = read_weights_file(candidate, f"stage {stage.name}: --ckpt_path")
        except ConfigError as error:
            if isinstance(error.__cause__, pickle.UnpicklingError):
                raise  # a file that is not a checkpoint: the user must look at it
            print(f"=== {error}; looking for an older checkpoint", file=sys.stderr)
            continue
        if "loops" not in loaded:
            continue
        if candidate != last:
            print(f"=== stage {stage.name}: resuming from {candidate}, the newest readable checkpoint", file=sys.stderr)
        return str(candidate)
    if others or last.is_file():
        print(f"=== stage {stage.name}: no readable checkpoint to resume from; starting it afresh", file=sys.stderr)
    return None


def select_stages(pipeline: Pipeline, manifest: Manifest, start: str | None,
                  only: str | None) -> tuple[list[Stage], list[str]]:
    """The stages to run now; nothing is changed, so a run refused later loses nothing.

    Args:
        pipeline: The pipeline.
        manifest: What has run before.
        start: ``--from``: rerun this stage and every later one.
        only: ``--only``: rerun this stage alone.

    Returns:
        The stages to run, in order, and the names of the finished ones among them.

    Raises:
        ConfigError: If a stage to run needs a stage that has not finished and will not run now.
    """
    names = [s.name for s in pipeline.stages]
    forced: list[str] = []
    if only:
        forced = [pipeline.stage(only).name]
    elif start:
        forced = names[names.index(pipeline.stage(start).name):]
    selected = [s for s in pipeline.stages if s.name in forced or not manifest.is_done(s.name)]
    if only:
        selected = [s for s in selected if s.name == only]
    running = {s.name for s in selected}
    for stage in selected:
        for source in stage.checkpoints.values():
            if source not in running and (source in forced or not manifest.is_done(source)):
                raise ConfigError(f"stage {stage.name!r} needs stage {source!r}, which has not finished")
    return selected, forced


def forget_stages(pipeline: Pipeline, manifest: Manifest, names: list[str]) -> None:
    """Drops the records and folders of finished stages that are to run again.

    Args:
        pipeline: The pipeline.
        manifest: Its records.
        names: The stages to forget.
    """
    for name in names:
        manifest.forget(name)
        shutil.rmtree(pipeline.output_dir / name, ignore_errors=True)


def run(path: str | Path, start: str | None = None, only: str | None = None,
        extra: list[str] | None = None, output_dir: str | None = None,
        use_wandb: bool = True) -> Path:
    """Runs a pipeline file and writes its report; a non-main process joins its stages instead.

    Args:
        path: The pipeline file.
        start: Rerun from this stage on.
        only: Rerun only this stage.
        extra: CLI arguments added to every stage.
        output_dir: Overrides the file's ``output_dir``.
        use_wandb: False turns the file's ``wandb:`` section off.

    Returns:
        The output folder (manifest, stage folders, report).
    """
    pipeline = load_pipeline(path)
    if output_dir:
        pipeline.output_dir = Path(output_dir)
    if not use_wandb:
        pipeline.wandb.enabled = False
    extra = list(extra or [])
    if not ranks.is_main_process():
        follow(pipeline, start, only, extra)
        return pipeline.output_dir
    resume = shlex.join(["mmsent", "pipeline", "run", str(path)]
                        + (["--output-dir", output_dir] if output_dir else [])
                        + ([] if use_wandb else ["--no-wandb"]) + (["--", *extra] if extra else []))
    with RunLock(pipeline.output_dir):
        manifest = Manifest(pipeline.output_dir / "manifest.json")
        configs = stage_configs(pipeline, pipeline.stages, extra)
        pipeline, skipped, start, only = follow_data(pipeline, configs, start, only)
        stages, forced = select_stages(pipeline, manifest, start, only)
        check_stages(pipeline, stages, extra, configs)
        for stage in pipeline.stages:
            if manifest.is_done(stage.name) and stage not in stages:
                print(f"=== stage {stage.name}: finished before, skipped", file=sys.stderr)
        manifest.open_run(pipeline.name, tracking.new_group(pipeline.name))
        for name, reason in skipped.items():
            print(f"=== stage {name}: skipped: {reason}", file=sys.stderr)
            manifest.skip_stage(name, reason)
        forget_stages(pipeline, manifest, forced)
        for stage in stages:
            try:
                try:
                    run_stage(pipeline, stage, manifest, extra)
                except SystemExit as error:
                    raise stage_exit(stage, error) from None
            except BaseException as error:
                shown = user_error(error)
                # Ctrl+C outside a fit (Lightning turns one inside into SystemExit) has no message.
                reason = (stopped(stage, INTERRUPTED) if isinstance(shown, KeyboardInterrupt)
                          else f"{type(shown).__name__}: {shown}")
                manifest.fail_stage(stage.name, reason, resume)
                raise
        ranks.share_from_main(None)  # the other processes, if any, end
        write_report(manifest.data, pipeline.output_dir)
    hint = tracking.sync_hint(manifest.data)
    if hint:
        print(hint, file=sys.stderr)
    return pipeline.output_dir


def stage_configs(pipeline: Pipeline, stages: list[Stage], extra: list[str]) -> dict[str, Namespace]:
    """Parses and checks each stage's configuration, with placeholders for handed-on checkpoints.

    Args:
        pipeline: The pipeline.
        stages: The stages.
        extra: Arguments from the command line.

    Returns:
        Per stage, its parsed configuration.

    Raises:
        ConfigError: Naming the stage and the key at fault.
    """
    configs = {}
    for stage in stages:
        where = f"stage {stage.name!r} ({', '.join(map(str, stage.configs))})"
        try:
            configs[stage.name] = check_config(stage_arguments(pipeline, stage, None, extra))
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
        except SystemExit as error:
            raise stage_exit(stage, error, where) from None
        except Exception as error:
            shown = user_error(error)
            raise ConfigError(f"{where}: parsing its config failed: {type(shown).__name__}: {shown}") from error
    return configs


def stage_exit(stage: Stage, error: SystemExit, where: str | None = None) -> BaseException:
    """The error to raise for a stage whose config or run called ``sys.exit``.

    Something a stage's config imports may exit, even with status 0; the pipeline must then not
    exit as if the stage had finished.

    Args:
        stage: The stage.
        error: What was raised.
        where: The stage and its files, for the message.

    Returns:
        ``error`` itself when it carries a message (mmsent's own); else a ConfigError naming
            the stage and the status.
    """
    if isinstance(error.code, str):
        return error
    return ConfigError(f"{where or f'stage {stage.name!r}'}: exited (status {error.code or 0}) before the stage "
                       f"finished, while its config was parsed or run; a class_path it names may run code "
                       f"when imported")


def check_stages(pipeline: Pipeline, stages: list[Stage], extra: list[str],
                 configs: dict[str, Namespace] | None = None) -> None:
    """Checks every stage to run before the first starts: its config and the process counts.

    Args:
        pipeline: The pipeline.
        stages: The stages about to run.
        extra: Arguments from the command line.
        configs: Configurations parsed before; the others are parsed here.

    Raises:
        ConfigError: Naming the stage and the key at fault.
    """
    configs = dict(configs or {})
    configs.update(stage_configs(pipeline, [s for s in stages if s.name not in configs], extra))
    counts = {}
    for stage in stages:
        trainer = configs[stage.name].trainer
        counts[stage.name] = (ranks.configured_processes(trainer), trainer)
    ranks.check_process_counts(counts)
