"""File helpers shared across the package: signatures, content hashes, atomic writes.

This module imports nothing of mmsent, so any module may use it without forming an
import cycle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


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


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Writes a file through a temporary one in the same folder, then renames it.

    An interrupted write therefore leaves either the whole new file or none.

    Args:
        path (Path): The destination.
        write (Callable[[Path], None]): Writes the content to the path it is given.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    write(tmp)
    os.replace(tmp, path)


def write_folder(target: Path, write: Callable[[Path], None]) -> Path:
    """Writes a whole folder beside its target, then renames it into place.

    An existing target is renamed aside, the new folder renamed in, and the old one
    deleted, so an interrupted write (a kill, a full disk) leaves the previous folder
    or, between the two renames, none; never a mix or a part.

    Args:
        target (Path): The folder to create or replace.
        write (Callable[[Path], None]): Fills the (empty, temporary) folder it is given.

    Returns:
        Path: ``target``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        write(staging)
        _sync_tree(staging)
        aside = None
        if target.exists() or target.is_symlink():
            aside = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, aside)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _sync_tree(target.parent, files=False)
    if aside is not None:
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside)
        else:
            aside.unlink()
    return target


def _sync_tree(folder: Path, files: bool = True) -> None:
    # A rename is durable only once the renamed files' contents and the folder's entries are on disk.
    paths = [p for p in folder.rglob("*") if files] + [folder]
    for path in paths:
        try:
            descriptor = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(descriptor)
        except OSError:
            pass
        finally:
            os.close(descriptor)


def save_json(path: Path, payload) -> None:
    """Writes JSON atomically (indented), so an interrupted write never leaves half a file.

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
