"""The processes of a pipeline run whose stages train on several processes.

The same ``mmsent pipeline run`` command runs in every process: Lightning's ``ddp``
starts the others by running it again when the first multi-process stage fits, and
torchrun or SLURM's ``srun`` start them all at once. The main process (rank 0) runs
the pipeline as one process would; the others only join the multi-process stages,
each told by the main process which stage comes next (:func:`share_from_main`).
Everything here reads the environment when called, since Lightning's launch changes
the main process's environment.
"""

from __future__ import annotations

import os
from typing import Any

import torch.distributed as dist
from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

from mmsent.errors import ConfigError


def is_main_process() -> bool:
    """Whether this is the process that writes the pipeline's files (global rank 0).

    Returns:
        bool: True without any launcher, and in the process Lightning's launch starts
        from; False in the processes it starts and in torchrun's or srun's others.
    """
    if TorchElasticEnvironment.detect():
        return int(os.environ.get("RANK", "0")) == 0
    if launched_processes() > 1:
        return int(os.environ.get("SLURM_PROCID", "0")) == 0
    # One SLURM task, or none: Lightning's launch, whose processes inherit SLURM_PROCID.
    return all(int(os.environ.get(key, "0")) == 0 for key in ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK"))


def launched_processes() -> int:
    """How many processes an external launcher (torchrun, SLURM's ``srun``) started
    for this run, each running every stage.

    Returns:
        int: Their number; 1 without such a launcher (one process, or Lightning's own
        launch, which starts the others only for the stages that ask for them).
    """
    if TorchElasticEnvironment.detect():
        return int(os.environ.get("WORLD_SIZE", "1"))
    if SLURMEnvironment.detect():
        return int(os.environ.get("SLURM_NTASKS", "1"))
    return 1


def announce_stage(name: str, processes: int, resume: str | None) -> None:
    """Tells the other processes, once they exist, which multi-process stage the main
    one runs next and the checkpoint it resumes from (:func:`share_from_main`).

    Args:
        name (str): The stage.
        processes (int): How many processes its trainer runs.
        resume (str | None): The checkpoint its fit resumes from.

    Raises:
        ConfigError: If the processes started for an earlier stage are another number.
    """
    started = dist.get_world_size() if dist.is_available() and dist.is_initialized() else processes
    if started != processes:
        raise ConfigError(f"stage {name!r}: its trainer runs {processes} processes, but an earlier stage of "
                          f"this run started {started}; every multi-process stage must run on as many")
    share_from_main((name, resume))


def share_from_main(value: Any) -> Any:
    """The main process's ``value``, in every process of the run (a collective call:
    each must make it, after the process group exists).

    Args:
        value (Any): What to share (picklable); ignored outside the main process.

    Returns:
        Any: The main process's value; ``value`` itself before any process group.
    """
    if not dist.is_available() or not dist.is_initialized():
        return value
    shared = [value]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


def gather(value: Any) -> list[Any]:
    """Every process's ``value``, in rank order (a collective call, as
    :func:`share_from_main`).

    Args:
        value (Any): This process's part (picklable).

    Returns:
        list[Any]: One value per process; ``[value]`` before any process group.
    """
    if not dist.is_available() or not dist.is_initialized():
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def configured_processes(trainer: Any) -> int | None:
    """How many processes a stage's trainer configuration asks for.

    Args:
        trainer (Any): The parsed ``trainer`` section (``devices``, ``num_nodes``).

    Returns:
        int | None: ``devices`` times ``num_nodes``; None when ``devices`` is left to
        Lightning to count (``auto``, ``-1``).
    """
    devices = trainer.get("devices", "auto")
    if isinstance(devices, str):
        devices = devices.strip()
        if devices.isdigit():
            count = int(devices)
        else:
            count = len([d for d in devices.split(",") if d.strip()]) if "," in devices else 0
    elif isinstance(devices, (list, tuple)):
        count = len(devices)
    else:
        count = int(devices)
    return count * int(trainer.get("num_nodes", 1) or 1) if count > 0 else None


def check_process_counts(counts: dict[str, tuple[int | None, Any]]) -> None:
    """Refuses stages whose process counts cannot run together in one pipeline run.

    Under torchrun or ``srun`` every process runs every stage, so each stage must
    train on all of them: a single-process stage would run on each at once. Without
    them, Lightning starts the other processes once, so every multi-process stage
    must ask for the same number.

    Args:
        counts (dict[str, tuple[int | None, Any]]): Per stage, in order, its process
            count (:func:`configured_processes`) and its ``trainer`` section.

    Raises:
        ConfigError: Naming the stage, its ``trainer.devices`` and
            ``trainer.num_nodes``, and what to set.
    """
    launched = launched_processes()
    for name, (count, trainer) in counts.items():
        asked = f"trainer.devices={trainer.get('devices')!r}, trainer.num_nodes={trainer.get('num_nodes')!r}"
        if launched > 1 and count != launched:
            raise ConfigError(
                f"stage {name!r}: its trainer runs {count or 'an unknown number of'} process(es) ({asked}), but "
                f"torchrun or srun started this pipeline on {launched} processes, each running every stage; "
                f"set every stage's trainer.devices and trainer.num_nodes to make {launched} processes (the "
                f"pipeline file's `args:`, or `-- --trainer.strategy=ddp --trainer.devices=N`), or start "
                f"`mmsent pipeline run` without a launcher: Lightning then starts the processes itself")
    several = {name: count for name, (count, _) in counts.items() if count and count > 1}
    if len(set(several.values())) > 1:
        shown = ", ".join(f"{name!r} {count}" for name, count in several.items())
        raise ConfigError(f"stages ask for different numbers of processes ({shown}); Lightning starts the other "
                          f"processes once per pipeline run, so every multi-process stage must run on as many")
