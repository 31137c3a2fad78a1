"""The dataset plan: videos, splits, latent scores, text and labels (no media).

A clip's noise-free sentiment is a weighted sum (:data:`MODALITY_WEIGHTS`) of three
independent latent scores in ``[-1, 1]``, one per modality.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from mmsent.data.schema import LABEL_RANGE, SPLITS
from mmsent.data.synthetic.text import make_sentence

LABEL_COLUMNS: tuple[str, ...] = ("video_id", "clip_id", "text", "label", "annotation", "mode",
                                  "clean_label", "text_score", "audio_score", "video_score")
MODALITY_WEIGHTS: dict[str, float] = {"text": 1.5, "audio": 1.05, "video": 1.25}

# Independent random streams, so adding a draw to one part never shifts another.
PLAN_STREAM, CLIP_STREAM, MEDIA_STREAM, VIDEO_STREAM = 0, 1, 2, 3


def stream_rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    """A generator seeded from ``(seed, stream, index)``, independent of call order.

    Args:
        seed (int): The dataset's seed.
        stream (int): One of the ``*_STREAM`` constants.
        index (int): The clip or video index within the stream.

    Returns:
        np.random.Generator: The generator.
    """
    return np.random.default_rng([seed, stream, index])


def _video_sizes(num_clips: int, rng: np.random.Generator) -> list[int]:
    """Clips per video: 8-12 like speakers, fewer for tiny datasets so each split gets videos."""
    high = max(1, min(12, num_clips // 10))
    low = max(1, round(high * 2 / 3))
    sizes: list[int] = []
    while sum(sizes) < num_clips:
        sizes.append(int(rng.integers(low, high + 1)))
    sizes[-1] -= sum(sizes) - num_clips
    return sizes


def _assign_splits(sizes: list[int], fractions: Sequence[float],
                   rng: np.random.Generator) -> list[str]:
    """Assigns whole videos to splits so clip counts follow ``fractions`` (speaker independent)."""
    order = rng.permutation(len(sizes))
    bounds = np.cumsum(fractions) * sum(sizes)
    splits = [""] * len(sizes)
    done = 0
    for video in order:
        middle = done + sizes[video] / 2
        position = int(np.searchsorted(bounds, middle, side="right"))
        splits[video] = SPLITS[min(position, len(SPLITS) - 1)]
        done += sizes[video]
    _fill_empty_splits(splits, fractions, [int(v) for v in order])
    return splits


def _fill_empty_splits(splits: list[str], fractions: Sequence[float], order: list[int]) -> None:
    """Moves a video into each wanted split left empty, taking from the split with most videos."""
    for split, fraction in zip(SPLITS, fractions, strict=True):
        if fraction <= 0 or split in splits:
            continue
        donor = max(SPLITS, key=splits.count)
        if splits.count(donor) < 2:
            raise ValueError("too few videos to fill every split; generate more clips")
        video = next(v for v in reversed(order) if splits[v] == donor)
        splits[video] = split


def _annotation(label: float) -> str:
    """The MMSA annotation word for a score's sign."""
    return "Positive" if label > 0 else "Negative" if label < 0 else "Neutral"


def _plan_clip(seed: int, index: int, noise_std: float) -> dict:
    """Draws one clip's latents, text and labels from its own random stream."""
    rng = stream_rng(seed, CLIP_STREAM, index)
    text, s_text = make_sentence(float(rng.uniform(-1.0, 1.0)), rng)
    scores = {"text": round(s_text, 4), "audio": round(float(rng.uniform(-1.0, 1.0)), 4),
              "video": round(float(rng.uniform(-1.0, 1.0)), 4)}
    low, high = LABEL_RANGE
    clean = sum(MODALITY_WEIGHTS[name] * value for name, value in scores.items())
    clean = round(float(np.clip(clean, low, high)), 4)
    label = round(float(np.clip(clean + rng.normal(0.0, noise_std), low, high)), 4)
    return {"text": text, "label": label, "annotation": _annotation(label), "clean_label": clean,
            **{f"{name}_score": value for name, value in scores.items()}}


def plan_clips(num_clips: int, seed: int = 0, noise_std: float = 0.3,
               split_fractions: Sequence[float] = (0.7, 0.15, 0.15)) -> pd.DataFrame:
    """Builds the label table of a generated dataset without writing any media.

    Args:
        num_clips (int): The number of clips.
        seed (int): The random seed.
        noise_std (float): The standard deviation of the label noise.
        split_fractions (Sequence[float]): Train, valid and test shares of the clips.

    Returns:
        pd.DataFrame: One row per clip with :data:`LABEL_COLUMNS`, plus ``video_index``.
    """
    rng = stream_rng(seed, PLAN_STREAM)
    sizes = _video_sizes(num_clips, rng)
    splits = _assign_splits(sizes, split_fractions, rng)
    width = max(4, len(str(len(sizes))))
    rows = []
    for video, (size, split) in enumerate(zip(sizes, splits, strict=True)):
        for clip in range(size):
            row = _plan_clip(seed, len(rows), noise_std)
            rows.append({"video_id": f"vid{video + 1:0{width}d}", "clip_id": clip + 1,
                         "mode": split, "video_index": video, **row})
    return pd.DataFrame(rows, columns=[*LABEL_COLUMNS, "video_index"])


def best_achievable_mae(label_csv_or_frame: str | os.PathLike | pd.DataFrame,
                        split: str | None = "test") -> float:
    """The mean absolute error of predicting the noise-free score, the floor for any model.

    Args:
        label_csv_or_frame (str | os.PathLike | pd.DataFrame): A generated ``label.csv``.
        split (str | None): The split to average over, or None for all clips.

    Returns:
        float: ``mean |label - clean_label|`` over the split.

    Raises:
        ValueError: If the table has no ``clean_label`` or the split is empty.
    """
    frame = label_csv_or_frame
    if not isinstance(frame, pd.DataFrame):
        frame = pd.read_csv(frame)
    if "clean_label" not in frame.columns:
        raise ValueError("no clean_label column: only generated data know the noise-free score")
    if split is not None:
        frame = frame[frame["mode"] == split]
    if frame.empty:
        raise ValueError(f"split {split!r} has no clips")
    return float((frame["label"] - frame["clean_label"]).abs().mean())
