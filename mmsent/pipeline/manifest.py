"""``manifest.json``: what a pipeline run did, stage by stage; the only code that writes it.

Per stage: its status (``running``, ``done``, ``failed`` or ``skipped``) and what it produced.
Every change is written at once, atomically, so a rerun after a kill finds the truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmsent.errors import ConfigError
from mmsent.io import read_json, save_json

# What to do about a manifest that cannot be read: the stages' folders are intact.
REMEDY = "restore it, or move it away to run every stage again"


def read_manifest(path: Path) -> dict:
    """Reads a manifest, checking its layout before anything relies on it.

    Args:
        path: The file.

    Returns:
        The manifest.

    Raises:
        ConfigError: If it is not JSON or not laid out as a manifest, naming the entry at fault.
    """
    data = read_json(path, "a readable manifest", REMEDY)
    if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
        raise ConfigError(f"{path}: not a manifest (no 'stages' mapping); {REMEDY}")
    for name, record in data["stages"].items():
        if not isinstance(record, dict):
            raise ConfigError(f"{path}: stages.{name} is a {type(record).__name__}, not a stage's record; {REMEDY}")
    return data


class Manifest:
    """The manifest of one pipeline output folder.

    Args:
        path: The manifest file; read if it exists.

    Raises:
        ConfigError: If the file is not JSON, or not a manifest, naming it.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.data = read_manifest(self.path) if self.path.exists() else {"stages": {}}

    @property
    def group(self) -> str:
        """The pipeline run's id, the W&B group of its stages."""
        return self.data["group"]

    def stage(self, name: str) -> dict:
        """The record of stage ``name``, to read; empty for a stage that never started."""
        return self.data["stages"].get(name, {})

    def is_done(self, name: str) -> bool:
        """Whether the stage finished and its best checkpoint still exists."""
        record = self.stage(name)
        return record.get("status") == "done" and Path(record.get("best_checkpoint", "")).is_file()

    def open_run(self, pipeline: str, group: str) -> None:
        """Names the pipeline, and keeps the group of an earlier run of this folder.

        Args:
            pipeline: The pipeline's name.
            group: The group for a folder that has none yet.
        """
        self.data["pipeline"] = pipeline
        self.data.setdefault("group", group)
        self.save()

    def forget(self, name: str) -> None:
        """Drops stage ``name``'s record, so that it runs again from scratch."""
        self.data["stages"].pop(name, None)
        self.save()

    def start_stage(self, name: str, command: str, resumed_from: str | None) -> float:
        """Marks a stage as running.

        Args:
            name: The stage.
            command: The ``mmsent fit`` command it runs.
            resumed_from: The checkpoint an interrupted fit resumes from.

        Returns:
            The seconds the stage ran before it was interrupted; 0 for a fresh start.
        """
        record = self.data["stages"].setdefault(name, {})
        spent = record.get("wall_time_s", 0.0) if resumed_from else 0.0
        record.update({"status": "running", "command": command, "resumed_from": resumed_from})
        record.pop("error", None)
        record.pop("resume_command", None)
        self.save()
        return spent

    def track_stage(self, name: str, **wandb: Any) -> None:
        """Records the stage's W&B run.

        Args:
            name: The stage.
            **wandb: ``run_id``, ``mode``, ``project``, ``dir``; merged into what is recorded.
        """
        self.data["stages"].setdefault(name, {}).setdefault("wandb", {}).update(wandb)
        self.save()

    def finish_stage(self, name: str, **results: Any) -> None:
        """Marks a stage as done with what it produced.

        Args:
            name: The stage.
            **results: ``best_checkpoint``, ``metrics``, ``predictions`` and the like.
        """
        self.data["stages"].setdefault(name, {}).update({"status": "done", **results})
        self.save()

    def skip_stage(self, name: str, reason: str) -> None:
        """Marks a stage as skipped, replacing what an earlier run recorded of it.

        Args:
            name: The stage.
            reason: Why, as shown to the user.
        """
        self.data["stages"][name] = {"status": "skipped", "reason": reason}
        self.save()

    def fail_stage(self, name: str, error: str, resume: str) -> None:
        """Marks a stage as failed.

        Args:
            name: The stage.
            error: What went wrong, as shown to the user.
            resume: The command that resumes the pipeline from this stage.
        """
        self.data["stages"].setdefault(name, {}).update({"status": "failed", "error": error,
                                                          "resume_command": resume})
        self.save()

    def save(self) -> None:
        """Writes the manifest atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        save_json(self.path, self.data)
