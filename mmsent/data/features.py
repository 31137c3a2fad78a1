"""The base class of every reader of precomputed features.

Features are read in full in ``open`` (small next to raw video); whatever was repaired
or left out is logged with the sample ids and kept in ``spec.extras["issues"]``.
"""

from __future__ import annotations

import logging
import math
from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from mmsent.data.lm_features import TranscriptText
from mmsent.data.schema import MODALITIES, SPLITS, DatasetSpec
from mmsent.data.sources import DataSource, Loaded
from mmsent.errors import check_choice

log = logging.getLogger(__name__)

MissingPolicy = Literal["mask", "drop"]


@dataclass
class FeatureData:
    """What a feature reader found on disk, before cleaning.

    Attributes:
        clips (list[dict]): Per labelled clip: ``id``, ``split``, ``transcript``, ``label``.
        features (dict[str, dict[str, np.ndarray]]): Per modality, clip id -> ``(T, D)``
            (``(L,)`` for token ids).
        files (dict[str, str]): Per modality, the file it came from (for messages).
        unlabelled (dict[str, list[str]]): Per modality, ids with features but no label.
        text (tuple[str, int, int] | None): ``(kind, input size, pad id)`` of text in the file.
        nonfinite (dict[str, dict[str, int]]): Per modality, clip id -> values set to 0.
        left_out (dict[str, list[str]]): Anything else the reader left out, by reason.
    """

    clips: list[dict]
    features: dict[str, dict[str, np.ndarray]]
    files: dict[str, str] = field(default_factory=dict)
    unlabelled: dict[str, list[str]] = field(default_factory=dict)
    text: tuple[str, int, int] | None = None
    nonfinite: dict[str, dict[str, int]] = field(default_factory=dict)
    left_out: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class FeatureIssues:
    """What was repaired or left out while reading features, by sample id.

    Attributes:
        nonfinite (dict[str, dict[str, int]]): Per modality, clip id -> non-finite values.
        no_features (dict[str, list[str]]): Per modality, labelled clips without it.
        unlabelled (dict[str, list[str]]): Per modality, feature ids without a label.
        dropped (list[str]): Clips left out (``missing: drop``).
        left_out (dict[str, list[str]]): What the reader left out, by reason.
    """

    nonfinite: dict[str, dict[str, int]] = field(default_factory=dict)
    no_features: dict[str, list[str]] = field(default_factory=dict)
    unlabelled: dict[str, list[str]] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    left_out: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> dict:
        """dict: Counts and the ids behind them, as stored in the dataset spec."""
        return {"nonfinite_values": {m: {"values": sum(c.values()), "clips": c}
                                     for m, c in self.nonfinite.items() if c},
                "labelled_without_features": {m: ids for m, ids in self.no_features.items() if ids},
                "features_without_label": {m: ids for m, ids in self.unlabelled.items() if ids},
                "dropped": self.dropped,
                **{reason: ids for reason, ids in self.left_out.items() if ids}}

    def log(self, name: str, files: dict[str, str]) -> None:
        """Logs one warning per kind of problem, with the first sample ids, under the source
        ``name``, naming per modality the file in ``files`` it came from."""
        for modality, counts in self.nonfinite.items():
            if counts:
                log.warning("%s: %d NaN/infinite %s value(s) in %s set to 0, in %d clip(s): %s",
                            name, sum(counts.values()), modality, files.get(modality, "?"),
                            len(counts), _first(list(counts)))
        for modality, ids in self.no_features.items():
            if ids:
                log.warning("%s: %d labelled clip(s) have no %s features in %s: %s",
                            name, len(ids), modality, files.get(modality, "?"), _first(ids))
        for modality, ids in self.unlabelled.items():
            if ids:
                log.warning("%s: %d id(s) in %s have %s features but no label, ignored: %s",
                            name, len(ids), files.get(modality, "?"), modality, _first(ids))
        if self.dropped:
            log.warning("%s: %d clip(s) left out for a missing modality: %s",
                        name, len(self.dropped), _first(self.dropped))
        for reason, ids in self.left_out.items():
            if ids:
                log.warning("%s: %d left out, %s: %s", name, len(ids), reason, _first(ids))


