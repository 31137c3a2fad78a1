"""One pipeline run per output folder: a lock file naming the run that holds it."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Self

from mmsent.errors import ConfigError

LOCK_FILE = "run.lock"


class RunLock:
    """Holds ``<output_dir>/run.lock`` while a pipeline runs, as a context manager.

    The file records the holder's pid, host and start time. A second run on the same
    folder refuses to start, naming the first; a lock left by a process that is no
    longer alive on this host (a run killed with SIGKILL) is taken over.

    Args:
        folder (Path): The pipeline's output folder.
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.held = False

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def acquire(self) -> None:
        """Takes the lock.

        Raises:
            ConfigError: If another live run holds it, naming its pid and host.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if not self._stale(holder):
                    raise ConfigError(
                        f"{self.path.parent}: another pipeline run is using this folder (pid "
                        f"{holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}); "
                        f"wait for it to end, or delete {self.path} if it is no longer running") from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(descriptor, "w") as stream:
                json.dump(me, stream)
            self.held = True
            return
        raise ConfigError(f"{self.path}: could not take the lock; another run took it meanwhile")

    def release(self) -> None:
        """Gives the lock back, if this run holds it."""
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            # Being written by the run that just created it, or left empty by a crash.
            try:
                age = time.time() - self.path.stat().st_mtime
            except OSError:
                age = 0.0
            return {"pid": "?", "host": "?", "started": "just now", "abandoned": age > 10}

    @staticmethod
    def _stale(holder: dict) -> bool:
        if holder.get("abandoned"):
            return True
        if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
            return False
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
