"""``mmsent export RUN_DIR --to FOLDER [--stage NAME]``: a pipeline's fused model as a model folder.

The folder holds ``config.json``, ``model.safetensors`` (each tensor once), a ``README.md``
model card and, for a word-level vocabulary, ``tokenizer.json``; the guide "Reuse a trained
model" shows how stages and plain PyTorch take it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from mmsent.data.datamodule import MultimodalDataModule
from mmsent.data.features import FeatureSource
from mmsent.data.mmsa import MMSAPickleSource
from mmsent.data.mosi import MOSISource
from mmsent.data.sdk import SDKSource
from mmsent.data.sources import GeneratedSource, RawClipSource
from mmsent.data.tables import FeatureTableSource
from mmsent.errors import CommandParser, ConfigError, MissingFileError
from mmsent.hub.card import model_card
from mmsent.hub.model import CONFIG_FILE, FORMAT_VERSION, SentimentModel
from mmsent.hub.preprocess import TOKENIZER_FILE, WORD_TOKENIZER, preprocessing_settings
from mmsent.io import write_folder
from mmsent.pipeline.manifest import read_manifest
from mmsent.pipeline.report import report_rows
from mmsent.tasks.checkpoints import META_KEY, load_fused, read_checkpoint, reading_once

MANIFEST_FILE = "manifest.json"


def run_manifest(run_dir: Path) -> dict:
    """A pipeline output folder's manifest, checked as the pipeline checks it.

    Raises:
        MissingFileError: If the folder holds none.
        ConfigError: If it is not a manifest.
    """
    path = run_dir / MANIFEST_FILE
    if not path.is_file():
        raise MissingFileError(f"{run_dir}: no {MANIFEST_FILE}; give the output_dir of a pipeline run")
    return read_manifest(path)


def fused_stage(manifest: dict, run_dir: Path, stage: str | None) -> tuple[str, str, dict]:
    """The stage to export: the one named, else the last finished fused stage.

    Args:
        manifest: The pipeline's manifest.
        run_dir: Its folder, for messages.
        stage: A stage name, or None.

    Returns:
        The stage's name, its handed-on checkpoint and that checkpoint as read.

    Raises:
        ConfigError: If the stage is unknown, unfinished or not fused.
    """
    stages = manifest.get("stages", {})
    names = [stage] if stage else list(reversed(stages))
    for name in names:
        record = stages.get(name)
        if record is None:
            raise ConfigError(f"{run_dir}: no stage {name!r}; stages: {list(stages)}")
        if record.get("status") != "done":
            if stage:
                raise ConfigError(f"{run_dir}: stage {name!r} has not finished")
            continue
        checkpoint = read_checkpoint(record["best_checkpoint"], f"stage {name}")
        if checkpoint.get(META_KEY, {}).get("task") == "fusion":
            return name, record["best_checkpoint"], checkpoint
        if stage:
            raise ConfigError(f"{run_dir}: stage {name!r} holds no fused model")
    raise ConfigError(f"{run_dir}: no finished fused stage to export")


RAW_SOURCES: dict[str, type[RawClipSource]] = {
    f"{module}.{cls.__name__}": cls for cls in (RawClipSource, GeneratedSource)
    for module in ("mmsent.data", "mmsent.data.sources")}
"""The data sources an export rebuilds, by the class paths a stage's config may give them."""
FEATURE_SOURCES = {f"{module}.{cls.__name__}" for cls in (FeatureSource, FeatureTableSource, MMSAPickleSource,
                                                           MOSISource, SDKSource)
                   for module in ("mmsent.data", cls.__module__)}


def stage_data(config_path: str | Path) -> MultimodalDataModule:
    """The DataModule a stage trained on, rebuilt from its saved ``config.yaml``.

    The config is read as data: its data source is built only when it names one of mmsent's
    raw-clip sources (:data:`RAW_SOURCES`); no other name in it is imported.

    Args:
        config_path: The stage's config (recorded in the manifest).

    Returns:
        Its data, prepared (read back from the cache).

    Raises:
        MissingFileError: If the config is missing.
        ConfigError: If it is unreadable or its data source is not one of mmsent's raw-clip
            sources, naming the file and the key.
    """
    path = Path(config_path)
    if not path.is_file():
        raise MissingFileError(f"{path}: the stage's saved config is missing")
    try:
        config = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not readable YAML ({' '.join(str(error).split())})") from None
    data = config.get("data") if isinstance(config, dict) else None
    source_config = data.get("source") if isinstance(data, dict) else None
    if not isinstance(source_config, dict):
        raise ConfigError(f"{path}: data.source must be a mapping with class_path and init_args")
    name = source_config.get("class_path")
    if name in FEATURE_SOURCES:
        raise ConfigError(f"{path}: data.source is a {name}, which reads prepared features; scoring "
                          f"raw clips needs a model trained on raw clips (RawClipSource or GeneratedSource)")
    if name not in RAW_SOURCES:
        raise ConfigError(f"{path}: data.source.class_path {name!r} is not one of mmsent's raw-clip sources "
                          f"({', '.join(sorted(RAW_SOURCES))}); an export reads a run folder as data and "
                          f"imports nothing it names")
    arguments = source_config.get("init_args") or {}
    if not isinstance(arguments, dict):
        raise ConfigError(f"{path}: data.source.init_args must be a mapping, got {arguments!r:.80}")
    try:
        source = RAW_SOURCES[name](**arguments)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{path}: data.source.init_args: {error}") from error
    return MultimodalDataModule(source, data.get("cache_dir", "data/cache"),
                                on_decode_error=data.get("on_decode_error", "mask"))


