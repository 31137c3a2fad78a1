"""The pipeline file: its sections as dataclasses, validated by jsonargparse.

A pipeline file names the stages in run order, each a stack of LightningCLI config
files (paths relative to the pipeline file), the earlier stages whose best
checkpoints it receives, and further arguments; an optional ``wandb:`` section
turns W&B tracking on. Every mistake is reported before any stage runs, naming
the file and the key: an unknown key, a value of the wrong type, a missing config
file, a duplicate stage, or a checkpoint taken from a stage that does not run
earlier.

A pipeline file may build on another with ``extends: <file>`` (relative to it) and
say only what differs:

* ``args`` and ``wandb`` given in the file replace the parent's whole; those it
  leaves out are the parent's. ``name`` and ``output_dir`` are never inherited: left
  out, they follow the file's own stem, so two pipelines never share a run folder.
* ``stages`` merge by name. An entry naming a stage of the parent replaces the fields
  it gives (``configs``, ``checkpoints``, ``args``, each whole) and keeps the others.
  An entry with a new name adds a stage right after the entry listed before it in
  the file, or after the parent's last stage when it is listed first; an entry with
  only a name changes nothing and can place the new stages after it. A stage is never
  removed.
* Config paths are relative to the file that writes them; the parent may extend
  another in turn, and a chain that comes back to a file is refused, naming the files.
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
        stages (list[dict[str, Any]]): One :class:`Stage` mapping per stage; with
            ``extends``, the stages to add or change.
        extends (str | None): The pipeline file this one builds on, relative to it.
        name (str | None): The pipeline's name; None takes the file's stem.
        output_dir (Path | None): Where its runs go; None: ``runs/<file stem>``.
        args (list[str]): Command-line arguments added to every stage.
        wandb (dict[str, Any] | None): A :class:`WandbSettings` mapping.
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
    """Reads and validates a pipeline file, and the files it extends.

    Args:
        path (str | Path): The YAML file; config paths inside are relative to it.

    Returns:
        Pipeline: The pipeline, the files it extends merged in.

    Raises:
        MissingFileError: If ``path`` does not exist.
        ConfigError: On a file that is not YAML, an unknown key, a value of the wrong type, a missing config
            or extended file, a duplicate stage, a checkpoint taken from a stage that
            does not run earlier, or a chain of ``extends`` coming back to a file,
            naming the file and the key.
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
    """One pipeline file with the files it extends merged in, as the module describes.

    Args:
        path (Path): The file.
        chain (list[Path]): The files that extend it, outermost first.

    Returns:
        tuple[dict[str, Any], list[tuple[Stage, str]]]: The top-level keys set
        (``wandb`` as :class:`WandbSettings`), and the stages in run order, each with
        the file and key that last wrote it, for messages.

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
        stages (list[tuple[Stage, str]]): The parent's stages, each with where it was
            written.
        entries (list[tuple[dict[str, Any], str]]): The child's entries, each the
            fields it gives (``name`` among them) and where it was written.

    Returns:
        list[tuple[Stage, str]]: A named stage with the fields given replaced, a new
        one right after the entry listed before it (the parent's last stage for the
        first), each with where it was last written.
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


def check_files(stage: Stage, earlier: list[str], where: str) -> None:
    """What the types cannot tell of one entry in its file: its name is new there and
    its config files exist.

    Args:
        stage (Stage): The entry, its config paths resolved.
        earlier (list[str]): The names of the entries before it in the same file.
        where (str): The file and key, for messages.

    Raises:
        ConfigError: On a duplicate stage name or a missing config file.
    """
    if stage.name in earlier:
        raise ConfigError(f"{where}: duplicate stage name {stage.name!r}")
    for config in stage.configs:
        if not config.is_file():
            raise ConfigError(f"{where}: config file {config} does not exist")


def check_order(stage: Stage, earlier: list[str], where: str) -> None:
    """What the types cannot tell of a stage in the merged pipeline: each checkpoint
    comes from a stage that runs before it.

    Args:
        stage (Stage): The stage.
        earlier (list[str]): The names of the stages before it.
        where (str): The file and key that last wrote the stage, for messages.

    Raises:
        ConfigError: On a checkpoint taken from a stage that does not run earlier.
    """
    for key, source in stage.checkpoints.items():
        if source not in earlier:
            raise ConfigError(f"{where}: checkpoints.{key} takes stage {source!r}, "
                              f"which does not run before {stage.name!r}")
