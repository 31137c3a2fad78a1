"""The pipeline file: its sections as dataclasses, validated by jsonargparse.

Every mistake is reported before any stage runs, naming the file and the key. A file may
build on another with ``extends: <file>``; the guide "Stages and pipelines" gives the
merge rules. Config paths are relative to the file that writes them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from jsonargparse import ArgumentError, ArgumentParser

from mmsent.errors import ConfigError, MissingFileError

Section = TypeVar("Section")


@dataclass
class WandbSettings:
    """The ``wandb:`` section of a pipeline file.

    Attributes:
        enabled: Log every stage to W&B; False leaves each stage's ``trainer.logger`` as is.
        project: The W&B project.
        entity: The W&B team or user; None uses the account's default.
        tags: Tags on every run of the pipeline.
        mode: ``auto`` (online with credentials, offline without), ``online`` or ``offline``;
            see :func:`mmsent.pipeline.wandb_mode.resolve_mode`.
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
        name: Unique stage name.
        configs: Config files stacked with ``-c``, in order; relative to the pipeline file.
        checkpoints: Config key -> earlier stage whose best checkpoint it receives.
        args: Further command-line arguments for this stage.
    """

    name: str
    configs: list[Path] = field(default_factory=list)
    checkpoints: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)


@dataclass
class PipelineFile:
    """The top level of a pipeline file, before its sections are validated.

    Attributes:
        stages: One :class:`Stage` mapping per stage; with ``extends``, those to add or change.
        extends: The pipeline file this one builds on, relative to it.
        name: The pipeline's name; None takes the file's stem.
        output_dir: Where its runs go; None: ``runs/<file stem>``.
        args: Command-line arguments added to every stage.
        wandb: A :class:`WandbSettings` mapping.
    """

    stages: list[dict[str, Any]] = field(default_factory=list)
    extends: str | None = None
    name: str | None = None
    output_dir: Path | None = None
    args: list[str] = field(default_factory=list)
    wandb: dict[str, Any] | None = None


@dataclass
class Pipeline:
    """A validated pipeline file.

    Attributes:
        name: The pipeline's name.
        output_dir: Where stage folders, the manifest and the report go.
        stages: The stages in run order, config paths resolved.
        args: Command-line arguments added to every stage.
        wandb: The ``wandb:`` section; disabled when absent.
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
    """Reads and validates a pipeline file, and the files it extends.

    Args:
        path: The YAML file; config paths inside are relative to it.

    Returns:
        The pipeline, the files it extends merged in.

    Raises:
        MissingFileError: If ``path`` does not exist.
        ConfigError: On any mistake in the file or those it extends, naming the file and key.
    """
    path = Path(path)
    top, written = resolved_file(path, [])
    stages: list[Stage] = []
    for stage, where in written:
        check_order(stage, [s.name for s in stages], where)
        stages.append(stage)
    if not stages:
        raise ConfigError(f"{path}: the pipeline lists no stage")
    wandb = top.get("wandb") or WandbSettings(enabled=False)
    return Pipeline(top.get("name") or path.stem, top.get("output_dir") or Path("runs") / path.stem,
                    stages, top.get("args", []), wandb)


def resolved_file(path: Path, chain: list[Path]) -> tuple[dict[str, Any], list[tuple[Stage, str]]]:
    """One pipeline file with the files it extends merged in.

    Args:
        path: The file.
        chain: The files that extend it, outermost first.

    Returns:
        The top-level keys set (``wandb`` as :class:`WandbSettings`), and the stages in run
            order, each with the file and key that last wrote it, for messages.

    Raises:
        ConfigError: As :func:`load_pipeline`.
    """
    if path.resolve() in [p.resolve() for p in chain]:
        loop = " -> ".join(map(str, [*chain, path]))
        raise ConfigError(f"{chain[-1]}: extends comes back to a file it started from: {loop}")
    if not path.is_file():
        if not chain:
            raise MissingFileError(f"pipeline file {path} does not exist")
        raise ConfigError(f"{chain[-1]}: extends {path}, which does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ConfigError(f"{path}{where}: not valid YAML ({problem})") from None
    file = validated(PipelineFile, raw, str(path))
    top = {key: getattr(file, key) for key in raw if key not in ("stages", "extends")}
    if top.get("wandb") is not None:
        top["wandb"] = validated(WandbSettings, top["wandb"], f"{path}: wandb")
    entries = []
    for index, entry in enumerate(file.stages):
        where = f"{path}: stages[{index}]"
        stage = validated(Stage, entry, where)
        stage.configs = [path.parent / config for config in stage.configs]
        check_files(stage, [e[0]["name"] for e in entries], where)
        entries.append(({key: getattr(stage, key) for key in entry}, where))
    if file.extends is None:
        return top, [(Stage(**given), where) for given, where in entries]
    parent = Path(os.path.normpath(path.parent / file.extends))
    inherited, stages = resolved_file(parent, [*chain, path])
    kept = {key: value for key, value in inherited.items() if key not in ("name", "output_dir")}
    return {**kept, **top}, merged_stages(stages, entries)


def merged_stages(stages: list[tuple[Stage, str]],
                  entries: list[tuple[dict[str, Any], str]]) -> list[tuple[Stage, str]]:
    """The parent's stages with the child's entries merged in by name.

    Args:
        stages: The parent's stages, each with where it was written.
        entries: The child's entries: the fields each gives (``name`` among them), and where.

    Returns:
        Named stages with the fields given replaced, new ones right after the entry listed
            before them (the parent's last stage for the first), each with where last written.
    """
    merged = list(stages)
    after = len(merged) - 1
    for given, where in entries:
        names = [stage.name for stage, _ in merged]
        if given["name"] in names:
            after = names.index(given["name"])
            merged[after] = (replace(merged[after][0], **given), where)
        else:
            after += 1
            merged.insert(after, (Stage(**given), where))
    return merged


def validated(kind: type[Section], raw: Any, where: str) -> Section:
    """One section of a pipeline file as its dataclass, checked as LightningCLI checks a config.

    Args:
        kind: The section's dataclass.
        raw: The section as read from YAML.
        where: The file and key, for messages.

    Returns:
        The section.

    Raises:
        ConfigError: If ``raw`` is not a mapping, has an unknown key, lacks a required one, or
            holds a value of the wrong type.
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


def check_files(stage: Stage, earlier: list[str], where: str) -> None:
    """Checks what types cannot of one entry in its file: a new name, existing config files.

    Args:
        stage: The entry, its config paths resolved.
        earlier: The names of the entries before it in the same file.
        where: The file and key, for messages.

    Raises:
        ConfigError: On a duplicate stage name or a missing config file.
    """
    if stage.name in earlier:
        raise ConfigError(f"{where}: duplicate stage name {stage.name!r}")
    for config in stage.configs:
        if not config.is_file():
            raise ConfigError(f"{where}: config file {config} does not exist")


def check_order(stage: Stage, earlier: list[str], where: str) -> None:
    """Checks that each checkpoint of a merged stage comes from a stage that runs before it.

    Args:
        stage: The stage.
        earlier: The names of the stages before it.
        where: The file and key that last wrote the stage, for messages.

    Raises:
        ConfigError: On a checkpoint taken from a stage that does not run earlier.
    """
    for key, source in stage.checkpoints.items():
        if source not in earlier:
            raise ConfigError(f"{where}: checkpoints.{key} takes stage {source!r}, "
                              f"which does not run before {stage.name!r}")
