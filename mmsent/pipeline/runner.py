"""Running a pipeline: the stages in order, each through the same CLI.

Each stage is a stack of LightningCLI config files. The runner hands every stage the
best checkpoints of the stages it names (as init arguments, never ``--ckpt_path``),
records each stage in ``manifest.json`` as it goes, and writes the report at the
end. A rerun skips finished stages and resumes an interrupted one from its last
checkpoint. With a ``wandb:`` section, every stage is also a W&B run in the pipeline
run's group (see :mod:`mmsent.pipeline.tracking`).

A stage may train on several processes (``trainer.strategy=ddp``,
``trainer.devices``): the same command then runs in each (:mod:`mmsent.pipeline.ranks`).
The main process does all of the above; the others join the multi-process stages
only (:func:`follow`) and write nothing of the pipeline's own.
"""

from __future__ import annotations

import pickle
import shlex
import shutil
import time
from pathlib import Path

import pandas as pd
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mmsent.callbacks import ModalitySelection
from mmsent.cli import MMSentCLI, build_cli, check_config
from mmsent.errors import ConfigError, user_error
from mmsent.pipeline import ranks, tracking
from mmsent.pipeline.figures import PREDICTIONS_FILE, predictions_table
from mmsent.pipeline.lock import RunLock
from mmsent.pipeline.manifest import Manifest
from mmsent.pipeline.report import write_report
from mmsent.pipeline.spec import Pipeline, Stage, load_pipeline
from mmsent.tasks.checkpoint_io import load_weights_only


