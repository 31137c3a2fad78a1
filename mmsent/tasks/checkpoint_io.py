"""Reading and writing checkpoint files safely: tensors and plain data only, each file
read once, and never a half-written file.

Every checkpoint a stage is handed, a model folder from ``mmsent export`` included, goes
through :func:`read_checkpoint` (``weights_only=True``). :class:`AtomicCheckpointIO`,
installed by every ``mmsent fit``, writes atomically, so a full disk or a kill leaves the
previous checkpoint intact; Lightning's resume (``--ckpt_path``) reads through it too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins import TorchCheckpointIO

from mmsent.data.schema import MODALITIES
from mmsent.errors import ConfigError
from mmsent.io import atomic_write, read_json
from mmsent.models.config import META_KEY, check_saved_config, read_safetensors
from mmsent.models.weights import add_recorded_sha1, read_weights_file

_READ: ContextVar[dict[str, dict] | None] = ContextVar("mmsent_checkpoints_read", default=None)


@contextmanager
def reading_once() -> Iterator[None]:
    """Within it, :func:`read_checkpoint` reads each file once and hands out the same dict."""
    token = _READ.set({} if _READ.get() is None else _READ.get())
    try:
        yield
    finally:
        _READ.reset(token)


def read_checkpoint(path: str | Path, what: str) -> dict:
    """Reads a stage's checkpoint, or a model folder as the fused checkpoint it came from.

    Args:
        path (str | Path): A checkpoint file, or a folder written by ``mmsent export``.
        what (str): The config key that named it, for messages.

    Returns:
        dict: The checkpoint (``state_dict``, :data:`META_KEY`, ``hyper_parameters``,
        ``callbacks``, as far as the file holds them).

    Raises:
        MissingFileError: If the file does not exist, naming the key and path.
        ConfigError: If the file is refused, unreadable or malformed, naming the entry.
    """
    read = _READ.get()
    key = str(Path(path).resolve())
    if read is not None and key in read:
        return read[key]
    checkpoint = _read_model_folder(Path(path), what) if Path(path).is_dir() else read_weights_file(path, what)
    if not isinstance(checkpoint, dict):
        raise ConfigError(f"{what}: checkpoint {path} holds a {type(checkpoint).__name__}, not a "
                          f"Lightning checkpoint")
    require_entries(checkpoint, {"state_dict": dict}, path, what)
    if META_KEY in checkpoint:
        require_entries(checkpoint, {META_KEY: dict}, path, what)
        add_recorded_sha1(checkpoint["state_dict"], checkpoint[META_KEY].pop("rebuilt", {}), f"{what}: {path}")
    if read is not None:
        read[key] = checkpoint
    return checkpoint


def _read_model_folder(folder: Path, what: str) -> dict:
    config = read_json(folder / "config.json") if (folder / "config.json").is_file() else None
    if not isinstance(config, dict) or not all(isinstance(config.get(k), dict) for k in ("encoders", "fusion", "head")):
        raise ConfigError(f"{what}: {folder} is a folder but no model folder of mmsent export (a config.json "
                          f"with encoders, fusion and head)")
    check_saved_config(folder / "model.safetensors", config)
    state = read_safetensors(folder / "model.safetensors")
    encoders = {m: {"class_path": record.get("class_path"),
                    "init_args": {k: v for k, v in (record.get("init_args") or {}).items() if k != "input_dim"}}
                for m, record in config["encoders"].items() if isinstance(record, dict)}
    # The modality the fusion is built on, so that a stage starting from it builds it alike.
    primary = (config["fusion"].get("init_args") or {}).get("primary")
    return {"state_dict": state, "hyper_parameters": {"head_hidden": (config["head"].get("init_args") or {})
                                                      .get("hidden_dim", 0)},
            META_KEY: {"task": "fusion", "encoder_configs": encoders, "fusion_config": config["fusion"],
                       "head_config": config["head"],
                       "unimodal": {"head_modality": primary}}}


def current_hyperparameters(saved: dict) -> dict:
    """A checkpoint's saved init arguments under today's names.

    Older checkpoints name each source in an argument of its own (``<m>_checkpoint``,
    ``<m>_encoder_checkpoint``, ``fixed_<m>_checkpoint``).

    Args:
        saved (dict): The checkpoint's ``hyper_parameters``.

    Returns:
        dict: The same arguments, those in ``encoders``, ``unimodal`` and ``fixed``.
    """
    current = dict(saved)
    for m in MODALITIES:
        unimodal, encoder = current.pop(f"{m}_checkpoint", None), current.pop(f"{m}_encoder_checkpoint", None)
        fixed = current.pop(f"fixed_{m}_checkpoint", None)
        if unimodal or encoder:
            current.setdefault("encoders", {})[m] = encoder or unimodal
        if unimodal and encoder:
            current.setdefault("unimodal", {})[m] = unimodal
        if fixed:
            current.setdefault("fixed", {})[m] = fixed
    return current


def require_entries(record: dict, kinds: dict[str, type], path: str | Path, what: str, within: str = "") -> None:
    """Checks that a checkpoint (or its metadata) holds the entries read from it.

    Args:
        record (dict): The checkpoint, or a part of it.
        kinds (dict[str, type]): Per entry, the type it must have.
        path (str | Path): The checkpoint, for the message.
        what (str): The config key that named it, for the message.
        within (str): Where ``record`` sits in the checkpoint (``"mmsent."``).

    Raises:
        ConfigError: Naming the key, the file and the entry missing or of another type.
    """
    for key, kind in kinds.items():
        if key not in record:
            raise ConfigError(f"{what}: checkpoint {path} has no entry {within}{key}: it was not written by "
                              f"mmsent, or was altered since")
        if not isinstance(record[key], kind):
            raise ConfigError(f"{what}: checkpoint {path}: entry {within}{key} is a "
                              f"{type(record[key]).__name__}, not a {kind.__name__}: it was altered")



def atomic_torch_save(checkpoint: Any, path: str | Path) -> None:
    """Writes ``torch.save(checkpoint)`` to ``path`` all at once or not at all.

    Args:
        checkpoint (Any): What to save.
        path (str | Path): The file; its folder is created.

    Raises:
        WriteError: If the disk is full or the file too large, naming the free space.
        OSError: If the write fails otherwise, naming the file.
    """

    def save(part: Path) -> None:
        with part.open("wb") as stream:
            torch.save(checkpoint, stream)

    atomic_write(path, save, "checkpoint", durable=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, writing atomically and reading with ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        """Writes a checkpoint atomically (:func:`atomic_torch_save`).

        Args:
            checkpoint (dict[str, Any]): What Lightning dumps.
            path: The file.
            storage_options (Any | None): Unsupported, as in Lightning's own.

        Raises:
            TypeError: If ``storage_options`` is given.
        """
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        """Reads a checkpoint with ``weights_only=True``, whatever Lightning asks for.

        Args:
            path: The file.
            map_location (Any | None): Ignored: read to the CPU, Lightning moves the states.
            weights_only (bool | None): Ignored, always True.

        Returns:
            dict: The checkpoint.
        """
        return read_weights_file(path, "--ckpt_path")
