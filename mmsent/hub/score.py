"""``mmsent score MODEL_DIR INPUT``: score raw clips with an exported model.

``INPUT`` is a folder in the raw layout or one clip's file. Clips stream through in batches,
so memory stays bounded. The scores go to stdout (or ``-o``), everything else to stderr; the
guide "Reuse a trained model" shows the output and the exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import torch
from tqdm.auto import tqdm

from mmsent.data.clip_files import media_for_file
from mmsent.data.labels import read_label_table
from mmsent.data.schema import MODALITIES
from mmsent.data.sources import RawClipSource
from mmsent.errors import CommandParser, ConfigError, MissingFileError
from mmsent.hub.model import SentimentModel
from mmsent.hub.preprocess import Clip
from mmsent.io import atomic_write
from mmsent.metrics import regression_metrics

LABEL_FILE = "label.csv"
COLUMNS = ["id", "score", *(f"score_{m}" for m in MODALITIES), "label_2", "label_5", "label_7",
           "modalities", "problems", "label"]


def folder_clips(root: Path, split: str | None, video_ext: str | None = None) -> tuple[list[Clip], bool]:
    """The clips of a folder in the raw layout, read as training reads them.

    Args:
        root: The folder.
        split: Keep only rows whose ``mode`` is this.
        video_ext: The container tried first, as in training.

    Returns:
        The clips, and whether every one has a label.

    Raises:
        MissingFileError: If ``label.csv`` is missing.
        ConfigError: If it is bad, has no ``mode`` to select ``split`` by, or no row of that split.
    """
    path = root / LABEL_FILE
    if not path.is_file():
        raise MissingFileError(f"{root}: no {LABEL_FILE} (columns video_id, clip_id and optionally "
                               f"text, label, mode, media)")
    table = read_label_table(path, labelled=False)
    if split:
        if not table["mode"].str.strip().any():
            raise ConfigError(f"{path}: --split {split} needs a mode column")
        table = table[table["mode"] == split]
        if table.empty:
            raise ConfigError(f"{path}: no row whose mode is {split!r}")
    clips, source = [], RawClipSource(str(root), video_ext=video_ext)
    for row in table.to_dict("records"):
        media = source.clip_media(row["video_id"], row["clip_id"], row["media"])
        label = row["label"]
        clips.append(Clip(id=row["id"], video=_path(media.video), audio=_path(media.audio), text=row["text"],
                          subtitle=_path(media.subtitle), label=None if math.isnan(label) else label))
    return clips, bool(clips) and all(c.label is not None for c in clips)


def single_clip(path: Path, text: str | None) -> Clip:
    """One clip from its file: a video (audio from it, or a ``.wav`` beside it) or an audio file.

    Args:
        path: The file.
        text: What is said in it.

    Returns:
        The clip, named after the file.
    """
    media = media_for_file(path)
    return Clip(id=path.stem, video=_path(media.video), audio=_path(media.audio), text=text,
                subtitle=_path(media.subtitle))


def _path(path: Path | None) -> str | None:
    return None if path is None else str(path)


def output_row(result: dict) -> dict:
    """A result flattened for the output (lists joined, absent scores empty)."""
    row = {column: result.get(column) for column in COLUMNS}
    row["modalities"] = "+".join(result["modalities"])
    row["problems"] = "; ".join(result["problems"])
    return row


def write_rows(results: Iterator[dict], out: TextIO, kind: str) -> list[dict]:
    """Writes each result as it comes, reporting clips with nothing readable on stderr.

    Args:
        results: :meth:`SentimentModel.score_clips`' results.
        out: Where rows go.
        kind: ``"csv"`` or ``"jsonl"``.

    Returns:
        Per clip only ``score``, ``label``, ``modalities`` and ``failed``.
    """
    writer = csv.DictWriter(out, COLUMNS) if kind == "csv" else None
    if writer:
        writer.writeheader()
    kept = []
    for result in results:
        failed = result["score"] is None
        if failed:
            reason = "; ".join(result["problems"]) or "no input the model uses"
            print(f"error: {result['id']}: nothing readable to score ({reason})", file=sys.stderr)
        elif writer:
            writer.writerow(output_row(result))
        else:
            out.write(json.dumps(output_row(result) | {"modalities": result["modalities"],
                                                       "problems": result["problems"]}) + "\n")
        out.flush()
        kept.append({"score": result["score"], "label": result["label"], "modalities": result["modalities"],
                     "failed": failed})
    return kept


def load_model(model_dir: str) -> SentimentModel:
    """The model in ``model_dir``; what loading prints goes to stderr (stdout holds the scores)."""
    with contextlib.redirect_stdout(sys.stderr):
        return SentimentModel.from_pretrained(model_dir)


def check_output(output: str | None, model_dir: str, target: Path) -> None:
    """Refuses an output file that is an input: a model file, the clip file or ``label.csv``.

    Args:
        output: The ``-o`` file.
        model_dir: The model folder.
        target: The clip file or the folder of clips.

    Raises:
        ConfigError: If ``output`` is an input, naming it.
    """
    if output is None:
        return
    folder = Path(model_dir)
    inputs = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    for path in [*inputs, target / LABEL_FILE if target.is_dir() else target]:
        if path.resolve() == Path(output).resolve():
            raise ConfigError(f"-o {output}: that is an input ({path}); write the scores to another file")


def summary(kept: list[dict], used: list[str]) -> tuple[str, list[str]]:
    """Clips scored and, per modality the model uses, how many were scored without it.

    Args:
        kept: From :func:`write_rows`.
        used: The modalities the model uses.

    Returns:
        The summary line, and the modalities the model uses that no scored clip had.
    """
    scored = [k for k in kept if not k["failed"]]
    without = {m: sum(m not in k["modalities"] for k in scored) for m in used}
    parts = ", ".join(f"{m} {n}" for m, n in without.items())
    line = f"scored {len(scored)} of {len(kept)} clip(s); scored without each modality the model uses: {parts}"
    absent = [m for m, n in without.items() if scored and n == len(scored)]
    return line, absent


def metrics_line(kept: list[dict], used: list[str]) -> str | None:
    """The MMSA metrics of the scored clips against their labels, on how many and with what.

    Args:
        kept: From :func:`write_rows`.
        used: The modalities the model uses.

    Returns:
        The line; None without a scored, labelled clip.
    """
    scored = [k for k in kept if not k["failed"] and k["label"] is not None]
    if not scored:
        return None
    metrics = regression_metrics(torch.tensor([k["score"] for k in scored]),
                                 torch.tensor([k["label"] for k in scored]))
    had = [m for m in used if any(m in k["modalities"] for k in scored)]
    partial = [f"{m} on {sum(m in k['modalities'] for k in scored)}" for m in had
               if not all(m in k["modalities"] for k in scored)]
    scope = f"on {len(scored)} clip(s), with {'+'.join(had) or 'nothing'}"
    scope += f" ({', '.join(partial)} of them)" if partial else ""
    values = "  ".join(f"{name} {value:.4f}" for name, value in metrics.items() if not math.isnan(value))
    return f"metrics {scope}: {values}"


def score(model_dir: str, target: str, output: str | None = None, kind: str | None = None,
          text: str | None = None, split: str | None = None, batch_size: int = 32,
          allow_missing: bool = False) -> int:
    """Scores a folder or one clip; the body of ``mmsent score``.

    Args:
        model_dir: The exported model folder.
        target: A folder in the raw layout, or one clip's file.
        output: The output file; None writes to stdout.
        kind: ``"csv"`` or ``"jsonl"``; by default from ``output``'s suffix, else CSV.
        text: The transcript of a single clip.
        split: For a folder: only rows of this ``mode``.
        batch_size: Clips per forward pass.
        allow_missing: Accept scores when a modality the model uses is in no clip.

    Returns:
        The exit status: 1 when a clip could not be scored or a used modality is in no clip
            (unless ``allow_missing``), else 0.

    Raises:
        ConfigError: If ``batch_size`` < 1 or ``output`` is an input.
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    path = Path(target)
    check_output(output, model_dir, path)
    model = load_model(model_dir)
    if path.is_dir():
        ext = (model.config["preprocessing"].get("video") or {}).get("container")
        clips, _ = folder_clips(path, split, ext)
    elif path.is_file():
        clips = [single_clip(path, text)]
    else:
        raise MissingFileError(f"{target}: no such clip file or folder")
    kind = kind or ("jsonl" if output and Path(output).suffix in (".jsonl", ".json") else "csv")
    bar = tqdm(clips, desc="scoring", unit="clip", file=sys.stderr, disable=len(clips) < 2)
    with torch.inference_mode():
        results = model.score_clips(bar, batch_size)
        kept = write_output(results, output, kind)
    line = metrics_line(kept, model.modalities)
    if line:
        print(line, file=sys.stderr)
    failed = sum(k["failed"] for k in kept)
    if failed:
        print(f"{failed} of {len(kept)} clip(s) could not be scored", file=sys.stderr)
    line, absent = summary(kept, model.modalities)
    print(line, file=sys.stderr)
    if absent and not allow_missing:
        print(f"error: no clip had {' nor '.join(absent)}, which the model uses: every score above comes "
              f"without it; check the clips' files (pass --allow-missing to accept such scores)",
              file=sys.stderr)
        return 1
    return 1 if failed else 0


