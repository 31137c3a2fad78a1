"""What a module was built with, as plain data, and building it again from that.

A network records its constructor's arguments in ``config`` (:class:`HubMixin` records
them as it is built); a checkpoint stores them beside the weights as
``{"class_path": ..., "init_args": ...}`` (:func:`module_config`), so a later stage
rebuilds the module (:func:`build_module`).

A record is data from a file, never code: :func:`build_module` builds only registered
classes (:mod:`mmsent.models.registry`) and refuses any other name before importing
anything. :class:`HubMixin` saves and loads a network alone in the Hugging Face layout,
strictly (:func:`load_strict`).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from mmsent.errors import ConfigError
from mmsent.io import read_json
from mmsent.models.registry import register, registered_class
from mmsent.models.weights import REBUILT_SHA1, add_recorded_sha1, full_state_dict

_DOWNLOAD_ARGUMENTS = ("revision", "cache_dir", "force_download", "local_files_only", "token", "strict",
                       "proxies", "resume_download")
CONFIG_METADATA = "mmsent_config"
"""The key of the weights file's header that holds the config the weights were saved with."""
REBUILT_METADATA = "mmsent_rebuilt"
"""The header key where files written before the SHA-1 entries list the weights left out."""
META_KEY = "mmsent"
"""The checkpoint entry that holds what mmsent records beside the weights."""


class HubMixin(PyTorchModelHubMixin, library_name="mmsent", tags=["mmsent"]):
    """``save_pretrained``/``from_pretrained``/``push_to_hub`` for an ``nn.Module``.

    ``config.json`` holds the init arguments in the order given (a fusion module
    concatenates in its ``input_dims`` order); the weights go to ``model.safetensors``.
    Loading is strict. Every subclass under ``mmsent.models`` is registered.
    """

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__module__.startswith("mmsent.models."):
            register(cls)

    def __new__(cls, *args, **kwargs):
        instance = super().__new__(cls, *args, **kwargs)
        # The mixin leaves out values that are not JSON; the record would then hold the
        # default instead, so those names are kept to be refused when the record is read.
        passed = dict(zip(list(cls._hub_mixin_init_parameters)[1:], args, strict=False)) | kwargs
        instance._unrecorded = sorted(name for name, value in passed.items() if not _is_json(value))
        return instance

    @property
    def config(self) -> dict:
        """dict: The init arguments the module was built with, as ``huggingface_hub``'s
        mixin recorded them (defaults included), in the constructor's order with
        ``**kwargs`` last, tuples as lists.

        Raises:
            ConfigError: If an argument was given a value that is not JSON data.
        """
        return self.recorded_arguments()

    def recorded_arguments(self, leave_out: tuple[str, ...] = ()) -> dict:
        """Returns :attr:`config` without the arguments ``leave_out`` names.

        Raises:
            ConfigError: If an argument kept was given a value that is not JSON data,
                which the record cannot hold.
        """
        unrecorded = [name for name in getattr(self, "_unrecorded", ()) if name not in leave_out]
        if unrecorded:
            raise ConfigError(f"{type(self).__name__}: {', '.join(unrecorded)} cannot be recorded: give "
                              f"JSON data (numbers, strings, lists, mappings), e.g. str() of a path")
        recorded = self._hub_mixin_config or {}
        ordered = {name: recorded[name] for name in self._hub_mixin_init_parameters if name in recorded} | recorded
        return {name: list(value) if isinstance(value, tuple) else value for name, value in ordered.items()
                if name not in leave_out}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> nn.Module:
        """Loads a folder saved by ``save_pretrained`` (or a Hub repository by name).

        Args:
            pretrained_model_name_or_path: The folder or Hub repository id.
            **kwargs: As ``huggingface_hub``'s ``from_pretrained`` takes them.

        Returns:
            The module, in eval mode.

        Raises:
            ConfigError: If a local folder's ``config.json`` is not JSON, naming it.
        """
        config = Path(pretrained_model_name_or_path) / "config.json"
        if config.is_file():
            read_json(config)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, map_location: str = "cpu", **kwargs) -> nn.Module:
        folder = Path(model_id)
        if not folder.is_dir():
            return super()._from_pretrained(model_id=model_id, map_location=map_location, **kwargs)
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise ConfigError(f"{folder}: no model.safetensors")
        model_kwargs = {k: v for k, v in kwargs.items() if k not in _DOWNLOAD_ARGUMENTS}
        check_saved_config(weights, read_json(folder / "config.json"))
        model = cls(**model_kwargs)
        load_strict(model, weights)
        return model.to(map_location).eval()

    @classmethod
    def _load_as_safetensor(cls, model: nn.Module, model_file: str, map_location: str, strict: bool) -> nn.Module:
        # huggingface_hub loads with strict=False by default; a missing tensor would stay random.
        load_strict(model, model_file)
        return model.to(map_location).eval()

    @classmethod
    def _load_as_pickle(cls, model: nn.Module, model_file: str, map_location: str, strict: bool) -> nn.Module:
        raise ConfigError(f"{model_file}: mmsent reads weights from model.safetensors only")

    def _save_pretrained(self, save_directory: Path) -> None:
        save_weights(self, Path(save_directory) / "model.safetensors", self._hub_mixin_config)
        # huggingface_hub would write the config with sorted keys, reordering input_dims.
        (Path(save_directory) / "config.json").write_text(json.dumps(self._hub_mixin_config, indent=2))


