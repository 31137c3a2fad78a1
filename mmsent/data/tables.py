"""Per-clip feature tables (Parquet or CSV) joined to a ``label.csv``, and the base
class every reader of precomputed features shares.

A feature source reads its features in full in ``open`` (they are small next to raw
video), checks them, sets non-finite values to 0, standardizes them with training
statistics, and hands each clip's arrays to ``load`` inside its record. Everything
it had to repair or leave out is counted, logged with the sample ids and kept in
the dataset spec (``spec.extras["issues"]``, saved in the cache's ``spec.json``).

Table layout (one file per modality, each optional)::

    video_id, clip_id, <modality>          # a vector (or a list of vectors) per cell
    video_id, clip_id, f0, f1, ..., fD     # or one numeric column per dimension

A cell holding one vector is an utterance-level feature and becomes a length-1
sequence (``T == 1``); a cell holding a list of equally long vectors is a sequence.
"""

from __future__ import annotations

import logging
import math
import os
from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mmsent.data.lm_features import TranscriptText
from mmsent.data.schema import MODALITIES, SPLITS, DatasetSpec, make_id
from mmsent.data.sources import DataSource, Loaded, content_hash, file_signature, read_label_table
from mmsent.errors import ConfigError

log = logging.getLogger(__name__)

MISSING_POLICIES = ("mask", "drop")
KEYS = ("video_id", "clip_id")