def _first(ids: list[str], count: int = 5) -> str:
    more = f" ... (+{len(ids) - count} more)" if len(ids) > count else ""
    return ", ".join(ids[:count]) + more


def clean_nonfinite(features: dict[str, np.ndarray]) -> dict[str, int]:
    """Masks NaN and infinite values of ``features`` (clip id -> float array) in place;
    returns clip id -> non-finite values found, for the clips that had any.

    A sequence's frame holding any is dropped (no frame left: the modality is missing);
    in a single vector they are set to 0, as masking would drop the whole modality.
    """
    counts = {}
    for clip, values in list(features.items()):
        if not np.issubdtype(values.dtype, np.floating):
            continue
        bad = ~np.isfinite(values)
        if not bad.any():
            continue
        counts[clip] = int(bad.sum())
        if values.ndim < 2 or len(values) == 1:
            values[bad] = 0.0
            continue
        finite_frames = ~bad.reshape(len(values), -1).any(axis=1)
        if finite_frames.any():
            features[clip] = values[finite_frames]
        else:
            del features[clip]
    return counts


def standardize(features: dict[str, np.ndarray], train_ids: list[str]) -> dict:
    """Scales each dimension of ``features`` (clip id -> ``float32 (T, D)``) in place to zero
    mean and unit variance by the statistics of the ``train_ids`` clips; returns them for the
    record, ``mean`` and ``std`` per dimension (lists)."""
    frames = [features[i] for i in train_ids if i in features]
    if not frames:
        return {}
    stacked = np.concatenate(frames).astype(np.float64)
    mean = stacked.mean(0)
    std = stacked.std(0)
    # A constant dimension carries nothing; dividing by 1 keeps it at 0.
    std = np.where(std > 1e-8, std, 1.0)
    for clip, values in features.items():
        features[clip] = ((values - mean) / std).astype(np.float32)
    return {"mean": mean.tolist(), "std": std.tolist()}


