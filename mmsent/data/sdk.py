"""CMU-MultimodalSDK computational sequences (``.csd``), aligned to the labels.

A ``.csd`` file is HDF5 with one root group (the sequence's name) holding
``data/<video_id>/features`` ``(N, D)`` and ``data/<video_id>/intervals`` ``(N, 2)``
(start and end in seconds), plus a ``metadata`` group. One file per modality (e.g.
``CMU_MOSI_COVAREP.csd`` for audio, ``CMU_MOSI_Visual_Facet_42.csd`` for video,
``CMU_MOSI_TimestampedWordVectors.csd`` for text vectors).

Clips and their scores come from either

* a label ``.csd`` (``CMU_MOSI_Opinion_Labels.csd``): per video one row per opinion
  segment, the score in feature column ``label_column``; clip ids are the
  segments' 1-based positions in time order, and the split of each video comes
  from ``splits``, a CSV with ``video_id`` and ``mode`` columns (an MMSA
  ``label.csv`` will do); or
* a ``label.csv`` in MMSA's layout (``video_id, clip_id, text, label, annotation,
  mode``) with two more columns, ``start`` and ``end``, the clip's interval in
  seconds inside its video.

Every feature sequence is aligned to the clip intervals once, while preparing: a
feature step belongs to a clip when its interval overlaps the clip's. ``align:
mean`` averages those steps into one vector per clip (``T == 1``, as the SDK's
``align`` with an average collapse function does); ``align: sequence`` keeps them
in order, average-pooled down to ``max_steps``. Both are vectorized per video with
:func:`numpy.searchsorted` over the sorted step intervals.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mmsent.data.schema import MODALITIES, check_label, check_split, make_id
from mmsent.data.sources import read_label_table
from mmsent.data.tables import FeatureData, FeatureSource
from mmsent.io import content_hash, file_signature

log = logging.getLogger(__name__)

ALIGNMENTS = ("mean", "sequence")
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
        tuple[dict[str, Sequence], dict]: Per video its sequence (steps sorted by
        start time), and the metadata (JSON values decoded).

    Raises:
        FileNotFoundError: If the file is missing.
        ValueError: If it is not a computational sequence, or a video's features and
            intervals disagree, or its feature size differs from the others',
            naming the file and the video.
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

    Step ``i`` overlaps clip ``[s, e]`` when ``start_i < e`` and ``end_i > s``. With
    steps sorted by start and non-decreasing ends, those steps are contiguous and
    two binary searches find them.

    Args:
        steps (np.ndarray): Step intervals ``(N, 2)``, sorted by start.
        clips (np.ndarray): Clip intervals ``(M, 2)``.

    Returns:
        tuple[np.ndarray, np.ndarray] | None: ``lo`` and ``hi`` ``(M,)``, the steps of
        clip ``j`` being ``lo[j]:hi[j]``; None when the ends are not sorted (steps
        nested in longer ones), where ranges would be wrong.
    """
    ends = steps[:, 1]
    if np.any(np.diff(ends) < 0):
        return None
    lo = np.searchsorted(ends, clips[:, 0], side="right")
    hi = np.searchsorted(steps[:, 0], clips[:, 1], side="left")
    return lo, np.maximum(hi, lo)


def overlap_matrix(steps: np.ndarray, clips: np.ndarray) -> np.ndarray:
    """Which steps overlap which clip, for steps whose ends are not sorted.

    Args:
        steps (np.ndarray): Step intervals ``(N, 2)``.
        clips (np.ndarray): Clip intervals ``(M, 2)``.

    Returns:
        np.ndarray: Boolean ``(M, N)``.
    """
    return (steps[None, :, 0] < clips[:, None, 1]) & (steps[None, :, 1] > clips[:, None, 0])


