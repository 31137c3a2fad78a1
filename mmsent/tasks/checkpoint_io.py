"""Writing checkpoint files safely, never a half-written file, and reading them back
as tensors and plain data only.

:class:`AtomicCheckpointIO`, which every ``mmsent fit`` installs, writes a checkpoint
to a temporary file beside it, flushes it to disk and renames it over the old one, so
a full disk or a kill leaves the previous checkpoint intact; Lightning's own resume
(``--ckpt_path``) reads through it too, with ``weights_only=True``
(:func:`mmsent.models.weights.read_weights_file`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from mmsent.errors import WriteError
from mmsent.io import no_room, sync_path, write_failure
from mmsent.models.weights import read_weights_file


def atomic_torch_save(checkpoint: Any, path: str | Path) -> None:
    """Writes ``torch.save(checkpoint)`` to ``path`` all at once or not at all.

    Args:
        checkpoint (Any): What to save.
        path (str | Path): The file; its folder is created.

    Raises:
        WriteError: If the disk is full or the file too large, naming the file and
            the free space (:func:`mmsent.io.write_failure`).
        OSError: If the write fails otherwise, naming the file.

    Either way the file as it was before is left in place and the temporary file
    removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(checkpoint, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        failure = no_room(error)
        if failure is not None:
            raise WriteError(failure.errno, write_failure(path, failure, f"writing checkpoint {path}")) from error
        if isinstance(error, OSError):
            raise OSError(error.errno, f"writing checkpoint {path} failed: {error.strerror or error}") from error
        raise
    sync_path(path.parent)  # the rename is durable only once the folder's entry is on disk


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
        """Reads a checkpoint with ``weights_only=True`` (:func:`read_weights_file`),
        whatever ``weights_only`` Lightning asks for.

        Args:
            path: The file.
            map_location (Any | None): Ignored: the checkpoint is read to the CPU and
                Lightning moves the states where they belong.
            weights_only (bool | None): Ignored, always True.

        Returns:
            dict: The checkpoint.
        """
        return read_weights_file(path, "--ckpt_path")
