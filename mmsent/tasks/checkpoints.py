"""The one loader of weights handed between stages: encoders, heads, fused models, generators.

A stage names its sources by path (``encoders`` per modality, ``init_checkpoint`` for a
fused model): a stage's checkpoint or a model folder from ``mmsent export``, each read once
per task built; ``--ckpt_path`` is kept for resuming the *same* stage. Checkpoints record
their encoders' configurations under :data:`META_KEY`, so a later stage builds its encoders
from them; an encoder it does configure must agree with every record it loads from.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from torch import nn

from mmsent.data.schema import MODALITIES
from mmsent.errors import ConfigError
from mmsent.models.config import (
    META_KEY,
    build_module,
    check_finite,
    class_path,
    matches_record,
    module_config,
)
from mmsent.models.fusion import RegressionHead
from mmsent.models.generative import GENERATORS, EmbeddingGenerator
from mmsent.models.unimodal import UnimodalModel
from mmsent.models.weights import weights_digest
from mmsent.tasks.checkpoint_io import read_checkpoint, reading_once, require_entries

EncoderFactory = Callable[[int], nn.Module]


def sub_state_dict(state: dict, prefix: str) -> dict:
    """The entries of a state dict under a prefix, with the prefix removed.

    Args:
        state (dict): A full state dict.
        prefix (str): E.g. ``"encoder."``.

    Returns:
        dict: The sub-network's state dict.
    """
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def load_weights(task: nn.Module, path: str | Path, what: str = "checkpoint") -> dict:
    """Loads a saved task's weights into a configured one (for scripts and notebooks).

    Args:
        task (nn.Module): The configured task (a LightningModule).
        path (str | Path): Its checkpoint.
        what (str): The config key or role that named the path, for messages.

    Returns:
        dict: The checkpoint as read.
    """
    checkpoint = read_checkpoint(path, what)
    _load_part(task, checkpoint, "", path, what, f"the weights in {path} do not fit the configured task")
    return checkpoint


def encoder_config(encoder: nn.Module) -> dict | None:
    """How to build an encoder again, without the ``input_dim`` the data decides."""
    return module_config(encoder, leave_out=("input_dim",))


def modality_paths(paths: dict[str, str | None] | None, key: str) -> dict[str, str]:
    """The set entries of a mapping from modality to path (``model.encoders``).

    Args:
        paths (dict[str, str | None] | None): The mapping; null entries are left out.
        key (str): The config key, for messages.

    Returns:
        dict[str, str]: Modality -> path.

    Raises:
        ConfigError: If a key is not a modality, naming it.
    """
    unknown = sorted(set(paths or {}) - set(MODALITIES))
    if unknown:
        raise ConfigError(f"{key} names {unknown}, not among the modalities {list(MODALITIES)}")
    return {m: str(p) for m, p in (paths or {}).items() if p}


def build_encoders(factories: dict[str, EncoderFactory | None], sources: dict[str, str],
                   input_dims: dict[str, int], fused_checkpoint: str | None = None) -> nn.ModuleDict:
    """Builds each modality's encoder and loads its weights from where the stage says.

    An encoder comes from its configured factory, else from the record in its source
    (``model.encoders.<modality>``) or in ``model.init_checkpoint``; every record must
    agree with the encoder built.

    Args:
        factories (dict[str, EncoderFactory | None]): Per modality, the configured factory.
        sources (dict[str, str]): Per modality, where its encoder's weights come from.
        input_dims (dict[str, int]): Per modality in the data, the encoder's input size.
        fused_checkpoint (str | None): A fused checkpoint whose encoders to rebuild (its
            weights are loaded later, by :func:`load_fused`).

    Returns:
        nn.ModuleDict: The encoders, in the canonical modality order.

    Raises:
        ValueError: If an encoder is wanted for a modality the data lacks, none is wanted,
            or a record is missing, disagrees or does not fit, naming the keys.
    """
    fused = _read_fused(fused_checkpoint, "model.init_checkpoint")[META_KEY].get("encoder_configs", {}) \
        if fused_checkpoint else {}
    encoders = nn.ModuleDict()
    for modality in MODALITIES:
        key, path = f"model.encoders.{modality}", sources.get(modality)
        records = [(key, path, _encoder_part(read_checkpoint(path, key), modality, path, key)[1])] if path else []
        if modality in fused:
            records.append(("model.init_checkpoint", fused_checkpoint, fused[modality]))
        if factories[modality] is None and not records:
            continue
        if modality not in input_dims:
            raise ConfigError(f"model.{modality}_encoder: the stage wants a {modality} encoder but the data "
                              f"holds only {sorted(input_dims)}")
        encoders[modality] = _build_encoder(modality, factories[modality], records, input_dims[modality])
        if path:
            load_encoder(encoders[modality], modality, path, key)
    if not encoders:
        raise ConfigError("model: configure at least one of text_encoder, audio_encoder, video_encoder "
                          "or the model.encoders to build them from")
    return encoders


def _encoder_part(checkpoint: dict, modality: str, path: str | Path, what: str) -> tuple[str, dict | None]:
    # Where a unimodal, fused or generative checkpoint holds a modality's encoder (the
    # prefix of its weights) and the configuration it records for it.
    meta = checkpoint.get(META_KEY, {})
    if "encoder_configs" in meta:  # a fused or generative model: an encoder per modality
        if modality not in meta["encoder_configs"]:
            raise ConfigError(f"{what}: {path} holds no {modality} encoder, only "
                              f"{'/'.join(meta['encoder_configs']) or 'none'}")
        prefix = "model.encoders." if meta.get("task") == "fusion" else "encoders."
        return f"{prefix}{modality}.", meta["encoder_configs"][modality]
    if meta.get("modality") not in (None, modality):
        raise ConfigError(f"{what}: {path} holds a {meta['modality']} encoder, "
                          f"but it is configured for {modality}")
    return meta.get("encoder_prefix", "encoder."), meta.get("encoder_config")


def _read_fused(path: str | Path, what: str) -> dict:
    checkpoint = read_checkpoint(path, what)
    checkpoint.setdefault(META_KEY, {})
    task = checkpoint[META_KEY].get("task")
    if task not in (None, "fusion"):
        raise ConfigError(f"{what}: {path} holds a {task} model, not a fused one")
    return checkpoint


def _build_encoder(modality: str, factory: EncoderFactory | None, records: list[tuple[str, str, dict | None]],
                   input_dim: int) -> nn.Module:
    key = f"model.{modality}_encoder"
    if factory is not None:
        encoder, source, label = factory(input_dim), f"the configured {modality} encoder", "configured"
    else:
        what, path, config = records[0]
        if config is None:
            raise ConfigError(f"{key} is not set and {path} ({what}) records no encoder configuration "
                             f"to build it from; set {key}")
        encoder = build_module(config, input_dim, what=f"{what} {path}")
        source, label = f"the {modality} encoder recorded in {path} ({what})", str(path)
    built = encoder_config(encoder) or {"class_path": class_path(encoder), "init_args": None}
    for what, path, config in records:
        if config is not None and not _same_config(built, config, type(encoder)):
            raise ConfigError(f"{key}: {source} differs from the one {path} ({what}) was saved "
                             f"with{_differences(built, config)}:\n"
                             f"  {label}: {json.dumps(built, default=repr)}\n"
                             f"  {path}: {json.dumps(config, default=repr)}\n"
                             f"Leave {key} unset to build it from the checkpoint.")
    return encoder


def _same_config(built: dict, recorded: dict, encoder_class: type) -> bool:
    # An encoder class that records no arguments can only be compared by class.
    if built["init_args"] is None:
        return built["class_path"] == recorded["class_path"]
    return matches_record(built, recorded, encoder_class)


def _differences(built: dict, recorded: dict) -> str:
    if built["class_path"] != recorded["class_path"]:
        return f" (class {built['class_path']} vs {recorded['class_path']})"
    names = sorted(set(built["init_args"] or {}) | set(recorded["init_args"]))
    changed = [n for n in names if (built["init_args"] or {}).get(n) != recorded["init_args"].get(n)]
    return f" (in {', '.join(changed)})" if changed else ""


def load_encoder(encoder: nn.Module, modality: str, path: str | Path, what: str) -> None:
    """Loads a pretrained encoder from a stage's checkpoint or a model folder.

    Args:
        encoder (nn.Module): The configured encoder.
        modality (str): The modality it encodes.
        path (str | Path): A unimodal, fused or generative checkpoint, or a model folder.
        what (str): The config key that named the path, for messages.

    Raises:
        ValueError: If the checkpoint holds no such encoder or its weights do not fit.
    """
    checkpoint = read_checkpoint(path, what)
    prefix, config = _encoder_part(checkpoint, modality, path, what)
    saved = (config or {}).get("class_path")
    if saved not in (None, class_path(encoder)):
        raise ConfigError(f"{what}: {path} holds a {saved}, "
                          f"but the configured {modality} encoder is a {class_path(encoder)}")
    _load_part(encoder, checkpoint, prefix, path, what, f"the weights in {path} do not fit the configured "
              f"{modality} encoder {type(encoder).__name__} (a different size?)")


def load_head(head: nn.Module, modality: str, path: str | Path, what: str) -> None:
    """Loads the regression head of a unimodal stage's checkpoint.

    Args:
        head (nn.Module): The configured head.
        modality (str): The modality the unimodal stage was trained on.
        path (str | Path): The unimodal checkpoint.
        what (str): The config key that named the path, for messages.

    Raises:
        ValueError: If the checkpoint holds another modality or its head does not fit.
    """
    checkpoint = read_checkpoint(path, what)
    meta = checkpoint.get(META_KEY, {})
    if meta.get("task") not in (None, "unimodal") or meta.get("modality") not in (None, modality):
        raise ConfigError(f"{what}: {path} holds no unimodal {modality} model to take the head from")
    _load_part(head, checkpoint, "head.", path, what, f"the head in {path} does not fit the fused head (the "
              f"fused embedding must have the {modality} embedding's size, and head_hidden must match)")


@reading_once()
def load_unimodal(path: str | Path, what: str, input_dims: dict[str, int]) -> UnimodalModel:
    """Rebuilds a unimodal stage's whole model (encoder and head) from its checkpoint.

    Args:
        path (str | Path): The unimodal checkpoint.
        what (str): The config key that named the path, for messages.
        input_dims (dict[str, int]): Per modality in the data, the encoder's input size.

    Returns:
        UnimodalModel: The model, frozen, in eval mode.

    Raises:
        ValueError: If the file holds no unimodal model or its modality is not in the data.
    """
    checkpoint = read_checkpoint(path, what)
    meta = checkpoint.get(META_KEY, {})
    modality = meta.get("modality")
    if meta.get("task") != "unimodal" or not meta.get("encoder_config"):
        raise ConfigError(f"{what}: {path} holds no unimodal stage's model (an encoder and a head "
                         "with their recorded configuration)")
    if modality not in input_dims:
        raise ConfigError(f"{what}: {path} holds a {modality} model, but the data holds only {sorted(input_dims)}")
    encoder = build_module(meta["encoder_config"], input_dims[modality], what=f"{what} {path}")
    load_encoder(encoder, modality, path, what)
    settings = checkpoint.get("hyper_parameters", {})
    head = RegressionHead(encoder.out_dim, settings.get("head_hidden", 0), settings.get("head_dropout", 0.0))
    load_head(head, modality, path, what)
    return UnimodalModel(modality, encoder, head).requires_grad_(False).eval()


def load_fused(model: nn.Module, path: str | Path, what: str) -> None:
    """Loads a fused stage's whole model (encoders, fusion, head, modalities in use).

    Args:
        model (nn.Module): The configured :class:`~mmsent.models.LateFusionModel`.
        path (str | Path): The fused checkpoint, or a model folder.
        what (str): The config key that named the path, for messages.

    Raises:
        ValueError: If the checkpoint holds no fused model or its weights do not fit.
    """
    checkpoint = _read_fused(path, what)
    _load_part(model, checkpoint, "model.", path, what, f"the weights in {path} do not fit the configured fused "
              f"model (encoders {list(checkpoint[META_KEY].get('encoder_configs', {}))} in the checkpoint, "
              f"{list(model.encoders)} configured)")


def load_generator(path: str | Path, what: str, encoders: nn.ModuleDict) -> EmbeddingGenerator:
    """Loads a generative stage's generator for the given (loaded, frozen) encoders.

    Args:
        path (str | Path): The generative stage's checkpoint.
        what (str): The config key that named it, for messages.
        encoders (nn.ModuleDict): The encoders whose embeddings it must generate.

    Returns:
        EmbeddingGenerator: The generator, frozen, in eval mode.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it holds no known generator, or one for other embeddings or
            encoder weights, or weights that do not fit.
    """
    checkpoint = read_checkpoint(path, what)
    meta = checkpoint.get(META_KEY, {})
    if meta.get("task") != "generative":
        raise ConfigError(f"{what}: {path} holds a {meta.get('task') or 'non-mmsent'} checkpoint, "
                         "not a generator (train one with mmsent.tasks.GenerativeTask)")
    name = meta.get("generator_class")
    if name not in GENERATORS:
        raise ConfigError(f"{what}: {path} holds an unknown generator {name!r}; known: {sorted(GENERATORS)}")
    require_entries(meta, {"layout": dict, "encoder_digests": dict, "generator_config": dict}, path, what,
                    f"{META_KEY}.")
    dims = {m: e.out_dim for m, e in encoders.items()}
    if list(meta["layout"].items()) != list(dims.items()):
        raise ConfigError(f"{what}: {path} generates embeddings laid out as {meta['layout']}, "
                         f"but the configured encoders produce {dims}")
    other = [m for m, e in encoders.items() if meta["encoder_digests"].get(m) != weights_digest(e)]
    if other:
        raise ConfigError(f"{what}: {path} was trained on the embeddings of other {'/'.join(other)} "
                         "encoder weights; give the generative stage and this stage the same "
                         "unimodal checkpoints")
    generator = GENERATORS[name](**meta["generator_config"])
    _load_part(generator, checkpoint, "generator.", path, what,
              f"the weights in {path} do not fit a {name} built from {meta['generator_config']}")
    return generator.requires_grad_(False).eval()


def _load_part(module: nn.Module, checkpoint: dict, prefix: str, path: str | Path, what: str, misfit: str) -> None:
    # The weights under prefix; misfit says why they may not fit.
    state = sub_state_dict(checkpoint["state_dict"], prefix)
    check_finite(state, f"{what}: {path}", prefix)
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        # Not chained: the CLI reports the innermost cause, and this is the message.
        raise ConfigError(f"{what}: {misfit}: {error}") from None