def align_mean(sequence: Sequence, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The average feature vector of each clip.

    Non-finite values count as 0 and are counted per clip.

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
        list[tuple[np.ndarray, int]]: Per clip its steps ``float32 (T, D)`` (``T`` may
        be 0) and its number of non-finite values (set to 0).
    """
    values, bad = _finite(sequence.features)
    ranges = step_ranges(sequence.intervals, clips)
    if ranges is None:
        rows = [np.flatnonzero(m) for m in overlap_matrix(sequence.intervals, clips)]
    else:
        rows = [np.arange(lo, hi) for lo, hi in zip(*ranges, strict=True)]
    return [(pool_steps(values[r], max_steps).astype(np.float32), int(bad[r].sum())) for r in rows]


def _finite(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(features, dtype=np.float64)
    bad = ~np.isfinite(values)
    return np.where(bad, 0.0, values), bad.sum(1).astype(np.float64)


def pool_steps(values: np.ndarray, max_steps: int) -> np.ndarray:
    """Average-pools a sequence into at most ``max_steps`` nearly equal bins.

    Args:
        values (np.ndarray): ``(T, D)``.
        max_steps (int): The most steps kept.

    Returns:
        np.ndarray: ``(min(T, max_steps), D)``.
    """
    if len(values) <= max_steps:
        return values
    edges = np.linspace(0, len(values), max_steps + 1).astype(int)
    return np.add.reduceat(values, edges[:-1], axis=0) / np.diff(edges)[:, None]


def align_words(sequence: Sequence, clips: np.ndarray) -> list[str]:
    """The transcript of each clip from a word sequence, silences left out.

    Args:
        sequence (Sequence): One video's words (bytes or str, one per step).
        clips (np.ndarray): Its clip intervals ``(M, 2)``.

    Returns:
        list[str]: One transcript per clip.
    """
    words = [w.decode() if isinstance(w, bytes) else str(w) for w in sequence.features[:, 0]]
    ranges = step_ranges(sequence.intervals, clips)
    if ranges is None:
        rows = [np.flatnonzero(m) for m in overlap_matrix(sequence.intervals, clips)]
    else:
        rows = [range(lo, hi) for lo, hi in zip(*ranges, strict=True)]
    return [" ".join(words[i] for i in row if words[i] != SILENCE) for row in rows]


class SDKSource(FeatureSource):
    """CMU-MultimodalSDK ``.csd`` files, one per modality, aligned to the clips.

    Args:
        root (str): The folder holding the files.
        features (dict[str, str]): Per modality, its ``.csd`` file relative to
            ``root``; a text file holds word vectors (``text_kind == "vectors"``).
        labels (str): A label ``.csd`` or an MMSA ``label.csv`` with ``start`` and
            ``end`` columns, relative to ``root``.
        splits (str | None): With a label ``.csd``: a CSV with ``video_id`` and
            ``mode`` (train, valid, test) columns, relative to ``root``.
        words (str | None): A word ``.csd`` (``CMU_MOSI_TimestampedWords.csd``) whose
            words, joined per clip, are the transcripts (with a label ``.csd``).
        label_column (int): Which feature column of the label ``.csd`` is the score.
        align (str | dict[str, str] | None): ``"mean"`` or ``"sequence"``, for all
            modalities or per modality; None: ``"sequence"`` for text vectors,
            ``"mean"`` for the others.
        max_steps (int): Longest aligned sequence kept (``align: sequence``).
        modalities (list[str] | None): Default: every modality in ``features``, and
            text from transcripts when there are any (a ``label.csv`` or ``words``).
        **kwargs: :class:`FeatureSource` options (``standardize``, ``missing``,
            ``tokenizer``, ``max_text_length``, ``text_features``).
    """

    name = "sdk"

    def __init__(self, root: str, features: dict[str, str], labels: str = "label.csv",
                 splits: str | None = None, words: str | None = None, label_column: int = 0,
                 align: str | dict[str, str] | None = None, max_steps: int = 50,
                 modalities: list[str] | None = None, **kwargs) -> None:
        unknown = set(features) - set(MODALITIES)
        if unknown:
            raise ValueError(f"features: unknown modality {sorted(unknown)}; expected some of {MODALITIES}")
        self.root = Path(root)
        self.feature_files = dict(features)
        self.labels = labels
        self.splits = splits
        self.words = words
        self.label_column = label_column
        self.align = self._alignments(align)
        self.max_steps = max_steps
        if self.labels.endswith(".csd") and splits is None:
            raise ValueError("labels is a .csd file: set splits to a CSV with video_id and mode columns")
        transcripts = words is not None or not labels.endswith(".csd")
        default = [m for m in MODALITIES if m in features or (m == "text" and transcripts)]
        super().__init__(modalities=modalities or default, **kwargs)

    def _alignments(self, align: str | dict[str, str] | None) -> dict[str, str]:
        chosen = {m: ("sequence" if m == "text" else "mean") for m in MODALITIES}
        chosen.update({m: align for m in MODALITIES} if isinstance(align, str) else align or {})
        bad = {m: a for m, a in chosen.items() if a not in ALIGNMENTS}
        if bad:
            raise ValueError(f"align must be one of {ALIGNMENTS} (or a dict of them), got {bad}")
        return chosen

    def fingerprint(self) -> dict:
        files = {m: [f, file_signature([self.root / f])] for m, f in self.feature_files.items()}
        extra = [self.root / f for f in (self.words,) if f]
        label_path = self.root / self.labels
        return {
            "root": str(self.root.resolve()), "features": files,
            "labels": [self.labels, content_hash(label_path) if label_path.is_file() else None],
            "splits": [self.splits, content_hash(self.root / self.splits)
                       if self.splits and (self.root / self.splits).is_file() else None],
            "words": [self.words, file_signature(extra)], "label_column": self.label_column,
            "align": self.align, "max_steps": self.max_steps, **self.settings(),
        }

    def read(self) -> FeatureData:
        clips, intervals, unsplit = self._read_clips()
        by_video: dict[str, list[int]] = {}
        for index, clip in enumerate(clips):
            by_video.setdefault(clip["video_id"], []).append(index)
        data = FeatureData([], {}, left_out={"labelled videos in no split": unsplit})
        for modality in self.modalities:
            if modality not in self.feature_files:
                continue
            path = self.root / self.feature_files[modality]
            data.features[modality], data.nonfinite[modality], data.unlabelled[modality] = \
                self._align(path, modality, clips, intervals, by_video)
            data.files[modality] = str(path)
        if self.words and "text" in self.modalities and "text" not in data.features:
            self._transcripts(clips, intervals, by_video)
        data.files["labels"] = str(self.root / self.labels)
        data.clips = [{k: c[k] for k in ("id", "split", "transcript", "label")} for c in clips]
        if "text" in data.features:
            data.text = ("vectors", _dim(data.features["text"]), 0)
        return data

    def _align(self, path: Path, modality: str, clips: list[dict], intervals: np.ndarray,
               by_video: dict) -> tuple[dict, dict, list[str]]:
        videos, _ = read_csd(path)
        values, nonfinite = {}, {}
        for video, rows in by_video.items():
            if video not in videos:
                continue
            for row, (array, bad) in zip(rows, self._align_video(videos[video], modality,
                                                                 intervals[rows]), strict=True):
                if len(array):
                    values[clips[row]["id"]] = array
                if bad:
                    nonfinite[clips[row]["id"]] = bad
        return values, nonfinite, sorted(set(videos) - set(by_video))

    def _align_video(self, sequence: Sequence, modality: str, clips: np.ndarray):
        if sequence.features.dtype.kind in "SUO":
            raise ValueError(f"{modality}: the sequence holds words, not numbers; "
                             "give word sequences as `words`")
        if self.align[modality] == "sequence":
            return align_sequence(sequence, clips, self.max_steps)
        means, counts, bad = align_mean(sequence, clips)
        return [(means[j:j + 1] if counts[j] else means[:0], int(bad[j])) for j in range(len(means))]

    def _transcripts(self, clips: list[dict], intervals: np.ndarray, by_video: dict) -> None:
        videos, _ = read_csd(self.root / self.words)
        for video, rows in by_video.items():
            if video in videos:
                for row, text in zip(rows, align_words(videos[video], intervals[rows]), strict=True):
                    clips[row]["transcript"] = text

    def _read_clips(self) -> tuple[list[dict], np.ndarray, list[str]]:
        path = self.root / self.labels
        if path.suffix == ".csd":
            return self._clips_from_csd(path)
        table = read_label_table(path)
        missing = [c for c in ("start", "end") if c not in table.columns]
        if missing:
            raise ValueError(f"{path}: aligning .csd features needs the clip interval columns "
                             f"start and end (seconds); missing {', '.join(missing)}")
        intervals = table[["start", "end"]].to_numpy(dtype=np.float64)
        clips = [{"id": r["id"], "video_id": str(r["video_id"]), "split": r["mode"],
                  "transcript": r["text"], "label": r["label"]} for r in table.to_dict("records")]
        return clips, intervals, []

    def _clips_from_csd(self, path: Path) -> tuple[list[dict], np.ndarray, list[str]]:
        splits = read_splits(self.root / self.splits)
        videos, _ = read_csd(path)
        clips, intervals, unsplit = [], [], []
        for video, sequence in videos.items():
            if video not in splits:
                unsplit.append(video)
                continue
            for index, (score, interval) in enumerate(zip(sequence.features, sequence.intervals,
                                                          strict=True)):
                where = f"{path}, video {video}, segment {index + 1}"
                clips.append({"id": make_id(video, index + 1), "video_id": video,
                              "split": splits[video], "transcript": "",
                              "label": check_label(_column(score, self.label_column, where), where)})
                intervals.append(interval)
        return clips, np.asarray(intervals, dtype=np.float64).reshape(-1, 2), unsplit


def _column(score: np.ndarray, column: int, where: str) -> float:
    if column >= len(score):
        raise ValueError(f"{where}: no label column {column} (the file has {len(score)})")
    return float(score[column])


def _dim(values: dict[str, np.ndarray]) -> int:
    first = next(iter(values.values()), None)
    return int(first.shape[-1]) if first is not None else 0


def read_splits(path: Path) -> dict[str, str]:
    """The split of each video.

    Args:
        path (Path): A CSV with ``video_id`` and ``mode`` columns (more are ignored,
            so an MMSA ``label.csv`` serves).

    Returns:
        dict[str, str]: Video id -> split.

    Raises:
        ValueError: On a missing column, an unknown split, or a video in two splits.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split file not found")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("video_id", "mode") if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    splits: dict[str, str] = {}
    for index, (video, mode) in enumerate(zip(table["video_id"], table["mode"], strict=True)):
        where = f"{path}, row {index + 2}"
        check_split(mode, where)
        if splits.setdefault(video, mode) != mode:
            raise ValueError(f"{where}: video {video} is in split {mode!r} and {splits[video]!r}")
    return splits
