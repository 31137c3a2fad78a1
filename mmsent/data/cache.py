"""Prepare once, then read fast: the cached Arrow dataset behind every DataModule.

The cache folder is named after a hash of the source's fingerprint, so any changed
input or setting prepares anew. Shards are written as preparation goes, so an
interrupted run resumes; a file lock makes a second run of the same cache wait.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Literal

import datasets
from filelock import FileLock
from tqdm.auto import tqdm

from mmsent.data.batches import to_row
from mmsent.data.schema import MODALITIES, SPLITS, DatasetSpec
from mmsent.data.sources import DataSource
from mmsent.errors import ConfigError, WriteError, check_choice
from mmsent.io import no_room, save_json, write_failure

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
DecodeErrorPolicy = Literal["mask", "skip", "raise"]
WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)
NOTES_FILE = "notes.json"


@dataclass
class PreparedData:
    """A prepared dataset.

    Attributes:
        splits (datasets.DatasetDict): One memory-mapped dataset per split.
        spec (DatasetSpec): What the examples hold.
        path (Path): The cache folder.
        problems (list[str]): Clips that failed to decode, one message each.
        summary (dict): The counts of :func:`preparation_summary`.
        missing (dict[str, list[str]]): Per modality, the ids of the clips without it.
        notes (dict[str, dict]): Per clip id, what the source noted about it.
    """

    splits: datasets.DatasetDict
    spec: DatasetSpec
    path: Path
    problems: list[str]
    summary: dict = field(default_factory=dict)
    missing: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)


def cache_key(source: DataSource, on_error: str) -> str:
    """Returns the cache folder name, ``"<source name>-<12 hex digits>"``, for ``source`` and
    the decode-error policy ``on_error`` (it changes what is kept)."""
    payload = {"format": CACHE_FORMAT, "class": type(source).__qualname__,
               "on_error": on_error, **source.fingerprint()}
    digest = hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return f"{source.name}-{digest[:12]}"


def prepare(source: DataSource, cache_dir: str | Path, on_error: DecodeErrorPolicy = "mask",
            chunk_size: int = 256, num_workers: int = 0,
            multiprocessing_context: str | None = None) -> PreparedData:
    """Returns the cached dataset for a source, preparing it first when needed.

    Args:
        source (DataSource): The data source.
        cache_dir (str | Path): The folder holding all caches.
        on_error (DecodeErrorPolicy): For a clip whose file fails to decode: ``"mask"``
            the modality, ``"skip"`` the clip, or ``"raise"`` naming the file.
        chunk_size (int): Clips per shard: the most work an interruption can lose.
        num_workers (int): Processes decoding in parallel (0: in this process).
        multiprocessing_context (str | None): How those processes start.

    Returns:
        PreparedData: The dataset, its spec and any decode problems.

    Raises:
        OSError: If writing the cache fails (a full disk), naming the cache folder.
    """
    check_choice("on_decode_error", on_error, DecodeErrorPolicy)
    folder = Path(cache_dir) / cache_key(source, on_error)
    if not (folder / "spec.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        # One run prepares; another run of the same cache waits, then reads it.
        with FileLock(str(folder) + ".lock"):
            if not (folder / "spec.json").exists():
                _build_or_clean(source, folder, on_error, chunk_size, num_workers, multiprocessing_context)
    return _load(folder)


def _build_or_clean(source: DataSource, folder: Path, *options) -> None:
    """Builds a cache; a failure keeps only finished shards and names the folder if out of room."""
    existed = folder.exists()
    try:
        _build(source, folder, *options)
    except BaseException as error:
        if not existed and not any(folder.glob("shards/*/problems.json")):
            shutil.rmtree(folder, ignore_errors=True)
        failure = no_room(error)
        if failure is not None:
            raise WriteError(failure.errno, write_failure(folder, failure, f"preparing the cache {folder}")) from error
        if isinstance(error, OSError) and error.errno in WRITE_ERRORS:
            raise OSError(error.errno, f"preparing the cache {folder} failed: "
                                       f"{error.strerror or error}") from error
        raise


def _load(folder: Path) -> PreparedData:
    meta = json.loads((folder / "spec.json").read_text())
    splits = datasets.load_from_disk(str(folder / "data"))
    return PreparedData(splits, DatasetSpec(**meta["spec"]), folder, meta["problems"],
                        meta.get("summary", {}), meta.get("missing", {}), meta.get("notes", {}))


def _build(source: DataSource, folder: Path, on_error: str, chunk_size: int, workers: int,
           multiprocessing_context: str | None) -> None:
    # One progress bar over clips says it all; the per-shard save bars would bury it.
    datasets.disable_progress_bars()
    folder.mkdir(parents=True, exist_ok=True)
    records, spec = source.open(folder)
    if not records:
        raise ConfigError(f"{source.name} data in {getattr(source, 'root', '?')}: no clip to prepare")
    features = arrow_features(spec)
    shard_dir = folder / "shards"
    shard_dir.mkdir(exist_ok=True)
    chunks = [records[i:i + chunk_size] for i in range(0, len(records), chunk_size)]
    paths = [shard_dir / f"{index:05d}" for index in range(len(chunks))]
    tasks = [(source, chunk, spec, features, path, on_error) for chunk, path in zip(chunks, paths, strict=True)]
    problems: dict[Path, list[str]] = {}
    # Each worker decodes, converts and writes whole shards, so the main process has
    # nothing to do in between and every worker stays busy.
    pool = get_context(multiprocessing_context).Pool(workers) if workers > 0 else None
    with pool or nullcontext(), tqdm(total=len(records), desc=f"preparing {source.name}",
                                     unit="clip") as bar:
        for path, clips, shard_problems in (pool.imap_unordered(_shard, tasks) if pool else map(_shard, tasks)):
            problems[path] = shard_problems
            bar.update(clips)
    merged = datasets.concatenate_datasets([datasets.load_from_disk(str(path)) for path in paths])
    splits = datasets.DatasetDict({
        split: merged.filter(lambda s, name=split: [x == name for x in s], input_columns="split",
                             batched=True, desc=f"split {split}")
        for split in SPLITS})
    empty = [name for name, part in splits.items() if len(part) == 0]
    if empty:
        raise ValueError(f"{source.name}: split(s) {', '.join(empty)} hold no clip after preparation")
    splits.save_to_disk(str(folder / "data"))
    in_order = [problem for path in paths for problem in problems[path]]
    _report(source, in_order, on_error, folder)
    notes = {clip: note for path in paths if (path / NOTES_FILE).exists()
             for clip, note in json.loads((path / NOTES_FILE).read_text()).items()}
    ids = merged["id"]
    missing = {m: [clip for clip, present in zip(ids, merged[f"{m}_present"], strict=True) if not present]
               for m in spec.modalities}
    summary = preparation_summary(len(merged), missing, notes)
    _report_summary(source, summary, missing, folder)
    save_json(folder / "spec.json", {"spec": asdict(spec), "problems": in_order, "summary": summary,
                                     "missing": missing, "notes": notes})
    shutil.rmtree(shard_dir, ignore_errors=True)


def _shard(task: tuple) -> tuple[Path, int, list[str]]:
    """Writes one chunk's shard (or reads a finished one's); returns folder, records, problems."""
    source, chunk, spec, features, path, on_error = task
    datasets.disable_progress_bars()
    done = path / "problems.json"
    if done.exists():
        return path, len(chunk), json.loads(done.read_text())
    rows, problems, notes = [], [], {}
    for record in chunk:
        result = source.load(record)
        problems += result.problems
        if result.problems and on_error == "raise":
            raise RuntimeError("; ".join(result.problems))
        if result.problems and on_error == "skip":
            continue
        rows.append(to_row(result.example, spec))
        if result.notes:
            notes[rows[-1]["id"]] = result.notes
    shard = (datasets.Dataset.from_list(rows, features=features) if rows
             else datasets.Dataset.from_dict({name: [] for name in features}, features=features))
    shard.save_to_disk(str(path))
    save_json(path / NOTES_FILE, notes)
    save_json(done, problems)
    return path, len(chunk), problems


def preparation_summary(clips: int, missing: dict[str, list[str]], notes: dict[str, dict]) -> dict:
    """Counts of a preparation: clips, clips without each modality, each kind of note.

    Args:
        clips (int): Clips prepared.
        missing (dict[str, list[str]]): Per modality, the clips without it.
        notes (dict[str, dict]): Per clip, what the source noted.

    Returns:
        dict: ``{"clips": n, "missing": {modality: n}, <note>: {value: n}}``, e.g.
        ``"transcript": {"label.csv": 12, "subtitle": 1, "none": 1}``.
    """
    summary: dict = {"clips": clips, "missing": {m: len(ids) for m, ids in missing.items()}}
    for note in notes.values():
        for key, value in note.items():
            counts = summary.setdefault(key, {})
            counts[value] = counts.get(value, 0) + 1
    return summary


def _report_summary(source: DataSource, summary: dict, missing: dict[str, list[str]],
                    folder: Path) -> None:
    lacking = ", ".join(f"{count} without {m}" for m, count in summary["missing"].items() if count)
    details = "; ".join(f"{key}: " + ", ".join(f"{value} {count}" for value, count in sorted(counts.items()))
                        for key, counts in summary.items() if key not in ("clips", "missing"))
    line = f"{source.name}: {summary['clips']} clip(s) prepared" + (f", {lacking}" if lacking else "")
    if details:
        line += f" ({details})"
    if lacking:
        first = next(ids[0] for ids in missing.values() if ids)
        log.warning("%s; those modalities are masked for those clips, listed in %s. First: %s",
                    line, folder / "spec.json", first)
    else:
        log.info(line)


def _report(source: DataSource, problems: list[str], on_error: str, folder: Path) -> None:
    if not problems:
        return
    action = "left out" if on_error == "skip" else "kept with the failed modality masked"
    log.warning("%s: %d clip file(s) failed to decode and were %s; every one is listed in %s. "
                "First: %s", source.name, len(problems), action, folder / "spec.json", problems[0])


def arrow_features(spec: DatasetSpec) -> datasets.Features:
    """Returns the Arrow schema of examples prepared under ``spec``."""
    features = {"id": datasets.Value("string"), "split": datasets.Value("string"),
                "transcript": datasets.Value("string"), "label": datasets.Value("float32"),
                "clean_label": datasets.Value("float32")}
    for modality in spec.modalities:
        features[f"{modality}_present"] = datasets.Value("bool")
        features[modality] = _modality_feature(modality, spec)
    return datasets.Features(features)


def _modality_feature(modality: str, spec: DatasetSpec):
    dim = spec.input_dims[modality]
    if modality == "text" and spec.text_kind == "tokens":
        return datasets.Sequence(datasets.Value("int32"))
    if modality == "video" and spec.video_kind == "frames":
        return datasets.Array4D(tuple(spec.extras["frame_shape"]), "uint8")
    return datasets.Array2D((None, dim), "float32")


__all__ = ["MODALITIES", "PreparedData", "arrow_features", "cache_key", "prepare", "to_row"]
