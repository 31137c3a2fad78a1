"""One pipeline run per output folder: a lock file naming the run that holds it."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Self

from filelock import FileLock, Timeout

from mmsent.errors import ConfigError

LOCK_FILE = "run.lock"


class RunLock:
    """Holds ``<output_dir>/run.lock`` while a pipeline runs, as a context manager.

    The lock is ``filelock``'s: the operating system releases it when its process ends, so a
    lock left by a killed run is taken over. The file names the holder (pid, host, start), and
    a second run on the folder refuses to start, naming it.

    Args:
        folder: The pipeline's output folder.
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_FILE
        self._lock = FileLock(self.path, timeout=0, on_acquired=_record_holder)

    @property
    def held(self) -> bool:
        """Whether this run holds the lock."""
        return self._lock.is_locked

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def acquire(self) -> None:
        """Takes the lock.

        Raises:
            ConfigError: If another live run holds it, naming its pid, host and start.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            holder = self._holder()
            raise ConfigError(
                f"{self.path.parent}: another pipeline run is using this folder (pid "
                f"{holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}); "
                f"wait for it to end, or delete {self.path} if it is no longer running") from None

    def release(self) -> None:
        """Gives the lock back, if this run holds it, and removes the file."""
        if self._lock.is_locked:
            # Removed while still held: a run that opened this file meanwhile finds it
            # unlinked once it gets the lock, and filelock has it take a fresh one.
            self.path.unlink(missing_ok=True)
            self._lock.release()

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            # Taken a moment ago, its holder not yet written down.
            return {"pid": "?", "host": "?", "started": "just now"}


def _record_holder(descriptor: int) -> None:
    me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, me, 0)