def stage_arguments(pipeline: Pipeline, stage: Stage, manifest: Manifest | None, extra: list[str]) -> list[str]:
    """The CLI arguments of one stage (without the subcommand).

    Args:
        pipeline (Pipeline): The pipeline.
        stage (Stage): The stage.
        manifest (Manifest | None): Where earlier stages' checkpoints are recorded;
            None names each handed-on checkpoint by a placeholder, to check the
            configuration before those stages have run.
        extra (list[str]): Arguments from the command line, added last.

    Returns:
        list[str]: ``-c`` files, handed-on checkpoints, the stage and checkpoint folders,
        then overrides.
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
    """Runs one stage in the main process (:func:`fit_and_score`), recording
    everything in the manifest (and in the stage's W&B run, when W&B is on).

    A multi-process stage is first announced to the other processes, once they exist
    (:func:`mmsent.pipeline.ranks.announce_stage`, :func:`follow`).

    Args:
        pipeline (Pipeline): The pipeline.
        stage (Stage): The stage to run.
        manifest (Manifest): Updated as the stage progresses.
        extra (list[str]): Arguments from the command line.
    """
    args = stage_arguments(pipeline, stage, manifest, extra)
    resume = resume_checkpoint(pipeline, stage, manifest.stage(stage.name))
    command = "mmsent fit " + shlex.join(args)
    print(f"\n=== stage {stage.name}: {command}" + (f" --ckpt_path={resume}" if resume else ""))
    started = time.time() - manifest.start_stage(stage.name, command, resume)
    cli = build_cli(args, run=False)
    if cli.trainer.world_size > 1:
        ranks.announce_stage(stage.name, cli.trainer.world_size, resume)
    tracker = tracking.start_stage(pipeline, stage, manifest, cli)
    if tracker:
        manifest.track_stage(stage.name, **tracker.record)
    results = fit_and_score(cli, stage, resume, pipeline.output_dir / stage.name)
    manifest.finish_stage(stage.name, **results, wall_time_s=round(time.time() - started, 1))
    if tracker:
        tracker.finish(manifest)


def fit_and_score(cli: MMSentCLI, stage: Stage, resume: str | None, folder: Path) -> dict:
    """Fits one stage (resuming it if it was interrupted), then validates, tests and
    predicts the test split with the checkpoint it hands on; every process of a
    multi-process stage calls this alike.

    The checkpoint handed on is the one :class:`mmsent.callbacks.ModalitySelection`
    selected, when the stage has that callback and it wrote one, else the best
    validation checkpoint.

    Args:
        cli (MMSentCLI): The stage's CLI, built but not run.
        stage (Stage): The stage.
        resume (str | None): The checkpoint to resume the fit from.
        folder (Path): The stage folder.

    Returns:
        dict: ``selection``, ``config``, ``best_checkpoint``, ``last_checkpoint``,
        ``metrics`` (``val`` and ``test``) and ``predictions``, as the manifest
        records them.

    Raises:
        SystemExit: When the fit was stopped by SIGTERM, which Lightning ends cleanly.
    """
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=resume)
    except SIGTERMException:
        # Lightning stops the fit cleanly on SIGTERM and would exit with status 0.
        raise SystemExit(f"stage {stage.name!r} stopped by SIGTERM; run the same command again to "
                         f"resume it from its last checkpoint") from None
    # Every process reads the checkpoints the main one wrote.
    cli.trainer.strategy.barrier("mmsent.pipeline: checkpoints written")
    # Read before validate/test: loading the best checkpoint resets the callback's state.
    last = cli.trainer.checkpoint_callback.last_model_path
    best = selected_checkpoint(cli) or cli.trainer.checkpoint_callback.best_model_path or last
    metrics = {
        "val": flat_metrics(cli.trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path=best)),
        "test": flat_metrics(cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best)),
    }
    selection = [c.record for c in cli.trainer.callbacks if isinstance(c, ModalitySelection)]
    # trainer.log_dir is a collective call on several processes.
    config = str(Path(cli.trainer.log_dir or folder) / "config.yaml")
    return {"selection": selection[-1] if selection else None, "config": config, "best_checkpoint": best,
            "last_checkpoint": last, "metrics": metrics, "predictions": save_predictions(cli, best, folder)}


def follow(pipeline: Pipeline, start: str | None, only: str | None, extra: list[str]) -> None:
    """Runs the multi-process stages in a process other than the main one, writing
    nothing of the pipeline's own (no lock, manifest, report or W&B run).

    The first is the main process's first selected stage under torchrun or ``srun``;
    under Lightning's launch (which starts this process when the main one fits its
    first multi-process stage), the first selected one not finished yet. After each,
    the main process, having recorded it, names the next one and its resume
    checkpoint, or None at the end; this process then rereads the manifest.

    Args:
        pipeline (Pipeline): The pipeline.
        start (str | None): ``--from``, as the main process got it.
        only (str | None): ``--only``, as the main process got it.
        extra (list[str]): Arguments from the command line.
    """
    manifest = Manifest(pipeline.output_dir / "manifest.json")
    stages, forced = select_stages(pipeline, manifest, start, only)
    if ranks.launched_processes() > 1:
        check_stages(pipeline, stages, extra)
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
        fit_and_score(cli, stage, resume, pipeline.output_dir / name)
        announced = ranks.share_from_main(None)


def selected_checkpoint(cli: MMSentCLI) -> str | None:
    """The checkpoint the stage's (last) :class:`mmsent.callbacks.ModalitySelection`
    wrote its selected model to.

    Args:
        cli (MMSentCLI): The stage's CLI, after fitting.

    Returns:
        str | None: The selected model's file (``selected_path``), or None without a
        selection.
    """
    selections = [c for c in cli.trainer.callbacks if isinstance(c, ModalitySelection)]
    return getattr(selections[-1], "selected_path", None) if selections else None


def save_predictions(cli: MMSentCLI, checkpoint: str, folder: Path) -> str | None:
    """Predicts the test split with a checkpoint into ``<folder>/predictions.csv``.

    On several processes each predicts its share; the main process writes them all,
    in the split's order.

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
        table.to_csv(path, index=False)
    return str(path)