def model_config(checkpoint: dict, path: str, datamodule: MultimodalDataModule) -> dict:
    """The model folder's ``config.json`` for a fused checkpoint and its data.

    Args:
        checkpoint: The fused checkpoint, as read.
        path: Its file, for messages.
        datamodule: The data it was trained on.

    Returns:
        The config.

    Raises:
        ConfigError: If the checkpoint does not record its fusion module and head.
    """
    meta = checkpoint[META_KEY]
    missing = [key for key in ("encoder_configs", "fusion_config", "head_config") if not meta.get(key)]
    if missing:
        raise ConfigError(f"{path}: the checkpoint records no {', '.join(missing)} (saved by an older "
                          f"mmsent); run the stage again to export it")
    spec = datamodule.spec
    encoders = {m: {"class_path": c["class_path"], "init_args": {"input_dim": spec.input_dims[m], **c["init_args"]}}
                for m, c in meta["encoder_configs"].items()}
    active = checkpoint["state_dict"]["model.active"].tolist()
    source = datamodule.source
    if "text" in source.modalities:
        _fit_tokenizer(source, datamodule.prepared.path)
    return {"format_version": FORMAT_VERSION, "encoders": encoders,
            "fusion": meta["fusion_config"], "head": meta["head_config"],
            "active_modalities": [m for m, on in zip(encoders, active, strict=True) if on],
            "preprocessing": preprocessing_settings(source, spec)}


def _fit_tokenizer(source: RawClipSource, cache_folder: Path) -> None:
    if source.tokenizer.name == WORD_TOKENIZER:
        source.tokenizer.load(cache_folder / TOKENIZER_FILE)
    else:
        source.tokenizer.fit([], cache_folder)


def is_model_folder(folder: Path) -> bool:
    """Whether a folder holds an mmsent export (a ``config.json`` with a ``format_version``)."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and "format_version" in config


def check_target(to: Path, overwrite: bool) -> None:
    """Refuses to replace what is not an earlier export, unless told to.

    Args:
        to: The model folder to write.
        overwrite: Replace whatever is there.

    Raises:
        ConfigError: If ``to`` exists, is not empty and is no mmsent model folder.
    """
    if overwrite or not (to.exists() or to.is_symlink()):
        return
    if to.is_dir() and not to.is_symlink() and (not any(to.iterdir()) or is_model_folder(to)):
        return
    raise ConfigError(f"{to}: exists and is not an mmsent model folder (no {CONFIG_FILE} with a "
                      f"format_version); an export replaces the whole folder, so choose another --to "
                      f"or pass --overwrite to replace it")


def export(run_dir: str | Path, to: str | Path, stage: str | None = None, overwrite: bool = False) -> Path:
    """Writes a pipeline's fused model as a model folder, all at once.

    The folder is written beside ``to`` and renamed into place: an export killed or out of
    disk leaves the previous folder, or none.

    Args:
        run_dir: The pipeline's output folder (``runs/<name>``).
        to: The model folder to write (created, or replaced whole).
        stage: The stage to export; by default the last fused one.
        overwrite: Replace ``to`` even when it is not an earlier export.

    Returns:
        The model folder.

    Raises:
        ConfigError: If ``to`` holds something other than an export (without ``overwrite``).
    """
    to = Path(to)
    check_target(to, overwrite)
    return write_folder(to, folder_writer(run_dir, stage))


def folder_writer(run_dir: str | Path, stage: str | None = None) -> Callable[[Path], None]:
    """Reads a pipeline's fused stage and prepares its model folder's files.

    Args:
        run_dir: The pipeline's output folder.
        stage: The stage to export; by default the last fused one.

    Returns:
        Writes the model folder's files into the (empty) folder it is given.
    """
    run_dir = Path(run_dir)
    manifest = run_manifest(run_dir)
    with reading_once():
        name, checkpoint_path, checkpoint = fused_stage(manifest, run_dir, stage)
        datamodule = stage_data(manifest["stages"][name]["config"])
        config = model_config(checkpoint, checkpoint_path, datamodule)
        model = SentimentModel(config)
        load_fused(model.model, checkpoint_path, f"stage {name}")
    card = model_card(config, manifest, report_rows(manifest), name, datamodule)

    def write(folder: Path) -> None:
        (folder / "README.md").write_text(card)
        model.save_pretrained(folder)
        if config["preprocessing"]["text"]["tokenizer_file"]:
            shutil.copyfile(datamodule.prepared.path / TOKENIZER_FILE, folder / TOKENIZER_FILE)

    return write


def main(args: list[str] | None = None) -> None:
    """``mmsent export``: parses the arguments and exports.

    Args:
        args: The arguments after ``export``.

    Raises:
        UsageError: On arguments it cannot parse.
        MMSentError: On a bad run folder or stage, naming it (``mmsent.main`` shows it).
    """
    parser = CommandParser(prog="mmsent export",
                           description="Write a finished pipeline's fused model as a model folder.")
    parser.add_argument("run_dir", help="the pipeline's output folder, e.g. runs/quickstart")
    parser.add_argument("--to", required=True, help="the model folder to write, e.g. models/quickstart")
    parser.add_argument("--stage", help="the stage to export (default: the last fused stage)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the --to folder even when it is not an earlier export")
    parsed = parser.parse_args(args)
    # An export's output is the folder; all it says is a notice.
    with contextlib.redirect_stdout(sys.stderr):
        folder = export(parsed.run_dir, parsed.to, parsed.stage, parsed.overwrite)
        print(f"exported to {folder}")