@dataclass
class FeatureData:
    """What a feature reader found on disk, before cleaning.

    Attributes:
        clips (list[dict]): One dict per labelled clip: ``id``, ``split``,
            ``transcript``, ``label``.
        features (dict[str, dict[str, np.ndarray]]): Per modality, clip id ->
            ``float32 (T, D)`` (or token ids ``int (L,)`` for text ids).
        files (dict[str, str]): Per modality, the file it came from (for messages).
        unlabelled (dict[str, list[str]]): Per modality, ids with features but no label.
        text (tuple[str, int, int] | None): ``(kind, input size, pad id)`` when the
            text modality comes from the file rather than from transcripts.
        nonfinite (dict[str, dict[str, int]]): Per modality, clip id -> NaN or
            infinite values the reader already set to 0 (while aligning).
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
        nonfinite (dict[str, dict[str, int]]): Per modality, clip id -> number of NaN
            or infinite values set to 0.
        no_features (dict[str, list[str]]): Per modality, labelled clips without it.
        unlabelled (dict[str, list[str]]): Per modality, feature ids (clips, or
            videos for ``.csd`` files) without a label.
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
        return {
            "nonfinite_values": {m: {"values": sum(c.values()), "clips": c}
                                 for m, c in self.nonfinite.items() if c},
            "labelled_without_features": {m: ids for m, ids in self.no_features.items() if ids},
            "features_without_label": {m: ids for m, ids in self.unlabelled.items() if ids},
            "dropped": self.dropped,
            **{reason: ids for reason, ids in self.left_out.items() if ids},
        }

    def log(self, name: str, files: dict[str, str]) -> None:
        """Logs one warning per kind of problem, with the first sample ids.

        Args:
            name (str): The source name.
            files (dict[str, str]): Per modality, the file it came from.
        """
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
    """Sets NaN and infinite values to 0, in place.

    Args:
        features (dict[str, np.ndarray]): Clip id -> float array.

    Returns:
        dict[str, int]: Clip id -> values replaced, for clips that had any.
    """
    counts = {}
    for clip, values in features.items():
        if not np.issubdtype(values.dtype, np.floating):
            continue
        bad = ~np.isfinite(values)
        if bad.any():
            values[bad] = 0.0
            counts[clip] = int(bad.sum())
    return counts


def standardize(features: dict[str, np.ndarray], train_ids: list[str]) -> dict:
    """Scales each feature dimension to zero mean and unit variance, in place.

    The statistics come from every frame of the training clips only, so nothing of
    the validation or test split leaks into preprocessing.

    Args:
        features (dict[str, np.ndarray]): Clip id -> ``float32 (T, D)``.
        train_ids (list[str]): The training clips.

    Returns:
        dict: ``mean`` and ``std`` per dimension (lists), for the record.
    """
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
    """A source of precomputed per-clip features, read in full by :meth:`read`.

    Subclasses implement :meth:`read` (and :meth:`fingerprint`, extending
    :meth:`settings`); this class cleans, standardizes, applies the missing-modality
    policy, checks the splits, and builds the text modality from transcripts when
    the files hold none.

    Args:
        modalities (list[str] | None): Which of text, audio, video to prepare.
        standardize (bool): Scale acoustic and visual features with training
            statistics (text vectors are left as the model produced them).
        missing (str): A labelled clip without one of the modalities is kept with it
            masked (``"mask"``) or left out (``"drop"``).
        tokenizer (str): Tokenizer of transcripts: ``"word"``, ``"minilm"``, or a
            Hugging Face id or path.
        max_text_length (int): Longest token sequence kept.
        text_features (str | None): A language model (``"minilm"``, an id or a path)
            whose frozen token states become the text input (see
            :mod:`mmsent.data.lm_features`); None for token ids.
    """

    def __init__(self, modalities: list[str] | None = None, standardize: bool = True,
                 missing: str = "mask", tokenizer: str = "word", max_text_length: int = 64,
                 text_features: str | None = None) -> None:
        self.modalities = list(modalities or MODALITIES)
        unknown = set(self.modalities) - set(MODALITIES)
        if unknown:
            raise ValueError(f"modalities: unknown {sorted(unknown)}; expected some of {MODALITIES}")
        if missing not in MISSING_POLICIES:
            raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
        self.standardize = standardize
        self.missing = missing
        self.text = TranscriptText(tokenizer, max_text_length, text_features)
        self.issues = FeatureIssues()

    @abstractmethod
    def read(self) -> FeatureData:
        """Reads labels and features, validating them.

        Returns:
            FeatureData: Everything found, before cleaning.

        Raises:
            ValueError: On a bad label or a feature size that differs between
                rows or files, naming the file and the id.
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
        dims = {m: _feature_dim(values) for m, values in features.items() if m != "text"}
        kind, pad = "vectors", 0
        if "text" in self.modalities:
            if data.text is not None:
                kind, dims["text"], pad = data.text
            else:
                kind, dims["text"], pad = self.text.kind, self.text.input_dim, self.text.pad_token_id
        return DatasetSpec(
            input_dims={m: dims[m] for m in MODALITIES if m in self.modalities},
            text_kind=kind, video_kind="features", pad_token_id=pad,
            extras={"tokenizer": self.text.name, "files": data.files,
                    "standardization": stats, "issues": self.issues.summary()},
        )

    def load(self, record: dict) -> Loaded:
        example = {key: record[key] for key in ("id", "split", "transcript", "label")}
        example["clean_label"] = math.nan
        for modality in MODALITIES:
            example[modality] = record.get(modality)
        if "text" in self.modalities and "text" not in record:
            example["text"] = self.text.encode(record["id"], record["transcript"])
        return Loaded(example)


def _feature_dim(values: dict[str, np.ndarray]) -> int:
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


