"""The one loader of weights handed between stages: encoders, heads, fused models and
generators.

A stage names where its weights come from by path, as init arguments: ``encoders``
maps a modality to the file its encoder comes from, ``init_checkpoint`` names a fused
model to start from (see :class:`mmsent.tasks.FusionTask`). A path is a stage's
checkpoint or a model folder written by ``mmsent export``, which reads as the fused
checkpoint it came from. :func:`read_checkpoint` reads every such file with
``weights_only=True`` (:func:`mmsent.models.weights.read_weights_file`), once per task
built (:func:`reading_once`). LightningCLI's ``--ckpt_path`` is kept for resuming or
evaluating the *same* stage.

Checkpoints record what built their networks under :data:`META_KEY`: a unimodal one
its encoder's configuration (``{"class_path", "init_args"}``, see
:mod:`mmsent.models.config`), a fused or generative one each encoder's. A later stage
builds its encoders from these records, so its config names no encoder; an encoder it
does configure must agree with every record it loads weights from.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from torch import nn

from mmsent.data.schema import MODALITIES
from mmsent.errors import ConfigError
from mmsent.io import read_json
from mmsent.models.config import (
    META_KEY,
    build_module,
    check_finite,
    check_saved_config,
    class_path,
    matches_record,
    module_config,
    read_safetensors,
)
from mmsent.models.fusion import RegressionHead
from mmsent.models.generative import GENERATORS, EmbeddingGenerator
from mmsent.models.unimodal import UnimodalModel
from mmsent.models.weights import fill_rebuilt, read_weights_file, weights_digest

EncoderFactory = Callable[[int], nn.Module]
_READ: ContextVar[dict[str, dict] | None] = ContextVar("mmsent_checkpoints_read", default=None)


@contextmanager
def reading_once() -> Iterator[None]:
    """Within it, :func:`read_checkpoint` reads each file once and hands every later
    caller the same contents (a task's ``__init__`` asks for one file several times:
    its encoder, its head, its recorded validation MAE)."""
    token = _READ.set({} if _READ.get() is None else _READ.get())
    try:
        yield
    finally:
        _READ.reset(token)


def read_checkpoint(path: str | Path, what: str) -> dict:
    """Reads a stage's checkpoint, or a model folder as the fused checkpoint it came from.

    Args:
        path (str | Path): A checkpoint file, or a folder written by ``mmsent export``.
        what (str): The config key that named it, for messages.

    Returns:
        dict: The checkpoint (``state_dict``, :data:`META_KEY`, ``hyper_parameters``,
        ``callbacks``, as far as the file holds them); within :func:`reading_once`,
        the same dict for the same file.

    Raises:
        MissingFileError: If the file does not exist, naming the key and path.
        ConfigError: If the file is refused or unreadable, or lacks its weights or
            holds its metadata in another form, naming the key, path and entry.
    """
    read = _READ.get()
    key = str(Path(path).resolve())
    if read is not None and key in read:
        return read[key]
    checkpoint = _read_model_folder(Path(path), what) if Path(path).is_dir() else read_weights_file(path, what)
    if not isinstance(checkpoint, dict):
        raise ConfigError(f"{what}: checkpoint {path} holds a {type(checkpoint).__name__}, not a "
                          f"Lightning checkpoint")
    require_entries(checkpoint, {"state_dict": dict}, path, what)
    if META_KEY in checkpoint:
        require_entries(checkpoint, {META_KEY: dict}, path, what)
    if read is not None:
        read[key] = checkpoint
    return checkpoint


def _read_model_folder(folder: Path, what: str) -> dict:
    config = read_json(folder / "config.json") if (folder / "config.json").is_file() else None
    if not isinstance(config, dict) or not all(isinstance(config.get(k), dict) for k in ("encoders", "fusion", "head")):
        raise ConfigError(f"{what}: {folder} is a folder but no model folder of mmsent export (a config.json "
                          f"with encoders, fusion and head)")
    check_saved_config(folder / "model.safetensors", config)
    state, omitted = read_safetensors(folder / "model.safetensors")
    if not isinstance(omitted, dict):
        raise ConfigError(f"{what}: {folder / 'model.safetensors'}: its header's record of the weights left out "
                          f"is not a mapping")
    encoders = {m: {"class_path": record.get("class_path"),
                    "init_args": {k: v for k, v in (record.get("init_args") or {}).items() if k != "input_dim"}}
                for m, record in config["encoders"].items() if isinstance(record, dict)}
    # The modality the fusion is built on, so that a stage starting from it builds it alike.
    primary = (config["fusion"].get("init_args") or {}).get("primary")
    return {"state_dict": state, "hyper_parameters": {"head_hidden": (config["head"].get("init_args") or {})
                                                      .get("hidden_dim", 0)},
            META_KEY: {"task": "fusion", "encoder_configs": encoders, "fusion_config": config["fusion"],
                       "head_config": config["head"], "rebuilt": omitted,
                       "unimodal": {"scores": {}, "checkpoints": {}, "head_modality": primary}}}


def current_hyperparameters(saved: dict) -> dict:
    """A checkpoint's saved init arguments under today's names.

    A checkpoint from mmsent before ``encoders`` (up to 53a6aae) names each source in
    an argument of its own: ``<m>_checkpoint`` (the unimodal stage: encoder, head,
    validation MAE), ``<m>_encoder_checkpoint`` (the encoder's weights instead) and
    ``fixed_<m>_checkpoint`` (a backfitting stage's fixed models).

    Args:
        saved (dict): The checkpoint's ``hyper_parameters``.

    Returns:
        dict: The same arguments, those in ``encoders``, ``unimodal`` and ``fixed``.
    """
    current = dict(saved)
    for m in MODALITIES:
        unimodal, encoder = current.pop(f"{m}_checkpoint", None), current.pop(f"{m}_encoder_checkpoint", None)
        fixed = current.pop(f"fixed_{m}_checkpoint", None)
        if unimodal or encoder:
            current.setdefault("encoders", {})[m] = encoder or unimodal
        if unimodal and encoder:
            current.setdefault("unimodal", {})[m] = unimodal
        if fixed:
            current.setdefault("fixed", {})[m] = fixed
    return current


def require_entries(record: dict, kinds: dict[str, type], path: str | Path, what: str, within: str = "") -> None:
    """Checks that a checkpoint (or its metadata) holds the entries read from it.

    Args:
        record (dict): The checkpoint, or a part of it.
        kinds (dict[str, type]): Per entry, the type it must have.
        path (str | Path): The checkpoint, for the message.
        what (str): The config key that named it, for the message.
        within (str): Where ``record`` sits in the checkpoint (``"mmsent."``).

    Raises:
        ConfigError: Naming the key, the file and the entry missing or of another type.
    """
    for key, kind in kinds.items():
        if key not in record:
            raise ConfigError(f"{what}: checkpoint {path} has no entry {within}{key}: it was not written by "
                              f"mmsent, or was altered since")
        if not isinstance(record[key], kind):
            raise ConfigError(f"{what}: checkpoint {path}: entry {within}{key} is a "
                              f"{type(record[key]).__name__}, not a {kind.__name__}: it was altered")


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
    """Loads a saved task's weights into a configured one, rebuilt weights put back.

    The plain-PyTorch counterpart of Lightning's ``ckpt_path`` loading, for scripts
    and notebooks.

    Args:
        task (nn.Module): The configured task (a LightningModule).
        path (str | Path): Its checkpoint.
        what (str): The config key or role that named the path, for messages.

    Returns:
        dict: The checkpoint as read.
    """
    checkpoint = read_checkpoint(path, what)
    rebuilt = checkpoint.get(META_KEY, {}).get("rebuilt", {})
    check_finite(checkpoint["state_dict"], f"{what}: {path}")
    task.load_state_dict(fill_rebuilt(dict(checkpoint["state_dict"]), task, rebuilt, "", what))
    return checkpoint


def encoder_config(encoder: nn.Module) -> dict | None:
    """dict | None: How to build an encoder again, without the ``input_dim`` the data
    decides (:func:`mmsent.models.config.module_config`)."""
    return module_config(encoder, leave_out=("input_dim",))


def modality_paths(paths: dict[str, str | None] | None, key: str) -> dict[str, str]:
    """The set entries of a mapping from modality to path (``model.encoders``).

    Args:
        paths (dict[str, str | None] | None): The mapping as configured; an entry set
            to null is left out.
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

    A modality's encoder comes from its factory (``model.<modality>_encoder``) when
    one is configured, else from the configuration recorded in its source
    (``model.encoders.<modality>``: a unimodal, fused or generative stage's checkpoint,
    or a model folder) or in the fused checkpoint the stage starts from
    (``model.init_checkpoint``). Every record must agree with the encoder built.

    Args:
        factories (dict[str, EncoderFactory | None]): Per modality, the configured
            encoder factory or None.
        sources (dict[str, str]): Per modality, where its encoder's weights come from
            (:func:`modality_paths`).
        input_dims (dict[str, int]): Per modality in the data, the encoder's input size.
        fused_checkpoint (str | None): A fused checkpoint whose encoders to rebuild
            (its weights are loaded later, with :func:`load_fused`).

    Returns:
        nn.ModuleDict: The encoders, in the canonical modality order.

    Raises:
        ValueError: If an encoder is wanted for a modality the data lacks, none is
            wanted, a record is missing or disagrees with the configuration, or a
            source does not fit (see :func:`load_encoder`), naming the keys.
    """
    fused = _read_fused(fused_checkpoint, "model.init_checkpoint")[META_KEY].get("encoder_configs", {}) \
        if fused_checkpoint else {}
    encoders = nn.ModuleDict()
    for modality in MODALITIES:
        key, path = f"model.encoders.{modality}", sources.get(modality)
        records = [(key, path, encoder_part(read_checkpoint(path, key), modality, path, key)[1])] if path else []
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


def encoder_part(checkpoint: dict, modality: str, path: str | Path, what: str) -> tuple[str, dict | None]:
    """Where a checkpoint holds a modality's encoder, and the configuration it records.

    Args:
        checkpoint (dict): A unimodal, fused or generative checkpoint, as read.
        modality (str): The encoder's modality.
        path (str | Path): The checkpoint, for messages.
        what (str): The config key that named it, for messages.

    Returns:
        tuple[str, dict | None]: The prefix of its weights in ``state_dict`` and its
        recorded ``{"class_path", "init_args"}`` (None if the checkpoint records none).

    Raises:
        ConfigError: If the checkpoint holds no encoder of that modality.
    """
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
        ValueError: If the checkpoint holds no encoder of that modality or another
            encoder class, or its weights do not fit, naming both sides.
    """
    checkpoint = read_checkpoint(path, what)
    prefix, config = encoder_part(checkpoint, modality, path, what)
    saved = (config or {}).get("class_path")
    if saved not in (None, class_path(encoder)):
        raise ConfigError(f"{what}: {path} holds a {saved}, "
                          f"but the configured {modality} encoder is a {class_path(encoder)}")
    state = sub_state_dict(checkpoint["state_dict"], prefix)
    check_finite(state, f"{what}: {path}", prefix)
    fill_rebuilt(state, encoder, checkpoint.get(META_KEY, {}).get("rebuilt", {}), prefix, what)
    try:
        encoder.load_state_dict(state)
    except RuntimeError as error:
        raise ConfigError(f"{what}: the weights in {path} do not fit the configured {modality} "
                          f"encoder {type(encoder).__name__} (a different size?): {error}") from error


def load_head(head: nn.Module, modality: str, path: str | Path, what: str) -> None:
    """Loads the regression head of a unimodal stage's checkpoint.

    Args:
        head (nn.Module): The configured head.
        modality (str): The modality the unimodal stage was trained on.
        path (str | Path): The unimodal checkpoint.
        what (str): The config key that named the path, for messages.

    Raises:
        ValueError: If the checkpoint holds another modality, or its head does not fit
            the configured one, naming both sides.
    """
    checkpoint = read_checkpoint(path, what)
    meta = checkpoint.get(META_KEY, {})
    if meta.get("task") not in (None, "unimodal") or meta.get("modality") not in (None, modality):
        raise ConfigError(f"{what}: {path} holds no unimodal {modality} model to take the head from")
    state = sub_state_dict(checkpoint["state_dict"], "head.")
    check_finite(state, f"{what}: {path}", "head.")
    try:
        head.load_state_dict(state)
    except RuntimeError as error:
        raise ConfigError(f"{what}: the head in {path} does not fit the fused head (the fused "
                         f"embedding must have the {modality} embedding's size, and head_hidden "
                         f"must match): {error}") from error


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
        ValueError: If the file holds no unimodal model, its modality is not in the
            data, or it records no encoder configuration, naming the key.
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
    meta = checkpoint[META_KEY]
    state = sub_state_dict(checkpoint["state_dict"], "model.")
    check_finite(state, f"{what}: {path}", "model.")
    fill_rebuilt(state, model, meta.get("rebuilt", {}), "model.", what)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ConfigError(f"{what}: the weights in {path} do not fit the configured fused model "
                         f"(encoders {list(meta.get('encoder_configs', {}))} in the checkpoint, "
                         f"{list(model.encoders)} configured): {error}") from error


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
        ValueError: If it holds no generator, an unknown generator class, another
            embedding layout, weights that do not fit, or was trained on other encoder
            weights, naming the key and path.
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
    state = sub_state_dict(checkpoint["state_dict"], "generator.")
    check_finite(state, f"{what}: {path}", "generator.")
    try:
        generator.load_state_dict(state)
    except RuntimeError as error:
        # Not chained: the CLI reports the innermost cause, and this is the message.
        raise ConfigError(f"{what}: the weights in {path} do not fit a {name} built from "
                         f"{meta['generator_config']}: {error}") from None
    return generator.requires_grad_(False).eval()
