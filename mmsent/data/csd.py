"""CMU-MultimodalSDK computational sequences (``.csd``): reading, and aligning to clips.

A ``.csd`` file is HDF5 with one root group holding ``data/<video_id>/features``
``(N, D)`` and ``data/<video_id>/intervals`` ``(N, 2)`` (seconds), plus ``metadata``.
A step belongs to a clip when its interval overlaps the clip's; :func:`align_mean`
averages them as the SDK's ``align`` with an average collapse does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SILENCE = "sp"


@dataclass
class Sequence:
    """One video's entry of a computational sequence.

    Attributes:
        features (np.ndarray): ``(N, D)``; bytes for word sequences.
        intervals (np.ndarray): ``float64 (N, 2)``, sorted by start.
    """

    features: np.ndarray
    intervals: np.ndarray


def read_csd(path: Path) -> tuple[dict[str, Sequence], dict]:
    """Reads a computational sequence.

    Args:
        path (Path): The ``.csd`` file.

    Returns:
        tuple[dict[str, Sequence], dict]: Per video its sequence, and the decoded metadata.

    Raises:
        FileNotFoundError: If the file is missing.
        ValueError: If it is not a computational sequence, or a video's features and
            intervals or feature size disagree, naming the file and the video.
    """
    import h5py

    if not path.is_file():
        raise FileNotFoundError(f"{path}: computational sequence not found")
    with h5py.File(path, "r") as handle:
        root = next((handle[k] for k in handle if "data" in handle[k]), None)
        if root is None:
            raise ValueError(f"{path}: no <root>/data group; not a computational sequence")
        metadata = _metadata(root.get("metadata"))
        videos, dim = {}, None
        for video, group in root["data"].items():
            entry = _entry(path, video, group)
            width = entry.features.shape[1]
            if dim is not None and width != dim[0]:
                raise ValueError(f"{path}: video {video} has {width} features per step, "
                                 f"video {dim[1]} has {dim[0]}")
            dim = dim or (width, video)
            videos[video] = entry
    return videos, metadata


def _entry(path: Path, video: str, group) -> Sequence:
    if "features" not in group or "intervals" not in group:
        raise ValueError(f"{path}: video {video} lacks features or intervals")
    features = np.asarray(group["features"][()])
    intervals = np.asarray(group["intervals"][()], dtype=np.float64)
    if features.ndim == 1:
        features = features[:, None]
    if intervals.shape != (len(features), 2):
        raise ValueError(f"{path}: video {video} has {len(features)} feature steps but intervals "
                         f"of shape {intervals.shape}")
    order = np.argsort(intervals[:, 0], kind="stable")
    return Sequence(features[order], intervals[order])


def _metadata(group) -> dict:
    if group is None:
        return {}
    metadata = {}
    for key in group:
        value = group[key][()]
        value = value[0] if getattr(value, "shape", ()) else value
        value = value.decode() if isinstance(value, bytes) else str(value)
        try:
            metadata[key] = json.loads(value)
        except json.JSONDecodeError:
            metadata[key] = value
    return metadata


def step_ranges(steps: np.ndarray, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The steps overlapping each clip, as contiguous index ranges.

    With steps sorted by start and non-decreasing ends, the steps overlapping a clip
    are contiguous and two binary searches find them.

    Args:
        steps (np.ndarray): Step intervals ``(N, 2)``, sorted by start.
        clips (np.ndarray): Clip intervals ``(M, 2)``.

    Returns:
        tuple[np.ndarray, np.ndarray] | None: ``lo`` and ``hi`` ``(M,)``, clip ``j``'s
        steps being ``lo[j]:hi[j]``; None when the ends are not sorted (nested steps).
    """
    ends = steps[:, 1]
    if np.any(np.diff(ends) < 0):
        return None
    lo = np.searchsorted(ends, clips[:, 0], side="right")
    hi = np.searchsorted(steps[:, 0], clips[:, 1], side="left")
    return lo, np.maximum(hi, lo)


