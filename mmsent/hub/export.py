"""``mmsent export RUN_DIR --to FOLDER [--stage NAME]``: a finished pipeline's fused
model as a self-contained model folder.

The folder holds ``config.json`` (networks, modalities in use, every preprocessing
setting, the format version), ``model.safetensors``, a ``README.md`` model card, each
encoder alone under ``encoders/<modality>/`` (loadable with its class's
``from_pretrained``) and, for a word-level vocabulary, ``tokenizer.json``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
from pathlib import Path

import yaml

from mmsent.data.datamodule import MultimodalDataModule
from mmsent.data.sources import RawClipSource
from mmsent.errors import ConfigError, MissingFileError, MMSentError
from mmsent.hub.card import model_card
from mmsent.hub.model import FORMAT_VERSION, SentimentModel
from mmsent.hub.preprocess import TOKENIZER_FILE, WORD_TOKENIZER, preprocessing_settings
from mmsent.pipeline.report import report_rows
from mmsent.tasks.checkpoints import META_KEY, load_fused, read_checkpoint

MANIFEST_FILE = "manifest.json"


def read_manifest(run_dir: Path) -> dict:
    """dict: A pipeline output folder's manifest.

    Raises:
        MissingFileError: If the folder holds none.
    """
    path = run_dir / MANIFEST_FILE
    if not path.is_file():
        raise MissingFileError(f"{run_dir}: no {MANIFEST_FILE}; give the output_dir of a pipeline run")
    return json.loads(path.read_text())


def fused_stage(manifest: dict, run_dir: Path, stage: str | None) -> tuple[str, str, dict]:
    """The stage to export: the one named, else the last finished fused stage.

    Args:
        manifest (dict): The pipeline's manifest.
        run_dir (Path): Its folder, for messages.
        stage (str | None): A stage name, or None.

    Returns:
        tuple[str, str, dict]: The stage's name, its handed-on checkpoint and that
        checkpoint as read.

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


def stage_data(config_path: str | Path) -> MultimodalDataModule:
    """The DataModule a stage trained on, rebuilt from its saved ``config.yaml``.

    Args:
        config_path (str | Path): The stage's config (recorded in the manifest).

    Returns:
        MultimodalDataModule: Its data, prepared (read back from the cache).

    Raises:
        MissingFileError: If the config is missing.
        ConfigError: If its data source does not read raw clips.
    """
    path = Path(config_path)
    if not path.is_file():
        raise MissingFileError(f"{path}: the stage's saved config is missing")
    data = yaml.safe_load(path.read_text())["data"]
    module_name, _, name = data["source"]["class_path"].rpartition(".")
    source = getattr(importlib.import_module(module_name), name)(**data["source"].get("init_args", {}))
    if not isinstance(source, RawClipSource):
        raise ConfigError(f"{path}: data.source is a {name}, which reads prepared features; scoring "
                          f"raw clips needs a model trained on raw clips (RawClipSource or a subclass)")
    return MultimodalDataModule(source, data.get("cache_dir", "data/cache"),
                                on_decode_error=data.get("on_decode_error", "mask"))


def model_config(checkpoint: dict, path: str, datamodule: MultimodalDataModule) -> dict:
    """The model folder's ``config.json`` for a fused checkpoint and its data.

    Args:
        checkpoint (dict): The fused checkpoint, as read.
        path (str): Its file, for messages.
        datamodule (MultimodalDataModule): The data it was trained on.

    Returns:
        dict: The config.

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


def export(run_dir: str | Path, to: str | Path, stage: str | None = None) -> Path:
    """Writes a pipeline's fused model as a model folder.

    Args:
        run_dir (str | Path): The pipeline's output folder (``runs/<name>``).
        to (str | Path): The model folder to write (created; its files replaced).
        stage (str | None): The stage to export; by default the last fused one.

    Returns:
        Path: The model folder.
    """
    run_dir, to = Path(run_dir), Path(to)
    manifest = read_manifest(run_dir)
    name, checkpoint_path, checkpoint = fused_stage(manifest, run_dir, stage)
    datamodule = stage_data(manifest["stages"][name]["config"])
    config = model_config(checkpoint, checkpoint_path, datamodule)
    model = SentimentModel(config)
    load_fused(model.model, checkpoint_path, f"stage {name}")
    to.mkdir(parents=True, exist_ok=True)
    (to / "README.md").write_text(model_card(config, manifest, report_rows(manifest), name, datamodule))
    model.save_pretrained(to)
    for modality, encoder in model.encoders.items():
        encoder.save_pretrained(to / "encoders" / modality)
    if config["preprocessing"]["text"]["tokenizer_file"]:
        shutil.copyfile(datamodule.prepared.path / TOKENIZER_FILE, to / TOKENIZER_FILE)
    return to


def main(args: list[str] | None = None) -> None:
    """``mmsent export``: parses the arguments and exports.

    Args:
        args (list[str] | None): The arguments after ``export``.

    Raises:
        SystemExit: With the message of a bad run folder or stage.
    """
    parser = argparse.ArgumentParser(prog="mmsent export",
                                     description="Write a finished pipeline's fused model as a model folder.")
    parser.add_argument("run_dir", help="the pipeline's output folder, e.g. runs/quickstart")
    parser.add_argument("--to", required=True, help="the model folder to write, e.g. models/quickstart")
    parser.add_argument("--stage", help="the stage to export (default: the last fused stage)")
    parsed = parser.parse_args(args)
    try:
        folder = export(parsed.run_dir, parsed.to, parsed.stage)
    except MMSentError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"exported to {folder}")
