"""``mmsent score MODEL_DIR INPUT``: score raw clips with an exported model.

``INPUT`` is a folder in the raw layout (``label.csv`` with ``video_id``, ``clip_id``
and optionally ``text``, ``label``, ``mode``; media under ``Raw/<video_id>/``) or one
clip's file (with ``--text``). Clips stream through in batches, so memory stays
bounded whatever the folder's size. The output has one row per clip: id, fused score,
each modality's own score, the 2-/5-/7-class labels, the modalities read and the
inputs that could not be read. A clip with nothing readable gets a one-line error on
stderr, the others are still scored, and the exit status is 1. With labels, the MMSA
metrics are printed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pandas as pd
import torch
from tqdm.auto import tqdm

from mmsent.data.schema import MODALITIES, make_id
from mmsent.data.sources import RawClipSource, audio_file
from mmsent.errors import ConfigError, MissingFileError, MMSentError
from mmsent.hub.model import SentimentModel
from mmsent.hub.preprocess import Clip
from mmsent.metrics import regression_metrics

LABEL_FILE = "label.csv"
COLUMNS = ["id", "score", *(f"score_{m}" for m in MODALITIES), "label_2", "label_5", "label_7",
           "modalities", "problems", "label"]
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".m4a", ".ogg")


def folder_clips(root: Path, split: str | None, video_ext: str) -> tuple[list[Clip], bool]:
    """The clips of a folder in the raw layout.

    Args:
        root (Path): The folder.
        split (str | None): Keep only rows whose ``mode`` is this.
        video_ext (str): The video files' extension.

    Returns:
        tuple[list[Clip], bool]: The clips, and whether every one has a label.

    Raises:
        MissingFileError: If ``label.csv`` is missing.
        ConfigError: If it lacks ``video_id`` or ``clip_id``, or has no ``mode`` to
            select ``split`` by.
    """
    path = root / LABEL_FILE
    if not path.is_file():
        raise MissingFileError(f"{root}: no {LABEL_FILE} (columns video_id, clip_id and optionally "
                               f"text, label, mode)")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("video_id", "clip_id") if c not in table.columns]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(missing)}")
    if split:
        if "mode" not in table.columns:
            raise ConfigError(f"{path}: --split {split} needs a mode column")
        table = table[table["mode"] == split]
    paths = RawClipSource(str(root), video_ext=video_ext)
    clips = []
    for row in table.to_dict("records"):
        video, audio = paths.clip_paths(row["video_id"], row["clip_id"])
        label = row.get("label", "")
        clips.append(Clip(id=make_id(row["video_id"], row["clip_id"]), video=str(video), audio=str(audio),
                          text=row.get("text"), label=float(label) if label.strip() else None))
    return clips, bool(clips) and all(c.label is not None for c in clips)


def single_clip(path: Path, text: str | None) -> Clip:
    """One clip from its file: a video (audio from it, or a ``.wav`` beside it) or an audio file.

    Args:
        path (Path): The file.
        text (str | None): What is said in it.

    Returns:
        Clip: The clip, named after the file.
    """
    if path.suffix.lower() in AUDIO_SUFFIXES:
        return Clip(id=path.stem, audio=str(path), text=text)
    return Clip(id=path.stem, video=str(path), audio=str(audio_file(path)), text=text)


def output_row(result: dict) -> dict:
    """dict: A result flattened for the output (lists joined, absent scores empty)."""
    row = {column: result.get(column) for column in COLUMNS}
    row["modalities"] = "+".join(result["modalities"])
    row["problems"] = "; ".join(result["problems"])
    return row


def write_rows(results: Iterator[dict], out: TextIO, kind: str) -> list[dict]:
    """Writes each result as it comes, reporting clips with nothing readable on stderr.

    Args:
        results (Iterator[dict]): :meth:`SentimentModel.score_clips`' results.
        out (TextIO): Where rows go.
        kind (str): ``"csv"`` or ``"jsonl"``.

    Returns:
        list[dict]: Per clip only ``score``, ``label`` and ``failed``, for the metrics
        and the exit status.
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
        kept.append({"score": result["score"], "label": result["label"], "failed": failed})
    return kept


def score(model_dir: str, target: str, output: str | None = None, kind: str | None = None,
          text: str | None = None, split: str | None = None, batch_size: int = 32) -> int:
    """Scores a folder or one clip; the body of ``mmsent score``.

    Args:
        model_dir (str): The exported model folder.
        target (str): A folder in the raw layout, or one clip's file.
        output (str | None): The output file; None writes to stdout.
        kind (str | None): ``"csv"`` or ``"jsonl"``; by default from ``output``'s
            suffix, else CSV.
        text (str | None): The transcript of a single clip.
        split (str | None): For a folder: only rows of this ``mode``.
        batch_size (int): Clips per forward pass.

    Returns:
        int: The exit status: 1 when some clip could not be scored, else 0.
    """
    model = SentimentModel.from_pretrained(model_dir)
    path = Path(target)
    if path.is_dir():
        ext = model.config["preprocessing"]["video"]["container"]
        clips, labelled = folder_clips(path, split, ext)
    elif path.is_file():
        clips, labelled = [single_clip(path, text)], False
    else:
        raise MissingFileError(f"{target}: no such clip file or folder")
    kind = kind or ("jsonl" if output and Path(output).suffix in (".jsonl", ".json") else "csv")
    bar = tqdm(clips, desc="scoring", unit="clip", file=sys.stderr, disable=len(clips) < 2)
    with torch.inference_mode():
        results = model.score_clips(bar, batch_size)
        if output:
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            with open(output, "w", newline="") as out:
                kept = write_rows(results, out, kind)
        else:
            kept = write_rows(results, sys.stdout, kind)
    scored = [k for k in kept if not k["failed"]]
    if labelled and scored:
        metrics = regression_metrics(torch.tensor([k["score"] for k in scored]),
                                     torch.tensor([k["label"] for k in scored]))
        print("  ".join(f"{name} {value:.4f}" for name, value in metrics.items() if not math.isnan(value)),
              file=sys.stderr if output is None else sys.stdout)
    failed = len(kept) - len(scored)
    if failed:
        print(f"{failed} of {len(kept)} clip(s) could not be scored", file=sys.stderr)
    return 1 if failed else 0


def main(args: list[str] | None = None) -> None:
    """``mmsent score``: parses the arguments, scores, exits with the status.

    Args:
        args (list[str] | None): The arguments after ``score``.

    Raises:
        SystemExit: With status 1 when some clip could not be scored, or the message
            of a bad model folder or input.
    """
    parser = argparse.ArgumentParser(prog="mmsent score", description="Score raw clips with an exported model.")
    parser.add_argument("model_dir", help="the model folder (mmsent export), e.g. models/quickstart")
    parser.add_argument("input", help="a folder in the raw layout (label.csv + Raw/) or one clip's file")
    parser.add_argument("-o", "--output", help="the output file (.csv or .jsonl); default: stdout")
    parser.add_argument("--format", choices=("csv", "jsonl"), help="the output format (default: from -o, else csv)")
    parser.add_argument("--text", help="what is said in the clip (single-clip input)")
    parser.add_argument("--split", help="score only the label.csv rows whose mode is this (train/valid/test)")
    parser.add_argument("--batch-size", type=int, default=32, help="clips per forward pass (bounds memory)")
    parsed = parser.parse_args(args)
    try:
        status = score(parsed.model_dir, parsed.input, parsed.output, parsed.format, parsed.text, parsed.split,
                       parsed.batch_size)
    except MMSentError as error:
        raise SystemExit(f"error: {error}") from None
    if status:
        raise SystemExit(status)
