"""Properties of reading a tampered ``label.csv`` (hypothesis): whatever is changed in
the table, its one reader (training and scoring alike) either returns exactly what the
file says, cell for cell, or refuses it with an error that names the file; it never
changes a value silently, and the command line shows such an error in one line."""

import csv
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_safe_load import write_tiny_model

from mmsent.data.labels import read_label_table
from mmsent.data.schema import make_id
from mmsent.main import main

EXAMPLES = settings(max_examples=120, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
HEADER = ["video_id", "clip_id", "text", "label", "mode"]
ROWS = [["v1", "1", "a fine day", "1.5", "train"], ["v1", "2", "so bad", "-2", "valid"],
        ["v2", "1", "", "0", "test"], ["v2", "2", "meh", "0.25", "train"]]
cell_values = st.sampled_from(["", " ", "nan", "NaN", "inf", "-inf", "1e400", "3.0001", "-3", "3", " 2 ", "high",
                               "train", "valid", "test", "dev", "v1", "1", "a,b", '"quoted"', "two\nlines",
                               "é", "\x00"]) | st.text(max_size=6)


def write_table(path, rows, header=HEADER):
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)


mutations = st.one_of(
    st.tuples(st.just("cell"), st.integers(0, len(ROWS) - 1), st.integers(0, len(HEADER) - 1), cell_values),
    st.tuples(st.just("drop_column"), st.integers(0, len(HEADER) - 1)),
    st.tuples(st.just("duplicate_row"), st.integers(0, len(ROWS) - 1)),
    st.tuples(st.just("short_row"), st.integers(0, len(ROWS) - 1), st.integers(0, len(HEADER) - 1)),
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0)),
    st.tuples(st.just("latin1"), st.integers(0, len(ROWS) - 1)),
)


def mutated(path, steps):
    """Writes the table with the mutations applied, in order."""
    header, rows = list(HEADER), [list(row) for row in ROWS]
    for step in steps:
        kind = step[0]
        if kind == "cell":
            _, row, column, value = step
            if row < len(rows) and column < len(rows[row]):
                rows[row][column] = value
        elif kind == "drop_column" and step[1] < len(header):
            del header[step[1]]
            rows = [row[:step[1]] + row[step[1] + 1:] for row in rows]
        elif kind == "duplicate_row" and step[1] < len(rows):
            rows.append(list(rows[step[1]]))
        elif kind == "short_row" and step[1] < len(rows):
            rows[step[1]] = rows[step[1]][:step[2]]
    write_table(path, rows, header)
    for step in steps:
        if step[0] == "truncate":
            data = path.read_bytes()
            path.write_bytes(data[:int(len(data) * step[1])])
        elif step[0] == "latin1":
            lines = path.read_bytes().split(b"\n")
            if step[1] + 1 < len(lines):
                lines[step[1] + 1] += b"caf\xe9"
                path.write_bytes(b"\n".join(lines))


def as_written(path):
    """The rows as the file holds them, read independently of mmsent (None: not UTF-8)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None
    return list(csv.reader(text.splitlines(keepends=True)))


@given(steps=st.lists(mutations, min_size=1, max_size=3), labelled=st.booleans())
@EXAMPLES
def test_a_tampered_label_table_is_read_as_written_or_refused_naming_the_file(tmp_path, steps, labelled):
    path = tmp_path / "label.csv"
    mutated(path, steps)
    written = as_written(path)
    try:
        table = read_label_table(path, labelled=labelled)
    except (ValueError, FileNotFoundError) as error:
        assert str(path) in str(error), f"the error names no file: {error}"
        return
    assert written is not None, "a file that is not UTF-8 was read"
    header, rows = written[0], [row for row in written[1:] if row]
    assert len(table) == len(rows), "rows were dropped or added"
    for row, (_, read) in zip(rows, table.iterrows(), strict=True):
        assert len(row) == len(header), f"a row of {len(row)} cells under {len(header)} columns was read: {row}"
        cells = dict(zip(header, row, strict=True))
        assert read["id"] == make_id(cells["video_id"], cells["clip_id"])
        assert read["text"] == " ".join(cells.get("text", "").split())
        label = cells.get("label", "")
        if label.strip():
            assert read["label"] == float(label) and math.isfinite(read["label"]) and abs(read["label"]) <= 3
        else:
            assert not labelled and math.isnan(read["label"])
        assert read["mode"] == cells.get("mode", "")


@pytest.mark.parametrize("content", [b"video_id,clip_id,text,label,mode\nv,1,hi,high,train\n",
                                     b"video_id,clip_id,text,label,mode\nv,1,caf\xe9,1,train\n",
                                     b"video_id,clip_id,text,label,mode\n"])
def test_a_bad_label_table_is_one_line_on_the_command_line(tmp_path, capsys, monkeypatch, content):
    monkeypatch.delenv("MMSENT_DEBUG", raising=False)
    write_tiny_model(tmp_path / "model")
    root = tmp_path / "clips"
    root.mkdir()
    (root / "label.csv").write_bytes(content)
    with pytest.raises(SystemExit) as stop:
        main(["score", str(tmp_path / "model"), str(root)])
    printed = capsys.readouterr().err
    assert stop.value.code != 0 and "Traceback" not in printed
    assert printed.startswith(f"mmsent: error: {root / 'label.csv'}") and len(printed.strip().splitlines()) <= 2