def write_output(results: Iterator[dict], output: str | None, kind: str) -> list[dict]:
    """Writes the rows to stdout, or to ``output`` whole or not at all (an interrupted
    run leaves no half-written file and an earlier one in place).

    Args:
        results: The scored clips, as :func:`write_rows` takes them.
        output: The file, or None for stdout.
        kind: ``"csv"`` or ``"jsonl"``.

    Returns:
        What :func:`write_rows` returns.
    """
    if not output:
        return write_rows(results, sys.stdout, kind)
    kept = []

    def write(part: Path) -> None:
        with open(part, "w", newline="") as out:
            kept.extend(write_rows(results, out, kind))

    atomic_write(Path(output), write, "scores")
    return kept


def positive_int(value: str) -> int:
    """An argument that must be a whole number >= 1 (argparse type)."""
    number = int(value) if value.strip().lstrip("-").isdigit() else None
    if number is None or number < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {value}")
    return number


def main(args: list[str] | None = None) -> None:
    """``mmsent score``: parses the arguments, scores, exits with the status.

    Args:
        args: The arguments after ``score``.

    Raises:
        SystemExit: With status 1 when a clip could not be scored or a used modality is in no clip.
        UsageError: On arguments it cannot parse.
        MMSentError: On a bad model folder or input, naming it (``mmsent.main`` shows it).
    """
    parser = CommandParser(prog="mmsent score", description="Score raw clips with an exported model.")
    parser.add_argument("model_dir", help="the model folder (mmsent export), e.g. models/quickstart")
    parser.add_argument("input", help="a folder in the raw layout (label.csv + Raw/) or one clip's file")
    parser.add_argument("-o", "--output", help="the output file (.csv or .jsonl); default: stdout")
    parser.add_argument("--format", choices=("csv", "jsonl"), help="the output format (default: from -o, else csv)")
    parser.add_argument("--text", help="what is said in the clip (single-clip input)")
    parser.add_argument("--split", help="score only the label.csv rows whose mode is this (train/valid/test)")
    parser.add_argument("--batch-size", type=positive_int, default=32,
                        help="clips per forward pass (bounds memory)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="exit 0 even when a modality the model uses is missing from every clip")
    parsed = parser.parse_args(args)
    status = score(parsed.model_dir, parsed.input, parsed.output, parsed.format, parsed.text, parsed.split,
                   parsed.batch_size, parsed.allow_missing)
    if status:
        raise SystemExit(status)