def feature_matrix(value, where: str) -> np.ndarray:
    """One table cell (or row) as a ``float32 (T, D)`` array.

    Args:
        value: A vector, a list of equally long vectors, or a numeric row.
        where (str): The file and id, for the message.

    Returns:
        np.ndarray: ``(1, D)`` for a vector, ``(T, D)`` for a sequence.

    Raises:
        ValueError: If the cell is not numeric or its vectors differ in length.
    """
    try:
        array = _as_array(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: not a numeric feature vector ({error})") from error
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(f"{where}: expected a vector or a list of vectors, got shape {array.shape}")
    return array


def _as_array(value) -> np.ndarray:
    # Parquet hands a nested list column over as object arrays of arrays.
    if isinstance(value, list) or (isinstance(value, np.ndarray) and value.dtype == object):
        items = list(value)
        if items and np.ndim(items[0]) > 0:
            return np.stack([np.asarray(item, dtype=np.float32) for item in items])
    return np.asarray(value, dtype=np.float32)


def read_feature_table(path: Path, column: str | None) -> dict[str, np.ndarray]:
    """Reads one per-clip feature table.

    Args:
        path (Path): A ``.parquet`` or ``.csv`` file with ``video_id`` and ``clip_id``.
        column (str | None): The column holding a vector per cell; None takes every
            other column as one dimension each (the wide layout).

    Returns:
        dict[str, np.ndarray]: Clip id -> ``float32 (T, D)``.

    Raises:
        ValueError: On a missing column, a duplicate id, a non-numeric value, or a
            feature size that differs from the first row's, naming file, row and id.
    """
    table = _read_table(path)
    missing = [c for c in KEYS if c not in table.columns]
    if missing or (column is not None and column not in table.columns):
        raise ValueError(f"{path}: missing column(s) {', '.join(missing or [column])}; "
                         f"the table has {list(table.columns)}")
    if column is None:
        values = table.drop(columns=list(KEYS)).to_numpy()
    else:
        values = table[column].to_numpy()
    features: dict[str, np.ndarray] = {}
    dim = None
    for index, (video, clip) in enumerate(zip(table["video_id"], table["clip_id"], strict=True)):
        clip_id = make_id(str(video), str(clip))
        where = f"{path}, row {index + 2} ({clip_id})"
        if clip_id in features:
            raise ValueError(f"{where}: duplicate id {clip_id!r}")
        array = feature_matrix(values[index], where)
        if dim is None:
            dim = array.shape[1]
        elif array.shape[1] != dim:
            raise ValueError(f"{where}: feature size {array.shape[1]} differs from the "
                             f"first row's {dim}")
        features[clip_id] = array
    return features


def _read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"{path}: feature table not found")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype={"video_id": str, "clip_id": str})
    raise ValueError(f"{path}: expected a .parquet or .csv feature table")


class FeatureTableSource(FeatureSource):
    """Per-clip feature tables joined to an MMSA-style ``label.csv``.

    Labels, splits and transcripts come from ``label.csv`` (``video_id, clip_id,
    text, label, annotation, mode``); each modality's features from its own table,
    joined on ``video_id`` + ``clip_id``. Text comes from the transcripts
    (``tokenizer`` or ``text_features``) unless ``tables`` names a text table.

    Args:
        root (str): The dataset folder.
        label_file (str): The label table, relative to ``root``.
        tables (dict[str, str] | None): Per modality, its table relative to ``root``.
        columns (dict[str, str | None] | None): Per modality, the column holding the
            vectors; by default the column named after the modality if there is one,
            else every column but the keys (wide layout).
        modalities (list[str] | None): What to prepare; by default text and every
            modality with a table.
        **kwargs: :class:`FeatureSource` options (``standardize``, ``missing``,
            ``tokenizer``, ``max_text_length``, ``text_features``).
    """

    name = "tables"

    def __init__(self, root: str, label_file: str = "label.csv",
                 tables: dict[str, str] | None = None,
                 columns: dict[str, str | None] | None = None,
                 modalities: list[str] | None = None, **kwargs) -> None:
        self.root = Path(root)
        self.label_file = label_file
        self.tables = dict(tables or {})
        self.columns = dict(columns or {})
        unknown = set(self.tables) - set(MODALITIES)
        if unknown:
            raise ValueError(f"tables: unknown modality {sorted(unknown)}; expected some of {MODALITIES}")
        default = ["text", *[m for m in MODALITIES if m in self.tables and m != "text"]]
        super().__init__(modalities=modalities or default, **kwargs)
        lacking = [m for m in self.modalities if m != "text" and m not in self.tables]
        if lacking:
            raise ValueError(f"modalities: {lacking} have no entry in tables {self.tables}")

    def fingerprint(self) -> dict:
        labels = self.root / self.label_file
        return {
            "root": str(self.root.resolve()),
            "labels": content_hash(labels) if labels.exists() else None,
            "tables": {m: [f, file_signature([self.root / f])] for m, f in self.tables.items()},
            "columns": self.columns,
            **self.settings(),
        }

    def read(self) -> FeatureData:
        path = self.root / self.label_file
        table = read_label_table(path)
        clips = [{"id": r["id"], "split": r["mode"], "transcript": r["text"], "label": r["label"]}
                 for r in table.to_dict("records")]
        labelled = {c["id"] for c in clips}
        features, files, unlabelled = {}, {}, {}
        for modality in self.modalities:
            if modality not in self.tables:
                continue
            file = self.root / self.tables[modality]
            features[modality] = read_feature_table(file, self._column(modality, file))
            files[modality] = str(file)
            unlabelled[modality] = [i for i in features[modality] if i not in labelled]
            for clip in unlabelled[modality]:
                del features[modality][clip]
        return FeatureData(clips, features, files, unlabelled)

    def _column(self, modality: str, file: Path) -> str | None:
        if modality in self.columns:
            return self.columns[modality]
        return modality if modality in _table_columns(file) else None


