"""The pipeline file: its sections as dataclasses, validated by jsonargparse.

A pipeline file names the stages in run order, each a stack of LightningCLI config
files (paths relative to the pipeline file), the earlier stages whose best
checkpoints it receives, and further arguments; an optional ``wandb:`` section
turns W&B tracking on. Every mistake is reported before any stage runs, naming
the file and the key: an unknown key, a value of the wrong type, a missing config
file, a duplicate stage, or a checkpoint taken from a stage that does not run
earlier.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from jsonargparse import ArgumentError, ArgumentParser

from mmsent.errors import ConfigError

Section = TypeVar("Section")


@dataclass
class WandbSettings:
    """The ``wandb:`` section of a pipeline file.

    Attributes:
        enabled (bool): Log every stage to W&B. False (or no ``wandb:`` section) leaves
            each stage's own ``trainer.logger`` as configured.
        project (str): The W&B project.
        entity (str | None): The W&B team or user; None uses the account's default.
        tags (list[str]): Tags on every run of the pipeline.
        mode (str): ``auto`` (online with credentials, offline without), ``online`` or
            ``offline``. ``WANDB_MODE``, when set, overrides it; without credentials a
            run is always offline (:func:`mmsent.pipeline.wandb_mode.resolve_mode`).
    """

    enabled: bool = True
    project: str = "mmsent"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)
    mode: Literal["auto", "online", "offline"] = "auto"


@dataclass
class Stage:
    """One entry of ``stages:``.

    Attributes:
        name (str): Unique stage name.
        configs (list[Path]): Config files stacked with ``-c``, in order; relative to
            the pipeline file as written, resolved by :func:`load_pipeline`.
        checkpoints (dict[str, str]): Config key -> earlier stage whose best
            checkpoint it receives.
        args (list[str]): Further command-line arguments for this stage.
    """

    name: str
    configs: list[Path] = field(default_factory=list)
    checkpoints: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)


@dataclass
class PipelineFile:
    """The top level of a pipeline file, before its sections are validated.

    Attributes:
        stages (list[dict[str, Any]]): One :class:`Stage` mapping per stage.
        name (str | None): The pipeline's name; None takes the file's stem.
        output_dir (Path | None): Where its runs go; None: ``runs/<file stem>``.
        args (list[str]): Command-line arguments added to every stage.
        wandb (dict[str, Any] | None): A :class:`WandbSettings` mapping.
    """

    stages: list[dict[str, Any]]
    name: str | None = None
    output_dir: Path | None = None
    args: list[str] = field(default_factory=list)
    wandb: dict[str, Any] | None = None


@dataclass
class Pipeline:
    """A validated pipeline file.

    Attributes:
        name (str): The pipeline's name.
        output_dir (Path): Where stage folders, the manifest and the report go.
        stages (list[Stage]): The stages in run order, config paths resolved.
        args (list[str]): Command-line arguments added to every stage.
        wandb (WandbSettings): The ``wandb:`` section; disabled when absent.
    """

    name: str
    output_dir: Path
    stages: list[Stage]
    args: list[str] = field(default_factory=list)
    wandb: WandbSettings = field(default_factory=lambda: WandbSettings(enabled=False))

    def stage(self, name: str) -> Stage:
        """Stage: The stage called ``name``.

        Raises:
            ConfigError: If the pipeline has no such stage.
        """
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ConfigError(f"no stage {name!r}; the pipeline has {[s.name for s in self.stages]}")


def load_pipeline(path: str | Path) -> Pipeline:
    """Reads and validates a pipeline file.

    Args:
        path (str | Path): The YAML file; config paths inside are relative to it.

    Returns:
        Pipeline: The pipeline.

    Raises:
        ConfigError: On a file that is not YAML, an unknown key, a value of the wrong
            type, a missing config file, a duplicate stage, or a checkpoint taken from
            a stage that does not run earlier, naming the file and the key.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ConfigError(f"{path}{where}: not valid YAML ({problem})") from None
    top = validated(PipelineFile, raw or {}, str(path))
    stages: list[Stage] = []
    for index, entry in enumerate(top.stages):
        where = f"{path}: stages[{index}]"
        stage = validated(Stage, entry, where)
        stage.configs = [path.parent / config for config in stage.configs]
        check_stage(stage, [s.name for s in stages], where)
        stages.append(stage)
    if not stages:
        raise ConfigError(f"{path}: the pipeline lists no stage")
    wandb = (WandbSettings(enabled=False) if top.wandb is None
             else validated(WandbSettings, top.wandb, f"{path}: wandb"))
    return Pipeline(top.name or path.stem, top.output_dir or Path("runs") / path.stem, stages,
                    top.args, wandb)


def validated(kind: type[Section], raw: Any, where: str) -> Section:
    """One section of a pipeline file as its dataclass, its keys and types checked by
    jsonargparse as it checks a LightningCLI config.

    Args:
        kind (type[Section]): The section's dataclass.
        raw (Any): The section as read from YAML.
        where (str): The file and key, for messages.

    Returns:
        Section: The section.

    Raises:
        ConfigError: If ``raw`` is not a mapping, has a key ``kind`` does not know, lacks
            a required one, or holds a value of the wrong type.
    """
    keys = ", ".join(f.name for f in fields(kind))
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with the keys {keys}, got {raw!r}")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(kind)
    try:
        parsed = parser.parse_object(raw)
    except ArgumentError as error:
        reason = " ".join(str(error).split())
        raise ConfigError(f"{where}: {reason} (the keys are {keys})") from None
    return kind(**parsed.as_dict())


def check_stage(stage: Stage, earlier: list[str], where: str) -> None:
    """What the types cannot tell: the stage's place among the others, and its files.

    Args:
        stage (Stage): The stage, its config paths resolved.
        earlier (list[str]): The names of the stages before it.
        where (str): The file and key, for messages.

    Raises:
        ConfigError: On a duplicate stage name, a missing config file, or a
            checkpoint taken from a stage that does not run earlier.
    """
    if stage.name in earlier:
        raise ConfigError(f"{where}: duplicate stage name {stage.name!r}")
    for config in stage.configs:
        if not config.is_file():
            raise ConfigError(f"{where}: config file {config} does not exist")
    for key, source in stage.checkpoints.items():
        if source not in earlier:
            raise ConfigError(f"{where}: checkpoints.{key} takes stage {source!r}, "
                              f"which does not run before {stage.name!r}")
