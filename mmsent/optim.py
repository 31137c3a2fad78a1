"""Parameter groups with their own learning rate, weight decay and schedule.

Fine-tuning a fused model wants different steps for different parts (a CNN a high,
decaying rate, an LSTM smaller ones); groups are named after the modality or ``fusion``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, is_dataclass
from typing import Literal

from jsonargparse import ArgumentError, ArgumentParser
from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt, restricted_number_type
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from mmsent.errors import check_choice

ScheduleName = Literal["constant", "step", "exponential", "cosine"]
# A negative learning rate climbs the loss; a negative weight decay pushes the weights away from zero.
FiniteNonNegativeFloat = restricted_number_type("FiniteNonNegativeFloat", float, [(">=", 0), ("<", math.inf)])
LayerDecay = restricted_number_type("LayerDecay", float, [(">", 0), ("<=", 1)])


@dataclass
class Schedule:
    """A part's learning-rate schedule (:func:`schedule_factor`); every key is optional.

    Attributes:
        name: ``constant`` (the default), ``step``, ``exponential`` or ``cosine``.
        epochs: The cosine's length; default the trainer's ``max_epochs``.
        min_factor: The cosine's floor, as a fraction of the rate (default 0).
        step_size: ``step``: epochs between decays (default 10).
        gamma: ``step`` and ``exponential``: the factor of each decay.
        warmup: Epochs of linear ramp-up.
        warmup_steps: Optimizer steps of linear ramp-up.
    """

    name: ScheduleName | None = None
    epochs: PositiveInt | None = None
    min_factor: float | None = None
    step_size: PositiveInt | None = None
    gamma: PositiveFloat | None = None
    warmup: NonNegativeInt | None = None
    warmup_steps: NonNegativeInt | None = None


@dataclass
class ParamGroup:
    """One part's optimizer settings; every key is optional (unset: the optimizer's own).

    Attributes:
        lr: The learning rate, a finite number >= 0.
        weight_decay: A finite number >= 0.
        momentum, betas, eps, alpha, rho: Passed to the optimizer as they are.
        schedule: The part's learning-rate schedule.
        layer_decay: For a pretrained transformer, in (0, 1] (:func:`_layer_decay_groups`).
    """

    lr: FiniteNonNegativeFloat | None = None
    weight_decay: FiniteNonNegativeFloat | None = None
    momentum: float | None = None
    betas: tuple[float, float] | None = None
    eps: float | None = None
    alpha: float | None = None
    rho: float | None = None
    schedule: Schedule | None = None
    layer_decay: LayerDecay | None = None


def plain_groups(settings: dict[str, ParamGroup | dict] | None) -> dict[str, dict] | None:
    """Parameter group settings as plain dicts of the keys set, as checkpoints record them.

    Args:
        settings (dict[str, ParamGroup | dict] | None): Per part, a :class:`ParamGroup`
            or a dict of its keys.

    Returns:
        dict[str, dict] | None: Per part, its set keys with plain numbers.

    Raises:
        ValueError: If a dict does not fit :class:`ParamGroup`, naming the group and key.
    """
    if settings is None:
        return None
    return {name: _plain(asdict(group if is_dataclass(group) else _parsed(name, group)))
            for name, group in settings.items()}


def _parsed(name: str, group: dict) -> ParamGroup:
    # A dict from Python or a checkpoint is checked as the command line checks its YAML.
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument(f"--{name}", type=ParamGroup)
    try:
        return parser.instantiate(parser.parse_object({name: group}))[name]
    except ArgumentError as error:
        raise ValueError(f"param_groups: {' '.join(str(error).split())}") from None


def _plain(value):
    # jsonargparse's checked numbers are subclasses of int and float, which checkpoints
    # loaded with weights_only cannot hold.
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items() if item is not None}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (float if isinstance(value, float) else int)(value)
    return value


def build_param_groups(parts: dict[str, nn.Module], settings: dict[str, ParamGroup | dict] | None,
                       optional: tuple[str, ...] = ()) -> list[dict]:
    """One optimizer parameter group per named part, trainable parameters only.

    Args:
        parts (dict[str, nn.Module]): Named parts, e.g. ``{"text": ..., "fusion": ...}``.
        settings (dict[str, ParamGroup | dict] | None): Per part name, its group's
            options; parts without settings use the optimizer's defaults.
        optional (tuple[str, ...]): Names settings may hold although the model lacks
            them (a modality this dataset does not have).

    Returns:
        list[dict]: Groups with ``params`` and ``name``, one per part (or per layer with
        ``layer_decay``); parts with no trainable parameter are left out.

    Raises:
        ValueError: If settings name a part that does not exist or an unknown option.
    """
    settings = {k: v for k, v in (plain_groups(settings) or {}).items() if k in parts or k not in optional}
    unknown = set(settings) - set(parts)
    if unknown:
        raise ValueError(f"param_groups: unknown group(s) {sorted(unknown)}; the model has {sorted(parts)}")
    groups = []
    for name, module in parts.items():
        options = dict(settings.get(name, {}))
        options.pop("schedule", None)
        decay = options.pop("layer_decay", None)
        if decay is not None:
            groups.extend(_layer_decay_groups(name, module, options, decay))
            continue
        params = [p for p in module.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "name": name, **options})
    return groups


def _layer_decay_groups(name: str, module: nn.Module, options: dict, decay: float) -> list[dict]:
    """Groups ``<part>.layer<i>``: the top at the part's ``lr``, each lower ``decay`` times less.

    Lower transformer layers hold general features that small steps keep (Howard & Ruder,
    2018; Clark et al., 2020). ``module`` must have ``layer_groups()``, bottom to top.
    """
    key = f"param_groups.{name}.layer_decay"
    if not hasattr(module, "layer_groups"):
        raise ValueError(f"{key}: the {name} part ({type(module).__name__}) has no layers to decay "
                         "the rate over; layer_decay is for pretrained transformers (TransformerTextEncoder)")
    if options.get("lr") is None:
        raise ValueError(f"{key} scales param_groups.{name}.lr, which is not set; set it")
    layers = module.layer_groups()
    groups = []
    for index, params in enumerate(layers):
        params = [p for p in params if p.requires_grad]
        if params:
            rate = options["lr"] * decay ** (len(layers) - 1 - index)
            groups.append({"params": params, "name": f"{name}.layer{index}", "part": name, **options, "lr": rate})
    return groups


def schedule_factor(schedule: dict | None, steps_per_epoch: int | None = None,
                    max_epochs: int | None = None) -> Callable[[int], float]:
    """A learning-rate multiplier as a function of the epoch, or of the optimizer step.

    Args:
        schedule (dict | None): A :class:`Schedule` as a dict, e.g. ``{"name": "step",
            "step_size": 5, "gamma": 0.5}``; ``warmup_steps`` matters for a pretrained
            transformer, whose first full-rate steps can undo its pretraining.
        steps_per_epoch (int | None): Given, the multiplier is a function of the step
            (decay still by epoch); ``warmup_steps`` needs it.
        max_epochs (int | None): A cosine's length when the schedule sets no ``epochs``.

    Returns:
        Callable[[int], float]: The multiplier for epoch ``e`` (0-based), or step ``s``.

    Raises:
        ValueError: If the name is unknown, ``warmup_steps`` lacks ``steps_per_epoch``,
            or a cosine has no length.
    """
    schedule = dict(schedule or {"name": "constant"})
    name = schedule.pop("name", "constant")
    warmup = schedule.pop("warmup", 0)
    warmup_steps = schedule.pop("warmup_steps", 0)
    if warmup_steps and not steps_per_epoch:
        raise ValueError("schedule warmup_steps needs the steps per epoch (a per-step scheduler)")
    check_choice("schedule name", name, ScheduleName)
    if name == "step":
        step_size, gamma = schedule.get("step_size", 10), schedule.get("gamma", 0.1)

        def decay(epoch: int) -> float:
            return gamma ** (epoch // step_size)
    elif name == "exponential":
        gamma = schedule.get("gamma", 0.9)

        def decay(epoch: int) -> float:
            return gamma**epoch
    elif name == "cosine":
        epochs, floor = schedule.get("epochs", max_epochs), schedule.get("min_factor", 0.0)
        if epochs is None:
            raise ValueError("a cosine schedule without epochs runs over the trainer's max_epochs, "
                             "which is unbounded; set the schedule's epochs")

        def decay(epoch: int) -> float:
            progress = min(epoch, epochs) / max(epochs, 1)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    else:

        def decay(epoch: int) -> float:
            return 1.0

    def factor(epoch: int) -> float:
        ramp = min(1.0, (epoch + 1) / warmup) if warmup else 1.0
        return ramp * decay(epoch)

    if not steps_per_epoch:
        return factor

    def per_step(step: int) -> float:
        ramp = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
        return ramp * factor(step // steps_per_epoch)

    return per_step


def per_group_scheduler(optimizer: Optimizer, settings: dict[str, dict] | None,
                        steps_per_epoch: int | None = None, max_epochs: int | None = None) -> LambdaLR:
    """A scheduler applying each group's own schedule, per epoch or per step.

    Args:
        optimizer (Optimizer): Built from :func:`build_param_groups`.
        settings (dict[str, dict] | None): The same settings, read for ``schedule``.
        steps_per_epoch (int | None): Steps per epoch for a per-batch scheduler; None: per epoch.
        max_epochs (int | None): The default length of a cosine schedule.

    Returns:
        LambdaLR: One multiplier function per group.
    """
    settings = settings or {}
    factors = []
    for group in optimizer.param_groups:
        part = group.get("part", group.get("name"))
        schedule = settings.get(part, {}).get("schedule")
        factors.append(schedule_factor(schedule, steps_per_epoch, max_epochs))
    return LambdaLR(optimizer, factors)


def has_schedules(settings: dict[str, dict] | None) -> bool:
    """bool: Whether any group setting names a schedule."""
    return any("schedule" in options for options in (settings or {}).values())


def has_step_warmup(settings: dict[str, dict] | None) -> bool:
    """bool: Whether any group's schedule has ``warmup_steps`` (a per-batch scheduler)."""
    return any((options.get("schedule") or {}).get("warmup_steps") for options in (settings or {}).values())
