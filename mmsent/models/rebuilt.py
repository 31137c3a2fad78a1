"""Weights a checkpoint leaves out and rebuilds from the configuration, and the
hashes that recognize weights (a frozen pretrained table, a generator's encoders).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch
from torch import nn

from mmsent.errors import ConfigError


def tensor_digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A SHA-1 of tensors' bytes, each preceded by its name.

    Args:
        named (Iterable[tuple[str, torch.Tensor]]): Name and tensor pairs, in order.

    Returns:
        str: A hex digest.
    """
    digest = hashlib.sha1()
    for name, tensor in named:
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def fingerprint(tensor: torch.Tensor) -> dict:
    """What tells two weight tensors apart: shape, dtype and a hash of the bytes.

    Args:
        tensor (torch.Tensor): The weights.

    Returns:
        dict: ``shape``, ``dtype`` and ``sha1``.
    """
    return {"shape": list(tensor.shape), "dtype": str(tensor.dtype), "sha1": tensor_digest([("", tensor)])}


def weights_digest(module: nn.Module) -> str:
    """str: A hash of a module's parameters and buffers, to recognize the same weights."""
    return tensor_digest(sorted(module.state_dict().items()))


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
                omitted[full] = rebuilt_fingerprint(sub, key, state.pop(full))
    return omitted


def rebuilt_fingerprint(owner: nn.Module, key: str, tensor: torch.Tensor) -> dict:
    """The :func:`fingerprint` of a weight its module rebuilds, hashed once per version.

    Hashing a frozen transformer embedding table at every checkpoint takes tens of
    milliseconds; it is hashed again only once changed in place (its version counter)
    or replaced (its storage).

    Args:
        owner (nn.Module): The module whose ``rebuilt_state_keys()`` named ``key``.
        key (str): The key within ``owner``.
        tensor (torch.Tensor): The weight, as ``owner``'s state dict holds it.

    Returns:
        dict: ``shape``, ``dtype`` and ``sha1``.
    """
    version = (tensor._version, tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
    known = owner.__dict__.setdefault("_rebuilt_fingerprints", {})
    if key not in known or known[key][0] != version:
        known[key] = (version, fingerprint(tensor))
    return known[key][1]


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
            raise ConfigError(f"{what}: {key} was left out of the saved weights, to be rebuilt from the "
                             f"configuration (a frozen pretrained table), but the configured module "
                             f"rebuilds other weights (shape {found['shape']} vs {expected['shape']}); "
                             f"configure the same pretrained_embeddings as the run that saved it")
        state[local] = own[local]
    return state
