"""Weight files: the one reader of saved tensors, the frozen weights a save leaves out and
rebuilds from the configuration, and the hashes that recognize weights.

Every weights file goes through :func:`read_weights_file`, which passes
``weights_only=True`` explicitly: torch honours that whatever
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says, so a malicious pickle is refused, not run.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from mmsent.errors import ConfigError, MissingFileError

ZIP_SIGNATURE = b"PK\x03\x04"


def read_weights_file(path: str | Path, what: str, kind: str = "checkpoint") -> object:
    """Reads a file of tensors and plain data, never code.

    Args:
        path: A ``.safetensors`` file, or a file ``torch.save`` wrote.
        what: The config key that named it, for messages.
        kind: What the file is to the caller (``checkpoint``, ``weights file``).

    Returns:
        What the file holds, on the CPU.

    Raises:
        MissingFileError: If the file does not exist.
        ConfigError: If the file holds objects other than tensors and plain data, or is
            truncated or corrupt, naming the key and the file.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what}: {kind} {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if _cut_inside_zip_signature(path):
            raise ConfigError(f"{what}: {kind} {path} is unreadable, truncated or corrupt "
                              f"(cut to {path.stat().st_size} bytes)") from None
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{what}: {kind} {path} refused: it holds objects other than tensors "
                          f"and plain data, which mmsent never loads ({reason})") from error
    # torch's zip reader fails with EINVAL on a file cut a few kB after its start.
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, SafetensorError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{what}: {kind} {path} is unreadable, truncated or corrupt "
                          f"({reason})") from error


def _cut_inside_zip_signature(path: Path) -> bool:
    # torch reads a zip archive only once its whole 4-byte signature is there; a shorter
    # cut goes to the pickle reader, whose refusal would read as a foreign object.
    with path.open("rb") as stream:
        head = stream.read(len(ZIP_SIGNATURE))
    return len(head) < len(ZIP_SIGNATURE) and ZIP_SIGNATURE.startswith(head)


def tensor_digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A SHA-1 of tensors' bytes, each preceded by its name.

    Args:
        named: Name and tensor pairs, in order.

    Returns:
        A hex digest.
    """
    digest = hashlib.sha1()
    for name, tensor in named:
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def fingerprint(tensor: torch.Tensor) -> dict:
    """What tells two weight tensors apart: shape, dtype and a hash of the bytes.

    Args:
        tensor: The weights.

    Returns:
        ``shape``, ``dtype`` and ``sha1``.
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

    Hashing a frozen embedding table at every checkpoint costs tens of milliseconds; it is
    hashed again only once changed in place or replaced.

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
        state: The (sub-)state dict to load into ``module``; changed in place.
        module: The configured module, holding the rebuilt weights.
        omitted: The checkpoint's record (:func:`omit_rebuilt`).
        prefix: What the checkpoint's keys have in front of ``module``'s keys.
        what: The config key or file, for the message.

    Returns:
        ``state``.

    Raises:
        ConfigError: If the configured module rebuilds other weights than were saved.
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