def resume_checkpoint(pipeline: Pipeline, stage: Stage, record: dict) -> str | None:
    """The checkpoint to resume an interrupted or failed stage's fit from.

    That is ``last.ckpt``; when it is unreadable (a write cut short by a full disk
    before checkpoints were written atomically, or a damaged file), the newest
    readable checkpoint of the stage, saying so. A file holding more than tensors and
    plain data is refused, never skipped over.

    Args:
        pipeline (Pipeline): The pipeline.
        stage (Stage): The stage.
        record (dict): The stage's manifest record.

    Returns:
        str | None: The checkpoint, or None for a stage to start afresh.

    Raises:
        ConfigError: If a checkpoint of the stage is refused (not tensors and plain
            data), naming the file.
    """
    if record.get("status") not in ("running", "failed"):
        return None
    folder = pipeline.output_dir / stage.name / "checkpoints"
    last = folder / "last.ckpt"
    others = sorted((p for p in folder.glob("*.ckpt") if p.name != last.name),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for candidate in [last, *others] if last.is_file() else others:
        try:
            loaded = load_weights_only(candidate, f"stage {stage.name}: --ckpt_path")
        except ConfigError as error:
            if isinstance(error.__cause__, pickle.UnpicklingError):
                raise  # a file that is not a checkpoint: the user must look at it
            print(f"=== {error}; looking for an older checkpoint")
            continue
        if "loops" not in loaded:
            continue
        if candidate != last:
            print(f"=== stage {stage.name}: resuming from {candidate}, the newest readable checkpoint")
        return str(candidate)
    if others or last.is_file():
        print(f"=== stage {stage.name}: no readable checkpoint to resume from; starting it afresh")
    return None


def flat_metrics(results: list[dict]) -> dict[str, float]:
    """What ``trainer.validate`` or ``trainer.test`` returned, without the split prefix.

    Args:
        results (list[dict]): One dict per dataloader, keys like ``test/MAE``.

    Returns:
        dict[str, float]: E.g. ``{"MAE": ..., "contribution/text": ...}``.
    """
    merged = {}
    for result in results:
        merged.update({key.split("/", 1)[1]: float(value) for key, value in result.items() if "/" in key})
    return merged


def select_stages(pipeline: Pipeline, manifest: Manifest, start: str | None,
                  only: str | None) -> tuple[list[Stage], list[str]]:
    """The stages to run now; nothing is changed, so a run refused later loses nothing.

    Args:
        pipeline (Pipeline): The pipeline.
        manifest (Manifest): What has run before.
        start (str | None): ``--from``: rerun this stage and every later one.
        only (str | None): ``--only``: rerun this stage alone.

    Returns:
        tuple[list[Stage], list[str]]: The stages that are not finished or must run
        again, in order, and the names of the finished ones among them that must run
        again (:func:`forget_stages`).

    Raises:
        ConfigError: If a stage to run needs the checkpoint of a stage that has not
            finished and will not run now.
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
        pipeline (Pipeline): The pipeline.
        manifest (Manifest): Its records.
        names (list[str]): The stages to forget.
    """
    for name in names:
        manifest.forget(name)
        shutil.rmtree(pipeline.output_dir / name, ignore_errors=True)


def run(path: str | Path, start: str | None = None, only: str | None = None,
        extra: list[str] | None = None, output_dir: str | None = None,
        use_wandb: bool = True) -> Path:
    """Runs a pipeline file and writes its report; in a process other than the main
    one of a multi-process run, joins its multi-process stages instead (:func:`follow`).

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
    extra = list(extra or [])
    if not ranks.is_main_process():
        follow(pipeline, start, only, extra)
        return pipeline.output_dir
    resume = shlex.join(["mmsent", "pipeline", "run", str(path)]
                        + (["--output-dir", output_dir] if output_dir else [])
                        + ([] if use_wandb else ["--no-wandb"]) + (["--", *extra] if extra else []))
    with RunLock(pipeline.output_dir):
        manifest = Manifest(pipeline.output_dir / "manifest.json")
        stages, forced = select_stages(pipeline, manifest, start, only)
        check_stages(pipeline, stages, extra)
        for stage in pipeline.stages:
            if manifest.is_done(stage.name) and stage not in stages:
                print(f"=== stage {stage.name}: finished before, skipped")
        manifest.open_run(pipeline.name, tracking.new_group(pipeline.name))
        forget_stages(pipeline, manifest, forced)
        for stage in stages:
            try:
                run_stage(pipeline, stage, manifest, extra)
            except BaseException as error:
                shown = user_error(error)
                manifest.fail_stage(stage.name, f"{type(shown).__name__}: {shown}", resume)
                raise
        ranks.share_from_main(None)  # the other processes, if any, end
        write_report(manifest.data, pipeline.output_dir)
    hint = tracking.sync_hint(manifest.data)
    if hint:
        print(hint)
    return pipeline.output_dir


def check_stages(pipeline: Pipeline, stages: list[Stage], extra: list[str]) -> None:
    """Parses and checks the configuration of every stage to run, before the first
    starts (:func:`mmsent.cli.check_config`), and that their process counts can run
    together (:func:`mmsent.pipeline.ranks.check_process_counts`); handed-on
    checkpoints are placeholders.

    Args:
        pipeline (Pipeline): The pipeline.
        stages (list[Stage]): The stages about to run.
        extra (list[str]): Arguments from the command line.

    Raises:
        ConfigError: Naming the stage and the key at fault.
    """
    counts = {}
    for stage in stages:
        try:
            trainer = check_config(stage_arguments(pipeline, stage, None, extra)).trainer
        except ConfigError as error:
            raise ConfigError(f"stage {stage.name!r} ({', '.join(map(str, stage.configs))}): {error}") from None
        counts[stage.name] = (ranks.configured_processes(trainer), trainer)
    ranks.check_process_counts(counts)
