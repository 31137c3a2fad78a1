"""Stages that follow the data: a modality no clip holds has its stages skipped.

So is a stage whose every checkpoint source was skipped; a fused stage fuses what is there.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
from jsonargparse import ArgumentParser, Namespace

from mmsent.data.datamodule import MultimodalDataModule
from mmsent.data.schema import MODALITIES, SPLITS
from mmsent.errors import ConfigError
from mmsent.pipeline.spec import Pipeline


def held_modalities(data: Namespace) -> list[str]:
    """The modalities some clip of a stage's ``data`` holds, in order; prepares it if needed."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(MultimodalDataModule, "data")
    datamodule = parser.instantiate(parser.parse_object({"data": data.as_dict()})).data
    prepared = datamodule.prepared
    held = []
    for modality in prepared.spec.modalities:
        column = f"{modality}_present"
        splits = [prepared.splits[s] for s in SPLITS if s in prepared.splits]
        if any(column not in split.column_names or np.asarray(split[column], dtype=bool).any()
               for split in splits):
            held.append(modality)
    return held


def stage_modality(config: Namespace) -> str | None:
    """The modality a stage trains alone (``model.init_args.modality``), if any."""
    init_args = (config.get("model") or Namespace()).get("init_args") or Namespace()
    modality = init_args.get("modality") if isinstance(init_args, Namespace) else None
    return modality if modality in MODALITIES else None


def absent_stages(pipeline: Pipeline, configs: dict[str, Namespace]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Decides which stages the data leaves nothing to do for.

    Data that cannot be prepared here decides nothing: its stages run and report their error.

    Args:
        pipeline: The pipeline.
        configs: Per stage, its parsed configuration.

    Returns:
        The stages to skip, each with its reason, and per stage the modalities its data lacks.
    """
    held_by_data: dict[str, list[str]] = {}
    lacking: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    for stage in pipeline.stages:
        config = configs[stage.name]
        data = config.get("data")
        key = json.dumps(data.as_dict() if isinstance(data, Namespace) else data, sort_keys=True, default=str)
        if key not in held_by_data:
            try:
                held_by_data[key] = held_modalities(data)
            except Exception:  # noqa: BLE001 - the stage that uses this data reports it
                held_by_data[key] = list(MODALITIES)
        held = held_by_data[key]
        lacking[stage.name] = [m for m in MODALITIES if m not in held]
        modality = stage_modality(config)
        sources = set(stage.checkpoints.values())
        if modality is not None and modality not in held:
            skipped[stage.name] = (f"no clip of its data has {modality} (the data holds "
                                   f"{'+'.join(held) or 'nothing'})")
        elif sources and sources <= set(skipped):
            skipped[stage.name] = f"every stage it builds on was skipped ({', '.join(sorted(sources))})"
    return skipped, lacking


def without_stages(pipeline: Pipeline, skipped: dict[str, str], lacking: dict[str, list[str]],
                   configs: dict[str, Namespace]) -> Pipeline:
    """The pipeline without the skipped stages, nothing handed on from them.

    Args:
        pipeline: The pipeline.
        skipped: From :func:`absent_stages`.
        lacking: From :func:`absent_stages`.
        configs: Per stage, its parsed configuration.

    Returns:
        A copy; an encoder a stage configures for a modality its data lacks is set to null.
    """
    stages = []
    for stage in pipeline.stages:
        if stage.name in skipped:
            continue
        init_args = (configs[stage.name].get("model") or Namespace()).get("init_args") or Namespace()
        unset = [f"--model.init_args.{m}_encoder=null" for m in lacking[stage.name]
                 if isinstance(init_args, Namespace) and init_args.get(f"{m}_encoder") is not None]
        stages.append(replace(stage, checkpoints={k: v for k, v in stage.checkpoints.items() if v not in skipped},
                              args=[*stage.args, *unset]))
    return replace(pipeline, stages=stages)


def follow_data(pipeline: Pipeline, configs: dict[str, Namespace], start: str | None,
                only: str | None) -> tuple[Pipeline, dict[str, str], str | None, str | None]:
    """The pipeline without the stages its data leaves nothing to do for.

    Args:
        pipeline: The pipeline.
        configs: Per stage, its parsed configuration.
        start: ``--from``.
        only: ``--only``.

    Returns:
        The stages that run, the skipped stages with their reasons, ``--from`` and ``--only``.
    """
    skipped, lacking = absent_stages(pipeline, configs)
    start, only = still_selected(pipeline, skipped, start, only)
    return without_stages(pipeline, skipped, lacking, configs), skipped, start, only


def still_selected(pipeline: Pipeline, skipped: dict[str, str], start: str | None,
                   only: str | None) -> tuple[str | None, str | None]:
    """``--from`` and ``--only`` once the skipped stages are left out.

    Args:
        pipeline: The pipeline, skipped stages included.
        skipped: The skipped stages and their reasons.
        start: ``--from``.
        only: ``--only``.

    Returns:
        ``--from`` (moved to the next stage that runs when it names a skipped one), ``--only``.

    Raises:
        ConfigError: If ``--only`` names a skipped stage, or ``--from`` a skipped stage with
            none running after it.
    """
    if only in skipped:
        raise ConfigError(f"stage {only!r} is skipped: {skipped[only]}")
    if start in skipped:
        order = [s.name for s in pipeline.stages]
        following = [name for name in order[order.index(start) + 1:] if name not in skipped]
        if not following:
            raise ConfigError(f"stage {start!r} is skipped ({skipped[start]}) and no stage runs after it")
        start = following[0]
    return start, only