class FeatureSource(DataSource):
    """A source of precomputed per-clip features.

    Subclasses implement :meth:`read` and :meth:`fingerprint` (extending :meth:`settings`);
    without text features in the files, text comes from the transcripts.

    Args:
        modalities (list[str] | None): Which of text, audio, video to prepare.
        standardize (bool): Scale audio and video features with training statistics.
        missing (MissingPolicy): A clip lacking a modality is masked or dropped.
        tokenizer (str): ``"word"``, ``"minilm"``, or a Hugging Face id or path.
        max_text_length (int): Longest token sequence kept.
        text_features (str | None): A language model whose token states become the text input.
        text_layer (int): Its hidden layer kept: ``-1`` the last, ``k`` the ``k``-th's output.
    """

    def __init__(self, modalities: list[str] | None = None, standardize: bool = True,
                 missing: MissingPolicy = "mask", tokenizer: str = "word", max_text_length: int = 64,
                 text_features: str | None = None, text_layer: int = -1) -> None:
        self.modalities = list(modalities or MODALITIES)
        unknown = set(self.modalities) - set(MODALITIES)
        if unknown:
            raise ValueError(f"modalities: unknown {sorted(unknown)}; expected some of {MODALITIES}")
        check_choice("missing", missing, MissingPolicy)
        self.standardize = standardize
        self.missing = missing
        self.text = TranscriptText(tokenizer, max_text_length, text_features, layer=text_layer)
        self.issues = FeatureIssues()

    @abstractmethod
    def read(self) -> FeatureData:
        """Reads and validates labels and features.

        Returns:
            FeatureData: Everything found, before cleaning.

        Raises:
            ValueError: On a bad label or feature size, naming the file and the id.
        """

    def settings(self) -> dict:
        """dict: The shared settings every fingerprint includes."""
        return {"modalities": self.modalities, "standardize": self.standardize,
                "missing": self.missing, **self.text.fingerprint()}

    def open(self, workdir: Path) -> tuple[list[dict], DatasetSpec]:
        data = self.read()
        self.issues = FeatureIssues(unlabelled={m: ids for m, ids in data.unlabelled.items()
                                                if m in self.modalities},
                                    left_out=data.left_out)
        features = {m: data.features[m] for m in self.modalities if m in data.features}
        train = [c["id"] for c in data.clips if c["split"] == "train"]
        stats = {}
        for modality, values in features.items():
            self.issues.nonfinite[modality] = {**data.nonfinite.get(modality, {}),
                                               **clean_nonfinite(values)}
            if self.standardize and modality != "text":
                stats[modality] = standardize(values, train)
        clips = self._apply_missing(data.clips, features)
        if "text" in self.modalities and "text" not in features:
            self.text.fit([c["transcript"] for c in clips if c["split"] == "train"],
                          {c["id"]: c["transcript"] for c in clips}, workdir)
        check_splits(clips, features, self.modalities, self.name)
        self.issues.log(self.name, data.files)
        records = [{**clip, **{m: features[m].get(clip["id"]) for m in features}} for clip in clips]
        return records, self._spec(features, data, stats)

    def _apply_missing(self, clips: list[dict], features: dict) -> list[dict]:
        absent = {m: [c["id"] for c in clips if c["id"] not in values]
                  for m, values in features.items()}
        self.issues.no_features = absent
        if self.missing == "mask":
            return clips
        lacking = set().union(*absent.values()) if absent else set()
        self.issues.dropped = [c["id"] for c in clips if c["id"] in lacking]
        return [c for c in clips if c["id"] not in lacking]

    def _spec(self, features: dict, data: FeatureData, stats: dict) -> DatasetSpec:
        dims = {m: feature_dim(values) for m, values in features.items() if m != "text"}
        kind, pad = "vectors", 0
        if "text" in self.modalities:
            if data.text is not None:
                kind, dims["text"], pad = data.text
            else:
                kind, dims["text"], pad = self.text.kind, self.text.input_dim, self.text.pad_token_id
        return DatasetSpec(input_dims={m: dims[m] for m in MODALITIES if m in self.modalities},
                           text_kind=kind, video_kind="features", pad_token_id=pad,
                           extras={"tokenizer": self.text.name, "files": data.files,
                                   "standardization": stats, "issues": self.issues.summary()})

    def load(self, record: dict) -> Loaded:
        example = {key: record[key] for key in ("id", "split", "transcript", "label")}
        example["clean_label"] = math.nan
        for modality in MODALITIES:
            example[modality] = record.get(modality)
        if "text" in self.modalities and "text" not in record:
            # A clip without a transcript lacks the text modality.
            example["text"] = (self.text.encode(record["id"], record["transcript"])
                               if str(record["transcript"]).strip() else None)
        return Loaded(example)


def feature_dim(values: dict[str, np.ndarray]) -> int:
    """Returns the feature size ``D`` of a modality's ``values``, clip id -> ``(T, D)`` array,
    from the first array (0 without any)."""
    first = next(iter(values.values()), None)
    return int(first.shape[-1]) if first is not None else 0


def check_splits(clips: list[dict], features: dict, modalities: list[str], name: str) -> None:
    """Fails when a split holds no clip, or no clip with one of the modalities.

    Args:
        clips (list[dict]): The clips kept.
        features (dict): Per feature modality, clip id -> array.
        modalities (list[str]): The modalities prepared.
        name (str): The source name, for the message.

    Raises:
        ValueError: Naming the split and the modality.
    """
    for split in SPLITS:
        ids = [c["id"] for c in clips if c["split"] == split]
        if not ids:
            raise ValueError(f"{name}: split {split!r} holds no clip after matching labels and "
                             "features (see the warnings above for what was left out)")
        for modality in modalities:
            if modality in features and not any(i in features[modality] for i in ids):
                raise ValueError(f"{name}: no clip of split {split!r} has {modality} features; "
                                 "check that the feature ids match the label ids")