def _is_json(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def class_path(module: nn.Module) -> str:
    """str: The importable name of a module's class, e.g. ``mmsent.models.text.TextLSTMEncoder``."""
    return f"{type(module).__module__}.{type(module).__qualname__}"


def module_config(module: nn.Module, leave_out: tuple[str, ...] = ()) -> dict | None:
    """How to build a module again: its class path and its recorded init arguments.

    Args:
        module: A module that records its arguments in ``config``.
        leave_out: Arguments given at build time instead (e.g. ``input_dim``).

    Returns:
        ``{"class_path": ..., "init_args": ...}``, or None for a module recording nothing.
    """
    recorded = getattr(module, "config", None)
    if not isinstance(recorded, dict):
        return None
    return {"class_path": class_path(module),
            "init_args": {k: v for k, v in recorded.items() if k not in leave_out}}


def matches_record(config: dict, recorded: dict, module_class: type) -> bool:
    """Whether a module's :func:`module_config` matches one recorded earlier.

    An argument the record lacks matches when the module holds it at its default.

    Args:
        config: The module's ``{"class_path": ..., "init_args": ...}``.
        recorded: The recorded one.
        module_class: The module's class, whose signature gives the defaults.

    Returns:
        Whether both name the same class with the same arguments.
    """
    if config["class_path"] != recorded["class_path"]:
        return False
    params = inspect.signature(module_class).parameters
    defaults = {n: v for n, v in config["init_args"].items() if n in params and params[n].default == v}
    return config["init_args"] == {**defaults, **recorded["init_args"]}


def build_module(config: dict, *args, what: str = "config") -> nn.Module:
    """Builds a module from :func:`module_config`'s record, of a registered class only.

    Args:
        config: ``{"class_path": ..., "init_args": ...}``.
        *args: Positional arguments given at build time (e.g. ``input_dim``).
        what: Where the record comes from (file and key), for messages.

    Returns:
        The module, freshly initialized.

    Raises:
        ConfigError: If the record is malformed, names an unregistered class (nothing
            is imported) or the class refuses its arguments, naming ``what``.
    """
    if not isinstance(config, dict):
        raise ConfigError(f"{what}: expected {{'class_path': ..., 'init_args': {{...}}}}, got {config!r:.80}")
    module_class = registered_class(config.get("class_path"), f"{what}.class_path")
    arguments = config.get("init_args", {})
    if not isinstance(arguments, dict):
        raise ConfigError(f"{what}.init_args: expected a mapping of argument names, got {arguments!r:.80}")
    try:
        return module_class(*args, **arguments)
    except Exception as error:
        # A class given arguments of the wrong kind fails in its own way; the record is wrong.
        if isinstance(error, ConfigError):
            raise ConfigError(f"{what}: {error}") from error
        raise ConfigError(f"{what}: {module_class.__name__} cannot be built from init_args "
                          f"{json.dumps(arguments, default=repr)[:200]}: {error}") from error


def check_saved_config(path: str | Path, config: object) -> None:
    """Refuses a config other than the one a weights file was saved with, before building.

    Args:
        path: The ``.safetensors`` file; a header without a config is not checked.
        config: The config read from the ``config.json`` beside it.

    Raises:
        ConfigError: If the file is unreadable or records another config, naming the
            first key that differs.
    """
    try:
        with safe_open(str(path), framework="pt") as weights:
            saved = (weights.metadata() or {}).get(CONFIG_METADATA)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ConfigError(f"{path}: not a readable safetensors file ({error})") from error
    if saved is not None and saved != json.dumps(config):
        raise ConfigError(f"{path}: the config beside it differs from the one these weights were saved with"
                          f"{_first_difference(_parsed(saved), config)}; restore it or export again")


def save_weights(module: nn.Module, path: Path, config: object) -> None:
    """Writes a module's weights as ``.safetensors``, each tensor once.

    The header records the config (:func:`check_saved_config`). A frozen table the config
    rebuilds is in the state dict as its SHA-1 only (:func:`~mmsent.models.weights.leave_out_rebuilt`).

    Args:
        module: The module.
        path: The file to write.
        config: The JSON-able config it is built from.
    """
    metadata = {"format": "pt", CONFIG_METADATA: json.dumps(config)}
    save_file({name: tensor.contiguous() for name, tensor in module.state_dict().items()}, str(path),
              metadata=metadata)


def load_strict(module: nn.Module, path: str | Path) -> None:
    """Loads a ``.safetensors`` file into a module, every tensor accounted for.

    A frozen table the module rebuilds from its config may stand in the file as its
    SHA-1, and is then loaded only when the module rebuilds the same one
    (:func:`~mmsent.models.weights.leave_out_rebuilt`).

    Args:
        module (nn.Module): The module, built from its config.
        path (str | Path): The weights file.

    Raises:
        ConfigError: If the file is unreadable, or a tensor is missing, unexpected, of
            another shape or dtype or not finite, or left out but rebuilt otherwise,
            naming the file and the tensors.
    """
    state = read_safetensors(path)
    check_state(module, state, str(path))
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise ConfigError(f"{path}: {error}") from None


def read_safetensors(path: str | Path) -> dict:
    """Reads a ``.safetensors`` file's tensors, with the SHA-1 entries of the weights left out.

    A file written before those entries records them in its header
    (:data:`REBUILT_METADATA`); they are added from there.

    Args:
        path: The weights file.

    Returns:
        Tensor name -> tensor.

    Raises:
        ConfigError: If the file is unreadable, or its header's record of the weights
            left out is malformed, naming it.
    """
    try:
        with safe_open(str(path), framework="pt") as weights:
            state = {name: weights.get_tensor(name) for name in weights.keys()}  # noqa: SIM118
            record = _parsed((weights.metadata() or {}).get(REBUILT_METADATA, "{}"))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ConfigError(f"{path}: not a readable safetensors file ({error})") from error
    return add_recorded_sha1(state, record, str(path))


def _parsed(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _first_difference(saved: object, found: object, key: str = "") -> str:
    if isinstance(saved, dict) and isinstance(found, dict):
        if list(saved) != list(found):
            keys = sorted(set(saved) ^ set(found)) or ["(key order)"]
            return f" at {key or 'the top level'}: keys {', '.join(map(str, keys))}"
        for name in saved:
            if saved[name] != found[name] or json.dumps(saved[name]) != json.dumps(found[name]):
                return _first_difference(saved[name], found[name], f"{key}.{name}" if key else name)
        return ""
    return f" at {key or 'the top level'}: saved {json.dumps(saved)[:60]}, found {json.dumps(found, default=repr)[:60]}"


def check_state(module: nn.Module, state: dict, where: str) -> None:
    """Checks that a state dict fits a module exactly, before loading it.

    Args:
        module: The module.
        state: Tensor name -> tensor, as read from ``where``.
        where: The file (and key), for messages.

    Raises:
        ConfigError: Naming the missing, unexpected, wrong-shaped or non-finite tensors.
    """
    own = module.state_dict()
    whole = full_state_dict(module)
    # A weight left out as rebuilt stands as its SHA-1, or in full in a file saved before.
    for key in set(whole) - set(own):
        if key + REBUILT_SHA1 not in state:
            del own[key + REBUILT_SHA1]
            own[key] = whole[key]
    problems = []
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing:
        problems.append(f"missing {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected {_names(unexpected)}")
    tensors = {k: v for k, v in state.items() if k in own}
    not_tensors = sorted(k for k, v in tensors.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        problems.append(f"not tensors: {_names(not_tensors)}")
    tensors = {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    shapes = [f"{k} {list(v.shape)} (the model's is {list(own[k].shape)})" for k, v in sorted(tensors.items())
              if v.shape != own[k].shape]
    if shapes:
        problems.append(f"of another shape: {_names(shapes)}")
    kinds = [f"{k} {v.dtype} (the model's is {own[k].dtype})" for k, v in sorted(tensors.items())
             if v.dtype != own[k].dtype]
    if kinds:
        problems.append(f"of another dtype: {_names(kinds)}")
    if problems:
        raise ConfigError(f"{where}: the weights do not fit the model: {'; '.join(problems)}")
    check_finite(tensors, where)


def check_finite(state: dict, where: str, prefix: str = "") -> None:
    """Refuses weights holding NaN or infinite values, naming the tensors.

    Args:
        state: Tensor name -> tensor.
        where: The file (and key), for messages.
        prefix: What the file's names have in front of ``state``'s.

    Raises:
        ConfigError: If a floating-point tensor holds a non-finite value.
    """
    infinite = sorted(prefix + k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
                      and not bool(torch.isfinite(v).all()))
    if infinite:
        raise ConfigError(f"{where}: weights not finite (NaN or infinite values) in {_names(infinite)}")


def _names(names: list[str], shown: int = 8) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
