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
from contextvars import ContextVar
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from mmsent.errors import ConfigError, MissingFileError

ZIP_SIGNATURE = b"PK\x03\x04"
REBUILT_SHA1 = "_sha1"
"""What follows a left-out weight's key in the key of its SHA-1 (``embed.weight_sha1``),
the entry :func:`leave_out_rebuilt` puts in its place."""

_KEEP_REBUILT: ContextVar[bool] = ContextVar("mmsent_keep_rebuilt", default=False)


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
    """str: A hash of a module's parameters and buffers, to recognize the same weights;
    taken over :func:`full_state_dict`, as generative checkpoints have always recorded it."""
    return tensor_digest(sorted(full_state_dict(module).items()))


def full_state_dict(module: nn.Module) -> dict:
    """A module's state dict with the weights :func:`leave_out_rebuilt` leaves out kept in.

    Args:
        module (nn.Module): The module.

    Returns:
        dict: Every parameter and persistent buffer, and no SHA-1 entries.
    """
    token = _KEEP_REBUILT.set(True)
    try:
        return module.state_dict()
    finally:
        _KEEP_REBUILT.reset(token)


def leave_out_rebuilt(module: nn.Module) -> None:
    """Makes a module leave the weights it rebuilds from its config out of its state dict.

    The module names them with ``rebuilt_state_keys()`` (a frozen pretrained word-piece
    table: tens of MB that would go into every checkpoint, W&B artifact and model
    folder). Its state dict holds instead the SHA-1 of each one's bytes, as a ``uint8``
    tensor under the weight's key followed by :data:`REBUILT_SHA1`, so every file it is
    written to leaves the weight out. ``load_state_dict`` puts the module's own weight
    back where the SHA-1 is the one of the weight the module rebuilds, and reports any
    other as an error; a state dict that holds the weight itself (a checkpoint written
    before it was left out) loads it as saved.

    Args:
        module (nn.Module): The module, with a ``rebuilt_state_keys()`` method.
    """
    module.register_state_dict_post_hook(_replace_rebuilt_by_sha1)
    module.register_load_state_dict_pre_hook(_put_back_rebuilt)


def _replace_rebuilt_by_sha1(module: nn.Module, state: dict, prefix: str, local_metadata: dict) -> None:
    if _KEEP_REBUILT.get():
        return
    for key in module.rebuilt_state_keys():
        if prefix + key in state:
            state[prefix + key + REBUILT_SHA1] = _sha1_entry(
                rebuilt_fingerprint(module, key, state.pop(prefix + key))["sha1"])


def _put_back_rebuilt(module: nn.Module, state: dict, prefix: str, local_metadata: dict, strict: bool,
                      missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
    for key in module.rebuilt_state_keys():
        saved = state.pop(prefix + key + REBUILT_SHA1, None)
        if saved is None or prefix + key in state:
            continue  # saved in full, or missing, which load_state_dict reports
        owner, _, name = key.rpartition(".")
        own = getattr(module.get_submodule(owner), name).detach()
        expected = rebuilt_fingerprint(module, key, own)
        found = saved.cpu().contiguous().numpy().tobytes().hex() if isinstance(saved, torch.Tensor) else repr(saved)
        if found != expected["sha1"]:
            error_msgs.append(f"{prefix}{key} was left out of the saved weights, to be rebuilt from the "
                              f"configuration (a frozen pretrained table), but the configured module rebuilds "
                              f"other weights (SHA-1 {found[:12]} saved, {expected['sha1'][:12]} rebuilt, of shape "
                              f"{expected['shape']}); configure the same pretrained_embeddings as the run that saved it")
        else:
            state[prefix + key] = own


def _sha1_entry(sha1: str) -> torch.Tensor:
    return torch.tensor(list(bytes.fromhex(sha1)), dtype=torch.uint8)


def add_recorded_sha1(state: dict, record: object, where: str) -> dict:
    """Adds the SHA-1 entries of :func:`leave_out_rebuilt` for an older file's record of them.

    Files written before those entries keep the record beside their tensors (a
    checkpoint's ``mmsent.rebuilt`` entry, a weights file's ``mmsent_rebuilt`` header):
    full key -> :func:`fingerprint`.

    Args:
        state (dict): The file's state dict; changed in place.
        record (object): The record, as read.
        where (str): The file (and key), for messages.

    Returns:
        dict: ``state``.

    Raises:
        ConfigError: If the record is not a mapping of fingerprints, naming ``where``.
    """
    if not isinstance(record, dict) or not all(isinstance(saved, dict) and _is_sha1(saved.get("sha1"))
                                               for saved in record.values()):
        raise ConfigError(f"{where}: its record of the weights left out, to be rebuilt from the configuration, "
                          f"is not a mapping of fingerprints ({str(record)[:60]})")
    for key, saved in record.items():
        if key not in state:
            state.setdefault(key + REBUILT_SHA1, _sha1_entry(saved["sha1"]))
    return state


def _is_sha1(text: object) -> bool:
    return isinstance(text, str) and len(text) == 40 and all(c in "0123456789abcdef" for c in text)


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
