"""Handing weights from one stage to the next, through init arguments.

A stage names the checkpoints it starts from (a path); the task loads the matching
sub-network's state dict with ``weights_only=True``. LightningCLI's ``--ckpt_path``
is kept for resuming or evaluating the *same* stage.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from mmsent.errors import ConfigError, MissingFileError

META_KEY = "mmsent"


def read_checkpoint(path: str | Path, what: str) -> dict:
    """Loads a Lightning checkpoint safely (tensors and plain data only).

    Args:
        path (str | Path): The checkpoint file.
        what (str): The config key that named it, for the message.

    Returns:
        dict: The checkpoint.

    Raises:
        FileNotFoundError: If the file does not exist, naming the key and path.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what}: checkpoint {path} does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)


def sub_state_dict(state: dict, prefix: str) -> dict:
    """The entries of a state dict under a prefix, with the prefix removed.

    Args:
        state (dict): A full state dict.
        prefix (str): E.g. ``"encoder."``.

    Returns:
        dict: The sub-network's state dict.
    """
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def fingerprint(tensor: torch.Tensor) -> dict:
    """What tells two weight tensors apart: shape, dtype and a hash of the bytes.

    Args:
        tensor (torch.Tensor): The weights.

    Returns:
        dict: ``shape``, ``dtype`` and ``sha1``.
    """
    data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return {"shape": list(tensor.shape), "dtype": str(tensor.dtype), "sha1": hashlib.sha1(data).hexdigest()}


def omit_rebuilt(module: nn.Module, state: dict) -> dict[str, dict]:
    """Removes from a state dict the frozen weights its modules rebuild from their config.

    A submodule opts in with ``rebuilt_state_keys()`` (e.g. a frozen pretrained
    embedding table); each key left out is recorded with its :func:`fingerprint`, so
    loading can check that the configured module rebuilds the same weights.

    Args:
        module (nn.Module): The module whose ``state_dict()`` ``state`` is.
        state (dict): Changed in place.

    Returns:
        dict[str, dict]: Full key -> fingerprint of each weight left out.
    """
    omitted = {}
    for prefix, sub in module.named_modules():
        for key in getattr(sub, "rebuilt_state_keys", list)():
            full = f"{prefix}.{key}" if prefix else key
            if full in state:
                omitted[full] = fingerprint(state.pop(full))
    return omitted


def fill_rebuilt(state: dict, module: nn.Module, omitted: dict[str, dict], prefix: str, what: str) -> dict:
    """Puts back the weights a checkpoint left out, taken from the configured module.

    Args:
        state (dict): The (sub-)state dict to load into ``module``; changed in place.
        module (nn.Module): The configured module, holding the rebuilt weights.
        omitted (dict[str, dict]): The checkpoint's record (:func:`omit_rebuilt`).
        prefix (str): What the checkpoint's keys have in front of ``module``'s keys.
        what (str): The config key or file, for the message.

    Returns:
        dict: ``state``.

    Raises:
        ValueError: If the configured module rebuilds other weights than were saved.
    """
    own = module.state_dict()
    for key, expected in omitted.items():
        local = key[len(prefix):] if key.startswith(prefix) else None
        if local not in own:
            continue  # not part of this module; load_state_dict names anything missing
        found = fingerprint(own[local])
        if found != expected:
            raise ConfigError(f"{what}: {key} was left out of the checkpoint, to be rebuilt from the "
                              f"configuration (a frozen pretrained table), but the configured module "
                              f"rebuilds other weights (shape {found['shape']} vs {expected['shape']}); "
                              f"configure the same pretrained_embeddings as the run that saved it")
        state[local] = own[local]
    return state


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
    task.load_state_dict(fill_rebuilt(dict(checkpoint["state_dict"]), task, rebuilt, "", what))
    return checkpoint


def load_encoder(encoder: nn.Module, modality: str, path: str | Path, what: str) -> None:
    """Loads a pretrained encoder from a unimodal stage's checkpoint.

    Args:
        encoder (nn.Module): The configured encoder.
        modality (str): The modality it encodes.
        path (str | Path): The unimodal checkpoint.
        what (str): The config key that named the path, for messages.

    Raises:
        ValueError: If the checkpoint holds another modality or another encoder
            class, or its weights do not fit, naming both sides.
    """
    checkpoint = read_checkpoint(path, what)
    meta = checkpoint.get(META_KEY, {})
    configured = type(encoder).__name__
    if meta.get("modality") not in (None, modality):
        raise ConfigError(f"{what}: {path} holds a {meta['modality']} encoder, "
                          f"but it is configured for {modality}")
    if meta.get("encoder_class") not in (None, configured):
        raise ConfigError(f"{what}: {path} holds a {meta['encoder_class']}, "
                          f"but the configured {modality} encoder is a {configured}")
    prefix = meta.get("encoder_prefix", "encoder.")
    state = sub_state_dict(checkpoint["state_dict"], prefix)
    fill_rebuilt(state, encoder, meta.get("rebuilt", {}), prefix, what)
    try:
        encoder.load_state_dict(state)
    except RuntimeError as error:
        raise ConfigError(f"{what}: the weights in {path} do not fit the configured {modality} "
                          f"encoder {configured} (a different size?): {error}") from error


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
    try:
        head.load_state_dict(sub_state_dict(checkpoint["state_dict"], "head."))
    except RuntimeError as error:
        raise ConfigError(f"{what}: the head in {path} does not fit the fused head (the fused "
                          f"embedding must have the {modality} embedding's size, and head_hidden "
                          f"must match): {error}") from error
