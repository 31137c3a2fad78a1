"""CMU-MultimodalSDK ``.csd`` files, one per modality, aligned to the labelled clips.

Clips come from a label ``.csd`` (``CMU_MOSI_Opinion_Labels.csd``; clip ids are the
segments' 1-based positions in time order, splits come from ``splits``), or from an
MMSA ``label.csv`` with ``start`` and ``end`` columns, the clip's interval in seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pandas as pd

from mmsent.data.csd import Sequence, align_mean, align_sequence, align_words, read_csd
from mmsent.data.features import FeatureData, FeatureSource, feature_dim
from mmsent.data.labels import read_label_table
from mmsent.data.schema import MODALITIES, check_label, check_split, make_id
from mmsent.io import content_hash, file_signature

Alignment = Literal["mean", "sequence"]


class SDKSource(FeatureSource):
    """CMU-MultimodalSDK ``.csd`` files, one per modality, aligned to the clips.

    Args:
        root (str): The folder holding the files.
        features (dict[str, str]): Per modality, its ``.csd`` file (text: word vectors).
        labels (str): A label ``.csd`` or a ``label.csv``, relative to ``root``.
        splits (str | None): With a label ``.csd``: a CSV of ``video_id`` and ``mode``.
        words (str | None): A word ``.csd`` giving the transcripts (with a label ``.csd``).
        label_column (int): Which feature column of the label ``.csd`` is the score.
        align (Alignment | dict[str, Alignment] | None): For all modalities or per
            modality; None: ``"sequence"`` for text, ``"mean"`` for the others.
        max_steps (int): Longest aligned sequence kept (``align: sequence``).
        modalities (list[str] | None): None: those in ``features``, and text when transcripts exist.
        **kwargs: :class:`FeatureSource` options.
    """

    name = "sdk"

    def __init__(self, root: str, features: dict[str, str], labels: str = "label.csv",
                 splits: str | None = None, words: str | None = None, label_column: int = 0,
                 align: Alignment | dict[str, Alignment] | None = None, max_steps: int = 50,
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

    def _alignments(self, align: Alignment | dict[str, Alignment] | None) -> dict[str, str]:
        chosen = {m: ("sequence" if m == "text" else "mean") for m in MODALITIES}
        chosen.update({m: align for m in MODALITIES} if isinstance(align, str) else align or {})
        bad = {m: a for m, a in chosen.items() if a not in get_args(Alignment)}
        if bad:
            raise ValueError(f"align must be one of {list(get_args(Alignment))} (or a dict of them), got {bad}")
        return chosen

    def fingerprint(self) -> dict:
        files = {m: [f, file_signature([self.root / f])] for m, f in self.feature_files.items()}
        extra = [self.root / f for f in (self.words,) if f]
        label_path = self.root / self.labels
        return {"root": str(self.root.resolve()), "features": files,
                "labels": [self.labels, content_hash(label_path) if label_path.is_file() else None],
                "splits": [self.splits, content_hash(self.root / self.splits)
                           if self.splits and (self.root / self.splits).is_file() else None],
                "words": [self.words, file_signature(extra)], "label_column": self.label_column,
                "align": self.align, "max_steps": self.max_steps, **self.settings()}

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
            data.text = ("vectors", feature_dim(data.features["text"]), 0)
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


def read_splits(path: Path) -> dict[str, str]:
    """The split of each video.

    Args:
        path (Path): A CSV with ``video_id`` and ``mode`` columns (an MMSA ``label.csv`` serves).

    Returns:
        dict[str, str]: Video id -> split.

    Raises:
        FileNotFoundError: If the file is missing.
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
