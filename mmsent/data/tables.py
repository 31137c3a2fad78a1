"""Per-clip feature tables (Parquet or CSV) joined to a ``label.csv``.

Table layout (one file per modality, each optional)::

    video_id, clip_id, <modality>          # a vector (or a list of vectors) per cell
    video_id, clip_id, f0, f1, ..., fD     # or one numeric column per dimension
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mmsent.data.features import FeatureData, FeatureSource
from mmsent.data.labels import read_label_table
from mmsent.data.schema import MODALITIES, make_id
from mmsent.errors import ConfigError
from mmsent.io import content_hash, file_signature

KEYS = ("video_id", "clip_id")


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
        column (str | None): The column holding a vector per cell; None: the wide layout.

    Returns:
        dict[str, np.ndarray]: Clip id -> ``float32 (T, D)``.

    Raises:
        ValueError: On a missing column, a duplicate id, a non-numeric value, or a
            feature size differing from the first row's, naming file, row and id.
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
    """Per-clip feature tables joined on ``video_id`` + ``clip_id`` to a ``label.csv``.

    Text comes from the transcripts unless ``tables`` names a text table.

    Args:
        root (str): The dataset folder.
        label_file (str): The label table, relative to ``root``.
        tables (dict[str, str] | None): Per modality, its table relative to ``root``.
        columns (dict[str, str | None] | None): Per modality, its vector column; by default
            the one named after it, else the wide layout.
        modalities (list[str] | None): None: text and every modality with a table.
        **kwargs: :class:`FeatureSource` options.
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
        return {"root": str(self.root.resolve()),
                "labels": content_hash(labels) if labels.exists() else None,
                "tables": {m: [f, file_signature([self.root / f])] for m, f in self.tables.items()},
                "columns": self.columns, **self.settings()}

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
