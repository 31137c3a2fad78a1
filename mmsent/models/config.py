"""What a module was built with, as plain data, and building it again from that.

A module records its constructor's arguments in ``self.config`` (with
:func:`init_args`); a checkpoint stores them next to the weights as
``{"class_path": ..., "init_args": ...}`` (:func:`module_config`), the shape a
LightningCLI config gives a class, so a later stage rebuilds the module without
being told its configuration again (:func:`build_module`).

Each network also saves and loads itself alone in the Hugging Face layout
(``save_pretrained(folder)``, ``from_pretrained(folder or Hub name)``: a
``config.json`` of its init arguments and a ``model.safetensors``) through
:class:`HubMixin`.
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path

from huggingface_hub import PyTorchModelHubMixin
from torch import nn


class HubMixin(PyTorchModelHubMixin, library_name="mmsent", tags=["mmsent"]):
    """``save_pretrained``/``from_pretrained``/``push_to_hub`` for an ``nn.Module``.

    The saved ``config.json`` holds the module's JSON-able init arguments, which is
    what its class needs to be built again, in the order the module was given them
    (a fusion module concatenates its modalities in its ``input_dims`` order); the
    weights go to ``model.safetensors``.
    """

    def _save_pretrained(self, save_directory: Path) -> None:
        super()._save_pretrained(save_directory)
        # huggingface_hub would write the config with sorted keys, reordering input_dims.
        (Path(save_directory) / "config.json").write_text(json.dumps(self._hub_mixin_config, indent=2))


def init_args(frame_locals: dict) -> dict:
    """A constructor's arguments as plain data, for ``self.config``.

    Args:
        frame_locals (dict): ``locals()`` taken in ``__init__`` before any other
            local is assigned; ``**kwargs`` are merged in, tuples become lists.

    Returns:
        dict: Argument name -> value.
    """
    args = {k: v for k, v in frame_locals.items() if k not in ("self", "__class__", "kwargs")}
    args.update(frame_locals.get("kwargs") or {})
    return {k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}


def class_path(module: nn.Module) -> str:
    """str: The importable name of a module's class, e.g. ``mmsent.models.text.TextLSTMEncoder``."""
    return f"{type(module).__module__}.{type(module).__qualname__}"


def module_config(module: nn.Module, leave_out: tuple[str, ...] = ()) -> dict | None:
    """How to build a module again: its class path and its recorded init arguments.

    Args:
        module (nn.Module): A module that records its arguments in ``config``.
        leave_out (tuple[str, ...]): Arguments given at build time instead (e.g. the
            ``input_dim`` that the data decides).

    Returns:
        dict | None: ``{"class_path": ..., "init_args": ...}``, or None for a module
        that records nothing.
    """
    recorded = getattr(module, "config", None)
    if not isinstance(recorded, dict):
        return None
    return {"class_path": class_path(module),
            "init_args": {k: v for k, v in recorded.items() if k not in leave_out}}


def matches_record(config: dict, recorded: dict, module_class: type) -> bool:
    """Whether a module's :func:`module_config` matches one recorded earlier.

    A record written before an argument existed lacks it; it matches a module that
    holds that argument at its default, which builds the same module the record did.

    Args:
        config (dict): The module's ``{"class_path": ..., "init_args": ...}``.
        recorded (dict): The recorded one.
        module_class (type): The module's class, whose signature gives the defaults.

    Returns:
        bool: Whether both name the same class with the same arguments.
    """
    if config["class_path"] != recorded["class_path"]:
        return False
    params = inspect.signature(module_class).parameters
    defaults = {n: v for n, v in config["init_args"].items() if n in params and params[n].default == v}
    return config["init_args"] == {**defaults, **recorded["init_args"]}


def build_module(config: dict, *args, what: str = "config") -> nn.Module:
    """Builds a module from :func:`module_config`'s record.

    Args:
        config (dict): ``{"class_path": ..., "init_args": ...}``.
        *args: Positional arguments given at build time (e.g. ``input_dim``).
        what (str): Where the record comes from, for messages.

    Returns:
        nn.Module: The module, freshly initialized.

    Raises:
        ValueError: If the class cannot be imported or is not an ``nn.Module``.
    """
    module_name, _, name = config["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"{what}: cannot import {config['class_path']!r}: {error}") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"{what}: {config['class_path']!r} is not an nn.Module class")  # noqa: TRY004
    return cls(*args, **config["init_args"])
