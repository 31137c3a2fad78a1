"""Reading and writing checkpoint files safely: tensors and plain data only, and
never a half-written file.

Every checkpoint mmsent reads goes through :func:`load_weights_only`, which passes
``weights_only=True`` to ``torch.load`` explicitly; torch honours an explicit value
whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says, so a checkpoint replaced by a
malicious pickle is refused instead of run. :class:`AtomicCheckpointIO`, which every
``mmsent fit`` installs, writes a checkpoint to a temporary file beside it, flushes it
to disk and renames it over the old one, so a full disk or a kill leaves the previous
checkpoint intact; Lightning's own resume (``--ckpt_path``) reads through it too.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins import TorchCheckpointIO

from mmsent.errors import ConfigError, MissingFileError
from mmsent.io import atomic_write
from mmsent.models.config import META_KEY

ZIP_SIGNATURE = b"PK\x03\x04"


def load_weights_only(path: str | Path, what: str) -> dict:
    """Loads a checkpoint with ``weights_only=True``, whatever the environment says.

    Args:
        path (str | Path): The checkpoint file.
        what (str): The config key that named it, for the message.

    Returns:
        dict: The checkpoint, on the CPU.

    Raises:
        MissingFileError: If the file does not exist.
        ConfigError: If the file holds objects other than tensors and plain data
            (refused), or is truncated or corrupt; naming the key and the file.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what}: checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if _cut_inside_zip_signature(path):
            raise ConfigError(f"{what}: checkpoint {path} is unreadable, truncated or corrupt "
                              f"(cut to {path.stat().st_size} bytes)") from None
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{what}: checkpoint {path} refused: it holds objects other than tensors "
                          f"and plain data, which mmsent never loads ({reason})") from error
    # torch's zip reader fails with EINVAL on a file cut a few kB after its start.
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{what}: checkpoint {path} is unreadable, truncated or corrupt "
                          f"({reason})") from error


def _cut_inside_zip_signature(path: Path) -> bool:
    # torch reads a file as a zip archive (every checkpoint since torch 1.6) only once
    # its whole 4-byte signature is there; a shorter cut goes to the pickle reader,
    # whose refusal would otherwise read as a checkpoint that is not one.
    with path.open("rb") as stream:
        head = stream.read(len(ZIP_SIGNATURE))
    return len(head) < len(ZIP_SIGNATURE) and ZIP_SIGNATURE.startswith(head)


def readable(path: str | Path) -> bool:
    """bool: Whether a checkpoint file loads (with ``weights_only=True``)."""
    try:
        load_weights_only(path, "checkpoint")
    except (ConfigError, MissingFileError):
        return False
    return True


def atomic_torch_save(checkpoint: Any, path: str | Path) -> None:
    """Writes ``torch.save(checkpoint)`` to ``path`` all at once or not at all
    (:func:`mmsent.io.atomic_write`).

    Args:
        checkpoint (Any): What to save.
        path (str | Path): The file; its folder is created.

    Raises:
        WriteError: If the disk is full or the file too large, naming the file and
            the free space (:func:`mmsent.io.write_failure`).
        OSError: If the write fails otherwise, naming the file.
    """

    def save(part: Path) -> None:
        with part.open("wb") as stream:
            torch.save(checkpoint, stream)

    atomic_write(path, save, "checkpoint", durable=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, writing atomically and reading tensors and plain
    data only (``weights_only=True``, also on Lightning's resume path)."""

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
        """Reads a checkpoint with ``weights_only=True`` (:func:`load_weights_only`),
        whatever ``weights_only`` Lightning asks for.

        Args:
            path: The file.
            map_location (Any | None): Ignored: the checkpoint is read to the CPU and
                Lightning moves the states where they belong.
            weights_only (bool | None): Ignored, always True.

        Returns:
            dict: The checkpoint.
        """
        return load_weights_only(path, "--ckpt_path")


def read_checkpoint(path: str | Path, what: str) -> dict:
    """Loads a Lightning checkpoint safely (tensors and plain data only).

    Args:
        path (str | Path): The checkpoint file.
        what (str): The config key that named it, for the message.

    Returns:
        dict: The checkpoint.

    Raises:
        FileNotFoundError: If the file does not exist, naming the key and path.
        ConfigError: If the file is refused or unreadable, or lacks its weights or
            holds its metadata in another form, naming the key, path and entry.
    """
    checkpoint = load_weights_only(path, what)
    if not isinstance(checkpoint, dict):
        raise ConfigError(f"{what}: checkpoint {path} holds a {type(checkpoint).__name__}, not a "
                          f"Lightning checkpoint")
    require_entries(checkpoint, {"state_dict": dict}, path, what)
    if META_KEY in checkpoint:
        require_entries(checkpoint, {META_KEY: dict}, path, what)
    return checkpoint


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
