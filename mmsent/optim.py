"""Parameter groups with their own learning rate, weight decay and schedule.

Fine-tuning a fused model wants different steps for different parts: a CNN likes a
high, decaying rate, an LSTM and an MLP smaller ones, and the freshly trained fusion
head its own. Groups are named after the modality (or ``fusion``) and configured in
YAML; an optimizer callable from LightningCLI receives the groups.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

GROUP_KEYS = ("lr", "weight_decay", "momentum", "schedule", "betas", "eps", "alpha", "rho", "layer_decay")
SCHEDULES = ("constant", "step", "exponential", "cosine")

# Per option: the least value, whether it is allowed itself, whether the value is a
# whole number, and why a smaller one cannot work.
OPTION_RULES = {"lr": (0, True, False, ": a negative learning rate climbs the loss"),
                "weight_decay": (0, True, False, ": a negative weight decay pushes the weights away from zero")}
SCHEDULE_RULES = {"epochs": (1, True, True, ": the rate decays over this many epochs"),
                  "step_size": (1, True, True, ": the rate decays every this many epochs"),
                  "gamma": (0, False, False, ": the rate is multiplied by it at each decay"),
                  "warmup": (0, True, True, ""), "warmup_steps": (0, True, True, "")}


def build_param_groups(parts: dict[str, nn.Module], settings: dict[str, dict] | None,
                       optional: tuple[str, ...] = ()) -> list[dict]:
    """One optimizer parameter group per named part, trainable parameters only.

    Args:
        parts (dict[str, nn.Module]): Named parts, e.g. ``{"text": ..., "fusion": ...}``.
        settings (dict[str, dict] | None): Per part name, optimizer options for its
            group (``lr``, ``weight_decay``, ``momentum``...), an optional
            ``schedule`` and, for a pretrained transformer, an optional
            ``layer_decay`` (see :func:`_layer_decay_groups`); parts without settings
            use the optimizer's defaults.
        optional (tuple[str, ...]): Names settings may hold although the model lacks
            them (a modality this dataset does not have), so one stage config serves
            datasets with and without video.

    Returns:
        list[dict]: Groups with ``params`` and ``name`` (one per part, or one per
        layer of a part with ``layer_decay``); parts with no trainable parameter are
        left out.

    Raises:
        ValueError: If settings name a part that does not exist or an unknown option.
    """
    settings = {k: v for k, v in (settings or {}).items() if k in parts or k not in optional}
    unknown = set(settings) - set(parts)
    if unknown:
        raise ValueError(f"param_groups: unknown group(s) {sorted(unknown)}; the model has {sorted(parts)}")
    groups = []
    for name, module in parts.items():
        options = dict(settings.get(name, {}))
        bad = set(options) - set(GROUP_KEYS)
        if bad:
            raise ValueError(f"param_groups.{name}: unknown option(s) {sorted(bad)}; allowed {GROUP_KEYS}")
        options = _numeric_options(name, options)
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
    """A part's groups under layer-wise rate decay: its top layer at the part's rate,
    each layer below at ``layer_decay`` times the rate of the one above.

    A pretrained transformer's lower layers hold general features that small steps
    keep; its upper layers adapt most to the task (Howard & Ruder, 2018; Clark et al.,
    2020). The groups are named ``<part>.layer<i>`` (0 the bottom) and keep the part
    under ``part``, whose schedule they share.

    Args:
        name (str): The part's name, for messages and the groups' ``name``.
        module (nn.Module): The part; it must have ``layer_groups()``, its parameters
            from the bottom layer to the top (as :class:`~mmsent.models.TransformerTextEncoder`).
        options (dict): The part's other group options; ``lr`` is required.
        decay (float): The factor between neighbouring layers, in (0, 1].

    Returns:
        list[dict]: One group per layer with a trainable parameter.

    Raises:
        ValueError: If the part has no layers, ``lr`` is missing, or ``decay`` is not in (0, 1].
    """
    key = f"param_groups.{name}.layer_decay"
    if not hasattr(module, "layer_groups"):
        raise ValueError(f"{key}: the {name} part ({type(module).__name__}) has no layers to decay "
                         "the rate over; layer_decay is for pretrained transformers (TransformerTextEncoder)")
    if options.get("lr") is None:
        raise ValueError(f"{key} scales param_groups.{name}.lr, which is not set; set it")
    try:
        decay = float(decay)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a number, got {decay!r}") from None
    if not 0 < decay <= 1:
        raise ValueError(f"{key} must be in (0, 1] (1 leaves every layer at the part's lr), got {decay!r}")
    layers = module.layer_groups()
    groups = []
    for index, params in enumerate(layers):
        params = [p for p in params if p.requires_grad]
        if params:
            rate = options["lr"] * decay ** (len(layers) - 1 - index)
            groups.append({"params": params, "name": f"{name}.layer{index}", "part": name, **options, "lr": rate})
    return groups


def _numeric_options(group: str, options: dict) -> dict:
    """Checks that the numeric options of a group are numbers.

    A value set on the command line (``--model.init_args.param_groups.text.lr=0.01``)
    arrives as a string, since the groups are a free-form dict; it is converted here.

    Args:
        group (str): The group's name, for the message.
        options (dict): Its options.

    Returns:
        dict: The options with numeric strings converted to floats.

    Raises:
        ValueError: If a numeric option is not a number, or a value cannot work
            (:func:`option_problem`: a negative or infinite learning rate or weight
            decay, a schedule over no epoch), naming the key.
    """
    converted = dict(options)
    for key in ("lr", "weight_decay", "momentum", "eps", "alpha", "rho"):
        value = converted.get(key)
        if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
            continue
        try:
            converted[key] = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"param_groups.{group}.{key} must be a number, got {value!r}") from None
    for key in ("lr", "weight_decay"):
        problem = option_problem(key, converted.get(key), options.get(key))
        if problem:
            raise ValueError(f"param_groups.{group}.{key} {problem}")
    schedule = converted.get("schedule")
    for key, value in (schedule.items() if isinstance(schedule, dict) else ()):
        problem = option_problem(key, value, in_schedule=True)
        if problem:
            raise ValueError(f"param_groups.{group}.schedule.{key} {problem}")
    return converted


def option_problem(name: str, value, written=None, in_schedule: bool = False) -> str | None:
    """Why an optimizer or schedule option cannot work, for the values its type allows:
    the one rule behind :func:`build_param_groups` and the command line's checks
    (:func:`mmsent.cli.check_values`).

    Args:
        name (str): The option's name: ``lr``, ``weight_decay``, or, in a schedule,
            ``epochs``, ``step_size``, ``gamma``, ``warmup``, ``warmup_steps``.
        value: Its value; None (unset) and names this function does not know pass.
        written: The value as the user wrote it, for the message; default ``value``.
        in_schedule (bool): Whether the option is one of a ``schedule``'s.

    Returns:
        str | None: What the value must be and what it is ("must be >= 0, got -1"),
        to follow the option's key; None when it can work.
    """
    written = value if written is None else written
    if value is None or isinstance(value, bool):
        return None
    rules = SCHEDULE_RULES if in_schedule else OPTION_RULES
    if name not in rules:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return f"must be a number, got {written!r}"
    if not math.isfinite(number):
        return f"must be a finite number, got {written!r}"
    least, inclusive, whole, why = rules[name]
    bound = f"{'>=' if inclusive else '>'} {least}"
    if whole and not number.is_integer():
        return f"must be a whole number {bound}, got {written!r}"
    if number < least or (number == least and not inclusive):
        return f"must be {bound}, got {written!r}{why}"
    return None


def schedule_factor(schedule: dict | None, steps_per_epoch: int | None = None) -> Callable[[int], float]:
    """A learning-rate multiplier as a function of the epoch, or of the optimizer step.

    Args:
        schedule (dict | None): ``{"name": "constant"}``, ``{"name": "step",
            "step_size": 5, "gamma": 0.5}``, ``{"name": "exponential", "gamma": 0.9}``
            or ``{"name": "cosine", "epochs": 20, "min_factor": 0.0}``, each with an
            optional ``warmup`` (epochs of linear ramp-up) or ``warmup_steps``
            (optimizer steps of linear ramp-up: a pretrained transformer's first
            steps at the full rate can undo its pretraining).
        steps_per_epoch (int | None): Optimizer steps per epoch. Given, the multiplier
            is a function of the step (the scheduler then steps after every batch),
            with the schedule's decay still by epoch; ``warmup_steps`` needs it.

    Returns:
        Callable[[int], float]: The multiplier for epoch ``e`` (0-based), or for step
        ``s`` when ``steps_per_epoch`` is given.

    Raises:
        ValueError: If the name is unknown, or ``warmup_steps`` is set without
            ``steps_per_epoch``.
    """
    schedule = dict(schedule or {"name": "constant"})
    name = schedule.pop("name", "constant")
    warmup = schedule.pop("warmup", 0)
    warmup_steps = schedule.pop("warmup_steps", 0)
    if warmup_steps and not steps_per_epoch:
        raise ValueError("schedule warmup_steps needs the steps per epoch (a per-step scheduler)")
    if name not in SCHEDULES:
        raise ValueError(f"schedule name must be one of {SCHEDULES}, got {name!r}")
    if name == "step":
        step_size, gamma = schedule.get("step_size", 10), schedule.get("gamma", 0.1)

        def decay(epoch: int) -> float:
            return gamma ** (epoch // step_size)
    elif name == "exponential":
        gamma = schedule.get("gamma", 0.9)

        def decay(epoch: int) -> float:
            return gamma**epoch
    elif name == "cosine":
        epochs, floor = schedule.get("epochs", 20), schedule.get("min_factor", 0.0)

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
                        steps_per_epoch: int | None = None) -> LambdaLR:
    """A scheduler applying each group's own schedule, per epoch or per step.

    Args:
        optimizer (Optimizer): Built from :func:`build_param_groups`.
        settings (dict[str, dict] | None): The same settings, read for ``schedule``.
        steps_per_epoch (int | None): Optimizer steps per epoch, for a scheduler that
            steps after every batch (see :func:`has_step_warmup`); None steps per epoch.

    Returns:
        LambdaLR: One multiplier function per group.

    Raises:
        ValueError: If a group's ``schedule.warmup_steps`` is not a whole number >= 0,
            naming the key.
    """
    settings = settings or {}
    factors = []
    for group in optimizer.param_groups:
        part = group.get("part", group.get("name"))
        schedule = dict(settings.get(part, {}).get("schedule") or {"name": "constant"})
        if "warmup_steps" in schedule:
            schedule["warmup_steps"] = _whole_number(schedule["warmup_steps"],
                                                     f"param_groups.{part}.schedule.warmup_steps")
        factors.append(schedule_factor(schedule, steps_per_epoch))
    return LambdaLR(optimizer, factors)


def _whole_number(value, key: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = -1
    if number < 0 or str(number) != str(value).strip():
        raise ValueError(f"{key} must be a whole number of optimizer steps >= 0, got {value!r}")
    return number


def has_schedules(settings: dict[str, dict] | None) -> bool:
    """bool: Whether any group setting names a schedule."""
    return any("schedule" in options for options in (settings or {}).values())


def has_step_warmup(settings: dict[str, dict] | None) -> bool:
    """bool: Whether any group's schedule warms up by optimizer steps (``warmup_steps``),
    which needs a scheduler that steps after every batch."""
    return any((options.get("schedule") or {}).get("warmup_steps") for options in (settings or {}).values())
