"""File helpers shared across the package: signatures, content hashes, atomic writes.

It imports nothing of mmsent but its errors, so any module may use it without a cycle.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from mmsent.errors import ConfigError, MMSentError, WriteError

# A write that fails for want of room: the disk or quota is full, or the file would
# pass the process's size limit (``ulimit -f``).
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def file_signature(paths: list[Path]) -> str:
    """A hash of the size and modification time of files, cheap even for 20k clips.

    Args:
        paths (list[Path]): The files; missing ones count as missing.

    Returns:
        str: A hex digest.
    """
    digest = hashlib.sha1()
    for path in sorted(paths):
        stat = path.stat() if path.exists() else None
        digest.update(f"{path}:{stat.st_size if stat else -1}:{stat.st_mtime_ns if stat else -1}\n".encode())
    return digest.hexdigest()


def content_hash(path: Path) -> str:
    """The SHA-1 of a file's bytes.

    Args:
        path (Path): The file.

    Returns:
        str: A hex digest.
    """
    return hashlib.sha1(path.read_bytes()).hexdigest()


def atomic_write(path: Path, write: Callable[[Path], None], what: str = "", durable: bool = False) -> None:
    """Writes a file beside its destination, then renames it over: all or nothing.

    Args:
        path (Path): The destination; its folder is created.
        write (Callable[[Path], None]): Writes the content to the path it is given.
        what (str): What the file is, for messages (``"checkpoint"``).
        durable (bool): Also flush file and rename to disk (survives a power cut; a few ms).

    Raises:
        WriteError: If the disk is full or the file too large, naming the free space.
        OSError: If the write fails otherwise, naming the file.
    """
    path = Path(path)
    with _staging(path, what) as folder:
        write(folder / path.name)
        if durable:
            sync_path(folder / path.name)
        os.replace(folder / path.name, path)
    if durable:
        sync_path(path.parent)


@contextmanager
def _staging(target: Path, what: str) -> Iterator[Path]:
    """A new folder beside ``target`` to write it in, removed afterwards; errors name ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging
    except BaseException as error:
        # Removed first, so that the free space a message gives is the space without it.
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, MMSentError):
            raise
        action = f"writing {what + ' ' if what else ''}{target}"
        failure = no_room(error)
        if failure is not None:
            raise WriteError(failure.errno, write_failure(target, failure, action)) from error
        if isinstance(error, OSError) and str(error.filename or staging).startswith(str(staging)):
            raise OSError(error.errno, f"{action} failed: {error.strerror or error}") from error
        raise
    shutil.rmtree(staging, ignore_errors=True)


def no_room(error: BaseException) -> OSError | None:
    """The full-disk error in an error's chain (torch raises a ``RuntimeError`` from it).

    Args:
        error (BaseException): The error caught.

    Returns:
        OSError | None: The full-disk or file-too-large error; None for any other.
    """
    seen = []
    while error is not None and error not in seen:
        if isinstance(error, OSError) and error.errno in NO_ROOM:
            return error
        seen.append(error)
        error = error.__cause__ or error.__context__
    return None


def write_failure(path: Path, error: OSError, action: str | None = None) -> str:
    """A one-line message for a write that failed for want of room, with the free space.

    Args:
        path (Path): The file being written.
        error (OSError): The full-disk or file-too-large error.
        action (str | None): What failed, naming the file; default ``writing <path>``.

    Returns:
        str: The message.
    """
    path = Path(path)
    folder = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("/"))
    mount = next((p for p in [folder, *folder.parents] if os.path.ismount(p)), Path("/"))
    reason = os.strerror(error.errno) if error.errno else str(error)
    room = f"{_size(shutil.disk_usage(folder).free)} free on {mount}"
    if error.errno == errno.EFBIG:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY:
            room = f"files are limited to {_size(limit)} (ulimit -f), {room}"
    return f"{action or f'writing {path}'} failed: {reason} ({room})"


def _size(count: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def write_folder(target: Path, write: Callable[[Path], None]) -> Path:
    """Writes a whole folder beside its target, then renames it into place.

    An interrupted write leaves the previous folder (or, between two renames, none),
    never a mix or a part.

    Args:
        target (Path): The folder to create or replace.
        write (Callable[[Path], None]): Fills the (empty, temporary) folder it is given.

    Returns:
        Path: ``target``.

    Raises:
        WriteError: If the disk is full, naming the folder and the free space.
    """
    target = Path(target)
    aside = None
    with _staging(target, "") as staging:
        write(staging)
        _usual_modes(staging)
        _sync_tree(staging)
        if target.exists() or target.is_symlink():
            aside = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, aside)
        os.replace(staging, target)
    _sync_tree(target.parent, files=False)
    if aside is not None:
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside)
        else:
            aside.unlink()
    return target


def _usual_modes(folder: Path) -> None:
    """Gives a staged folder and its files the modes ``mkdir`` and ``open`` give under the
    umask; the staging folder is private (0700) and safetensors writes files 0600, so a
    model folder on a shared disk would otherwise be readable by its writer only."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _sync_tree(folder: Path, files: bool = True) -> None:
    # A rename is durable only once the renamed files' contents and the folder's entries are on disk.
    for path in [p for p in folder.rglob("*") if files] + [folder]:
        sync_path(path)


def sync_path(path: Path) -> None:
    """Flushes a file's or a folder's entries to disk, where the system allows it.

    Args:
        path (Path): The file or folder; one that cannot be opened is left alone.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def read_json(path: Path, what: str = "valid JSON", remedy: str = "") -> Any:
    """Reads a JSON file that may come from anyone, naming it when it cannot be read.

    Args:
        path (Path): The file.
        what (str): What the file should be, for the message (``not <what>``).
        remedy (str): What to do about it, appended to the message.

    Returns:
        Any: The parsed content.

    Raises:
        ConfigError: If the file is not UTF-8 or not JSON, naming it and the place.
    """
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: not {what} ({error})" + (f"; {remedy}" if remedy else "")) from None


def save_json(path: Path, payload) -> None:
    """Writes indented JSON atomically.

    Args:
        path (Path): The destination.
        payload: Anything ``json`` serializes; numpy scalars and paths are converted.
    """
    text = json.dumps(payload, indent=2, default=_json_default)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialize {type(value).__name__}")
