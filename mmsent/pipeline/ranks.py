"""The processes of a pipeline run whose stages train on several processes.

Lightning's ``ddp`` starts the other processes when the first multi-process stage fits,
torchrun or ``srun`` start all at once. Everything here reads the environment when called,
since Lightning's launch changes it.
"""

from __future__ import annotations

import os
from typing import Any

import torch.distributed as dist
from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

from mmsent.errors import ConfigError


def is_main_process() -> bool:
    """Whether this process writes the pipeline's files (global rank 0; True without a launcher)."""
    if TorchElasticEnvironment.detect():
        return int(os.environ.get("RANK", "0")) == 0
    if launched_processes() > 1:
        return int(os.environ.get("SLURM_PROCID", "0")) == 0
    # One SLURM task, or none: Lightning's launch, whose processes inherit SLURM_PROCID.
    return all(int(os.environ.get(key, "0")) == 0 for key in ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK"))


def launched_processes() -> int:
    """How many processes torchrun or ``srun`` started, each running every stage; else 1."""
    if TorchElasticEnvironment.detect():
        return int(os.environ.get("WORLD_SIZE", "1"))
    if SLURMEnvironment.detect():
        return int(os.environ.get("SLURM_NTASKS", "1"))
    return 1


def announce_stage(name: str, processes: int, resume: str | None) -> None:
    """Tells the other processes which multi-process stage comes next and its resume checkpoint.

    Args:
        name: The stage.
        processes: How many processes its trainer runs.
        resume: The checkpoint its fit resumes from.

    Raises:
        ConfigError: If the processes started for an earlier stage are another number.
    """
    started = dist.get_world_size() if dist.is_available() and dist.is_initialized() else processes
    if started != processes:
        raise ConfigError(f"stage {name!r}: its trainer runs {processes} processes, but an earlier stage of "
                          f"this run started {started}; every multi-process stage must run on as many")
    share_from_main((name, resume))


def share_from_main(value: Any) -> Any:
    """The main process's ``value``, in every process (collective: each process must call it).

    Args:
        value: What to share (picklable); ignored outside the main process.

    Returns:
        The main process's value; ``value`` itself before any process group.
    """
    if not dist.is_available() or not dist.is_initialized():
        return value
    shared = [value]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


def gather(value: Any) -> list[Any]:
    """Every process's ``value``, in rank order (collective, as :func:`share_from_main`).

    Args:
        value: This process's part (picklable).

    Returns:
        One value per process; ``[value]`` before any process group.
    """
    if not dist.is_available() or not dist.is_initialized():
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def configured_processes(trainer: Any) -> int | None:
    """How many processes a stage's trainer configuration asks for.

    Args:
        trainer: The parsed ``trainer`` section.

    Returns:
        ``devices`` times ``num_nodes``; None when Lightning counts the devices (``auto``, ``-1``).
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

    Under torchrun or ``srun`` every process runs every stage, so each stage must train on all
    of them; Lightning starts the other processes once, so multi-process stages must agree.

    Args:
        counts: Per stage, in order, its process count and its ``trainer`` section.

    Raises:
        ConfigError: Naming the stage, its ``trainer.devices`` and ``num_nodes``, and what to set.
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
