"""Handing weights from one stage to the next, through init arguments.

A stage names the checkpoints it starts from (a path); the task loads the matching
sub-network's state dict with ``weights_only=True``. LightningCLI's ``--ckpt_path``
is kept for resuming or evaluating the *same* stage.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

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
        raise FileNotFoundError(f"{what}: checkpoint {path} does not exist")
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
        raise ValueError(f"{what}: {path} holds a {meta['modality']} encoder, "
                         f"but it is configured for {modality}")
    if meta.get("encoder_class") not in (None, configured):
        raise ValueError(f"{what}: {path} holds a {meta['encoder_class']}, "
                         f"but the configured {modality} encoder is a {configured}")
    state = sub_state_dict(checkpoint["state_dict"], meta.get("encoder_prefix", "encoder."))
    try:
        encoder.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{what}: the weights in {path} do not fit the configured {modality} "
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
        raise ValueError(f"{what}: {path} holds no unimodal {modality} model to take the head from")
    try:
        head.load_state_dict(sub_state_dict(checkpoint["state_dict"], "head."))
    except RuntimeError as error:
        raise ValueError(f"{what}: the head in {path} does not fit the fused head (the fused "
                         f"embedding must have the {modality} embedding's size, and head_hidden "
                         f"must match): {error}") from error
