"""``label.csv``, MMSA's label table: its one reader, for training and for scoring.

Every value is checked as it is read, and a bad one is named by file, row (1-based,
header = row 1), column and the value as written.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING

from mmsent.data.schema import check_label, check_split, make_id
from mmsent.errors import ConfigError, MissingFileError

if TYPE_CHECKING:
    import pandas as pd

RAW_COLUMNS = ("video_id", "clip_id", "text", "label", "mode")


def read_label_table(path: Path, labelled: bool = True) -> pd.DataFrame:
    """Reads and validates an MMSA-style ``label.csv``.

    An empty transcript is allowed (see :func:`~mmsent.data.transcripts.clip_transcript`);
    an optional ``media`` column names a clip's file, relative to the table's folder.

    Args:
        path (Path): The CSV (``video_id, clip_id, text, label, annotation, mode`` and
            optionally ``media``).
        labelled (bool): Every clip must have a label and a split (training); else only
            ``video_id`` and ``clip_id`` are required, an empty label read as NaN.

    Returns:
        pd.DataFrame: The table with an ``id`` column, float labels, whitespace-collapsed
        transcripts, and ``text``, ``mode`` and ``media`` columns (empty where not given).

    Raises:
        FileNotFoundError: If the file is missing.
        ValueError: On a table that is not CSV, a missing column, no row, a bad label,
            an unknown split or a duplicate id, naming the file, row, column and value.
    """
    if not path.is_file():
        raise MissingFileError(f"{path}: label file not found")
    check_utf8(path)
    # Imported here: loading a model folder reads no table.
    import pandas as pd

    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as error:
        raise ConfigError(f"{path}: not a CSV table ({' '.join(str(error).split())})") from None
    required = RAW_COLUMNS if labelled else ("video_id", "clip_id")
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    if table.empty:
        raise ConfigError(f"{path}: no clip: the table has a header but no row")
    check_row_lengths(path)
    for column in ("text", "label", "mode", "media"):
        if column not in table.columns:
            table[column] = ""
    seen: dict[str, int] = {}
    labels = []
    for index, row in enumerate(table.itertuples(index=False)):
        where = f"{path}, row {index + 2} ({row.video_id}/{row.clip_id})"
        if labelled or str(row.label).strip():
            labels.append(check_label(_label_value(row.label, where), where))
        else:
            labels.append(math.nan)
        if labelled or str(row.mode).strip():
            check_split(row.mode, where)
        clip = make_id(row.video_id, row.clip_id)
        if clip in seen:
            raise ValueError(f"{where}: duplicate id {clip!r} (first at row {seen[clip]})")
        seen[clip] = index + 2
    table["label"] = labels
    table["id"] = list(seen)
    table["text"] = [" ".join(str(text).split()) for text in table["text"]]
    return table


def _label_value(value, where: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: label {value!r} is not a number") from None


def check_utf8(path: Path) -> None:
    """Checks that a text file is UTF-8, naming the first line that is not.

    Args:
        path (Path): The file.

    Raises:
        ConfigError: Naming the file, the line (1-based) and the byte.
    """
    with path.open("rb") as stream:
        for number, line in enumerate(stream, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ConfigError(
                    f"{path}, row {number}: not UTF-8 (byte {line[error.start:error.start + 1]!r} at "
                    f"column {error.start + 1}); save the file as UTF-8") from None


def check_row_lengths(path: Path) -> None:
    """Checks that every row of a CSV table has one cell per column (pandas would pad it).

    Args:
        path (Path): The table, UTF-8.

    Raises:
        ConfigError: Naming the file, the row (header = row 1) and both counts.
    """
    with path.open(newline="", encoding="utf-8") as stream:
        rows = csv.reader(stream)
        columns = len(next(rows, []))
        for number, row in enumerate((r for r in rows if r), start=2):
            if len(row) != columns:
                raise ConfigError(f"{path}, row {number}: {len(row)} cell(s) under {columns} columns")