def _table_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    if not path.exists():
        raise FileNotFoundError(f"{path}: feature table not found")
    if path.suffix == ".csv":
        return list(pd.read_csv(path, nrows=0).columns)
    return pq.read_schema(path).names


MOSI_ENV = "MMSENT_MOSI_DIR"
MOSI_DEFAULT = Path("..") / "shared" / "data" / "cmu-mosi"
MOSI_HELP = """CMU-MOSI not found; looked in: {places}.
Point mmsent at a folder holding
  label.csv                 video_id, clip_id, text, label, annotation, mode (MMSA's
                            layout: transcripts, scores in [-3, 3], standard folds)
  audio_opensmile.parquet   video_id, clip_id, audio (one acoustic vector per clip)
with the environment variable {env} or data.source.init_args.root.
The corpus (Zadeh et al., 2016) is distributed by CMU (CMU-MultimodalSDK,
github.com/CMU-MultiComp-Lab/CMU-MultimodalSDK) and, with MMSA's label.csv and
feature pickles, by thuiar/MMSA (github.com/thuiar/MMSA); MMSA's pickles load
directly with mmsent.data.MMSAPickleSource, the SDK's .csd files with
mmsent.data.SDKSource."""


def find_mosi(root: str | None = None) -> Path:
    """Finds the CMU-MOSI folder.

    Args:
        root (str | None): An explicit folder; else ``$MMSENT_MOSI_DIR``; else
            ``../shared/data/cmu-mosi`` relative to the working directory, then to
            the repository holding this package.

    Returns:
        Path: The folder holding ``label.csv``.

    Raises:
        FileNotFoundError: With instructions on how to get the data.
    """
    if root:
        places = [Path(root)]
    elif os.environ.get(MOSI_ENV):
        places = [Path(os.environ[MOSI_ENV])]
    else:
        places = [MOSI_DEFAULT, Path(__file__).resolve().parents[2] / MOSI_DEFAULT]
    for place in places:
        if (place / "label.csv").is_file():
            return place.resolve()
    raise FileNotFoundError(MOSI_HELP.format(places=", ".join(str(p.resolve()) for p in places),
                                             env=MOSI_ENV))


class MOSISource(FeatureTableSource):
    """Real CMU-MOSI: transcripts and scores from ``label.csv``, openSMILE acoustic
    vectors (73-d, one per clip) from ``audio_opensmile.parquet``.

    Args:
        root (str | None): The data folder; None finds it with :func:`find_mosi`
            (``$MMSENT_MOSI_DIR``, else ``../shared/data/cmu-mosi``).
        audio_table (str): The acoustic table, relative to the folder.
        modalities (list[str] | None): Default ``["text", "audio"]``.
        **kwargs: :class:`FeatureSource` options, e.g. ``text_features: minilm``.
    """

    name = "cmu-mosi"

    def __init__(self, root: str | None = None, audio_table: str = "audio_opensmile.parquet",
                 modalities: list[str] | None = None, **kwargs) -> None:
        folder = find_mosi(root)
        super().__init__(str(folder), tables={"audio": audio_table},
                         modalities=modalities or ["text", "audio"], **kwargs)