def overlap_matrix(steps: np.ndarray, clips: np.ndarray) -> np.ndarray:
    """Returns which steps overlap which clip, boolean ``(M, N)``, for step intervals ``steps``
    ``(N, 2)`` whose ends are not sorted and clip intervals ``clips`` ``(M, 2)``."""
    return (steps[None, :, 0] < clips[:, None, 1]) & (steps[None, :, 1] > clips[:, None, 0])


def clip_steps(steps: np.ndarray, clips: np.ndarray) -> list[np.ndarray]:
    """Returns, per clip interval of ``clips`` ``(M, 2)``, the indices of the step intervals
    ``steps`` ``(N, 2)`` (sorted by start) overlapping it, in time order; possibly none."""
    ranges = step_ranges(steps, clips)
    if ranges is None:
        return [np.flatnonzero(m) for m in overlap_matrix(steps, clips)]
    return [np.arange(lo, hi) for lo, hi in zip(*ranges, strict=True)]


def align_mean(sequence: Sequence, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The average feature vector of each clip, non-finite values counting as 0.

    Args:
        sequence (Sequence): One video's steps.
        clips (np.ndarray): Its clip intervals ``(M, 2)``.

    Returns:
        tuple[np.ndarray, np.ndarray, np.ndarray]: Means ``float32 (M, D)``, steps per
        clip ``(M,)`` (0: no feature inside), and non-finite values per clip ``(M,)``.
    """
    values, bad = _finite(sequence.features)
    ranges = step_ranges(sequence.intervals, clips)
    if ranges is None:
        mask = overlap_matrix(sequence.intervals, clips).astype(np.float64)
        counts = mask.sum(1)
        sums, nonfinite = mask @ values, mask @ bad
    else:
        lo, hi = ranges
        totals = np.vstack([np.zeros((1, values.shape[1])), np.cumsum(values, 0)])
        bad_totals = np.concatenate([[0.0], np.cumsum(bad)])
        counts = (hi - lo).astype(np.float64)
        sums, nonfinite = totals[hi] - totals[lo], bad_totals[hi] - bad_totals[lo]
    means = sums / np.maximum(counts, 1.0)[:, None]
    return means.astype(np.float32), counts.astype(int), nonfinite.astype(int)


def align_sequence(sequence: Sequence, clips: np.ndarray, max_steps: int) -> list[tuple[np.ndarray, int]]:
    """The steps inside each clip, in order, pooled down to ``max_steps``.

    Args:
        sequence (Sequence): One video's steps.
        clips (np.ndarray): Its clip intervals ``(M, 2)``.
        max_steps (int): Longer clips are average-pooled to this many steps.

    Returns:
        list[tuple[np.ndarray, int]]: Per clip its steps ``float32 (T, D)`` (``T`` may be 0)
        and its non-finite values (set to 0).
    """
    values, bad = _finite(sequence.features)
    rows = clip_steps(sequence.intervals, clips)
    return [(pool_steps(values[r], max_steps).astype(np.float32), int(bad[r].sum())) for r in rows]


def _finite(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(features, dtype=np.float64)
    bad = ~np.isfinite(values)
    return np.where(bad, 0.0, values), bad.sum(1).astype(np.float64)


def pool_steps(values: np.ndarray, max_steps: int) -> np.ndarray:
    """Returns ``values`` ``(T, D)`` average-pooled into at most ``max_steps`` nearly equal
    bins: ``(min(T, max_steps), D)``."""
    if len(values) <= max_steps:
        return values
    edges = np.linspace(0, len(values), max_steps + 1).astype(int)
    return np.add.reduceat(values, edges[:-1], axis=0) / np.diff(edges)[:, None]


def align_words(sequence: Sequence, clips: np.ndarray) -> list[str]:
    """Returns one transcript per clip interval of ``clips`` ``(M, 2)`` from one video's word
    ``sequence`` (bytes or str, one per step), silences left out."""
    words = [w.decode() if isinstance(w, bytes) else str(w) for w in sequence.features[:, 0]]
    rows = clip_steps(sequence.intervals, clips)
    return [" ".join(words[i] for i in row if words[i] != SILENCE) for row in rows]
