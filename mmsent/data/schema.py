"""The prepared-example format every data source produces, so any source feeds any encoder.

Example keys (one dict per clip):

* ``id`` (str): ``"<video_id>$_$<clip_id>"``, unique across all splits.
* ``split`` (str): one of :data:`SPLITS`.
* ``transcript`` (str): the transcript, kept for reports and prediction tables.
* ``label`` (float): the sentiment score in ``[-3, 3]``.
* ``clean_label`` (float): the noise-free score (generated data), otherwise ``nan``.
* ``text``: token ids ``list[int]`` (``text_kind == "tokens"``) or vectors
  ``float32 (L, D)`` (``text_kind == "vectors"``); empty when the modality is missing.
* ``audio``: acoustic frames ``float32 (T, D)``; empty when missing.
* ``video``: frames ``uint8 (T, H, W, 3)`` (``video_kind == "frames"``) or
  feature vectors ``float32 (T, D)`` (``video_kind == "features"``); empty when missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, get_args

Split = Literal["train", "valid", "test"]
SPLITS: tuple[str, ...] = get_args(Split)
Modality = Literal["text", "audio", "video"]
MODALITIES: tuple[str, ...] = get_args(Modality)
LABEL_RANGE: tuple[float, float] = (-3.0, 3.0)
ID_SEPARATOR = "$_$"


def make_id(video_id: str, clip_id: str | int) -> str:
    """Returns the MMSA-style clip id ``"<video_id>$_$<clip_id>"``."""
    return f"{video_id}{ID_SEPARATOR}{clip_id}"


def check_label(value: float, where: str) -> float:
    """Validates one sentiment score.

    Args:
        value (float): The score read from a file.
        where (str): The file and row or sample the score came from, for the message.

    Returns:
        float: The score as a float.

    Raises:
        ValueError: If the score is NaN, infinite or outside ``[-3, 3]``.
    """
    score = float(value)
    low, high = LABEL_RANGE
    if not math.isfinite(score) or not low <= score <= high:
        raise ValueError(f"{where}: label {value!r} is not a finite score in [{low:g}, {high:g}]; for a "
                         f"corpus scored on another range, set the source's label_scale: [low, high] "
                         f"(MMSAPickleSource) to map it linearly onto [{low:g}, {high:g}]")
    return score


def scale_label(value: float, label_scale: tuple[float, float] | None) -> float:
    """Returns ``value`` mapped linearly from the corpus's range ``label_scale``, ``(low, high)``
    (None: as it is), onto :data:`LABEL_RANGE`; not yet checked (see :func:`check_label`)."""
    if label_scale is None:
        return float(value)
    low, high = label_scale
    target_low, target_high = LABEL_RANGE
    return target_low + (float(value) - low) * (target_high - target_low) / (high - low)


def check_split(value: str, where: str) -> str:
    """Validates one split name.

    Args:
        value (str): The split name read from a file.
        where (str): The file and row the name came from, for the message.

    Returns:
        str: The split name.

    Raises:
        ValueError: If the name is not one of :data:`SPLITS`.
    """
    if value not in SPLITS:
        raise ValueError(f"{where}: unknown split {value!r}; expected one of {', '.join(SPLITS)}")
    return value


@dataclass
class DatasetSpec:
    """What a prepared dataset holds, handed from the data to the models.

    Attributes:
        input_dims (dict[str, int]): Per present modality, the encoder's input size:
            vocabulary size for token ids, feature size for vectors, 3 for frames.
        text_kind (str): ``"tokens"`` or ``"vectors"``.
        video_kind (str): ``"frames"`` or ``"features"``.
        pad_token_id (int): The id used for padding token sequences.
        extras (dict): Anything a source wants to record (tokenizer name, frame size).
    """

    input_dims: dict[str, int]
    text_kind: str = "tokens"
    video_kind: str = "frames"
    pad_token_id: int = 0
    extras: dict = field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        """list[str]: The modalities present, in the canonical order."""
        return [name for name in MODALITIES if name in self.input_dims]
