"""Writing a generated dataset: media in worker processes, then labels and a marker.

The same parameters always give the same files, and an interrupted run never looks
complete: rerunning it resumes.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from filelock import FileLock
from tqdm.auto import tqdm

from mmsent.data.schema import SPLITS
from mmsent.data.synthetic.audio import sample_voice, synthesize_audio, write_wav
from mmsent.data.synthetic.plan import (
    LABEL_COLUMNS,
    MEDIA_STREAM,
    VIDEO_STREAM,
    plan_clips,
    stream_rng,
)
from mmsent.data.synthetic.video import (
    MOUTH_MIDPOINT_SPREAD,
    add_frame_noise,
    mouth_curvatures,
    render_face_frames,
    sample_appearance,
    sample_face_style,
    write_mp4,
)
from mmsent.io import atomic_write

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
"""int: Bumped whenever the generated content changes for the same parameters."""


@dataclass(frozen=True)
class _MediaJob:
    """What a worker needs to write one clip's media."""

    index: int
    video_index: int
    video_dir: str
    clip_id: int
    audio_score: float
    video_score: float
    params: dict


def _media_paths(job: _MediaJob) -> tuple[Path, Path]:
    """The final MP4 and WAV paths of one clip."""
    base = Path(job.video_dir) / str(job.clip_id)
    return base.with_suffix(".mp4"), base.with_suffix(".wav")


def _write_clip(job: _MediaJob) -> int:
    """Writes one clip's video and audio atomically; returns the clip index."""
    params = job.params
    video_rng = stream_rng(params["seed"], VIDEO_STREAM, job.video_index)
    voice, appearance = sample_voice(video_rng), sample_appearance(video_rng)
    rng = stream_rng(params["seed"], MEDIA_STREAM, job.index)
    mp4_path, wav_path = _media_paths(job)
    size, frames = params["frame_size"], params["frames"]

    style = sample_face_style(appearance, size, rng)
    midpoint = float(rng.uniform(-MOUTH_MIDPOINT_SPREAD, MOUTH_MIDPOINT_SPREAD))
    curvatures = mouth_curvatures(midpoint, job.video_score, frames)
    pixels = add_frame_noise(render_face_frames(curvatures, style, size), rng)
    atomic_write(mp4_path, lambda tmp: write_mp4(tmp, pixels, params["fps"]))

    duration = float(rng.uniform(1.0, 2.0))
    samples = synthesize_audio(job.audio_score, duration, params["sample_rate"], voice, rng)
    atomic_write(wav_path, lambda tmp: write_wav(tmp, samples, params["sample_rate"]))
    return job.index


def _params(**kwargs) -> dict:
    """The generation parameters as JSON-comparable values."""
    kwargs["split_fractions"] = [float(v) for v in kwargs["split_fractions"]]
    kwargs["noise_std"] = float(kwargs["noise_std"])
    return kwargs


def _check_params(params: dict) -> None:
    """Rejects parameters that cannot produce a valid dataset."""
    fractions = params["split_fractions"]
    if len(fractions) != len(SPLITS) or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"split_fractions must be {len(SPLITS)} non-negative shares summing to 1, "
                         f"got {fractions}")
    if params["num_clips"] < sum(f > 0 for f in fractions):
        raise ValueError(f"num_clips={params['num_clips']} is too few for the requested splits")
    if params["frames"] < 2:
        raise ValueError("frames must be at least 2: the video cue is a change over time")
    if params["frame_size"] < 16 or params["frame_size"] % 2:
        raise ValueError("frame_size must be even and at least 16 (H.264 yuv420p)")
    if params["fps"] < 1 or params["sample_rate"] < 8000 or params["noise_std"] < 0:
        raise ValueError("fps must be >= 1, sample_rate >= 8000 and noise_std >= 0")


def _read_marker(out_dir: Path) -> dict | None:
    """The contents of ``generated.json``, or None when absent."""
    marker = out_dir / "generated.json"
    return json.loads(marker.read_text(encoding="utf-8")) if marker.exists() else None


def _write_marker(out_dir: Path, params: dict, complete: bool) -> None:
    """Writes ``generated.json`` atomically."""
    record = {"generator": "mmsent.data.synthetic", "version": GENERATOR_VERSION,
              "params": params, "complete": complete}
    atomic_write(out_dir / "generated.json",
                 lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8"))


def _prepare_dir(out_dir: Path, params: dict, overwrite: bool) -> bool:
    """True when ``out_dir`` is complete; refuses another dataset there unless ``overwrite``."""
    marker = _read_marker(out_dir)
    same = marker is not None and (marker.get("params"), marker.get("version")) == (
        params, GENERATOR_VERSION)
    if same and marker.get("complete") and (out_dir / "label.csv").exists():
        return True
    foreign = marker is None and ((out_dir / "label.csv").exists() or (out_dir / "Raw").exists())
    if (foreign or (marker is not None and not same)) and not overwrite:
        what = "holds a dataset without generated.json" if foreign else (
            f"was generated with other parameters (generated.json: {marker.get('params')}, "
            f"version {marker.get('version')})")
        raise ValueError(
            f"{out_dir} {what}; requested {params}. Pass overwrite=True to regenerate.")
    if not same:
        # An unfinished run with the same parameters resumes; anything else starts clean.
        shutil.rmtree(out_dir / "Raw", ignore_errors=True)
        for name in ("label.csv", "generated.json"):
            (out_dir / name).unlink(missing_ok=True)
    return False


def _media_jobs(table: pd.DataFrame, out_dir: Path, params: dict) -> Iterator[_MediaJob]:
    """One job per clip whose media are not on disk yet, creating the video folders."""
    for index, row in enumerate(table.itertuples(index=False)):
        video_dir = out_dir / "Raw" / row.video_id
        video_dir.mkdir(parents=True, exist_ok=True)
        job = _MediaJob(index, row.video_index, str(video_dir), row.clip_id,
                        row.audio_score, row.video_score, params)
        if not all(path.exists() for path in _media_paths(job)):
            yield job


def _write_media(jobs: list[_MediaJob], total: int, num_workers: int) -> None:
    """Writes the clips' media, in a process pool when ``num_workers > 1``."""
    progress = tqdm(total=total, initial=total - len(jobs), desc="writing clips", unit="clip")
    with progress:
        if num_workers <= 1:
            for job in jobs:
                _write_clip(job)
                progress.update()
            return
        with multiprocessing.get_context().Pool(num_workers) as pool:
            for _ in pool.imap_unordered(_write_clip, jobs, chunksize=8):
                progress.update()


def generate_raw_dataset(out_dir: str | os.PathLike, num_clips: int = 1200, seed: int = 0,
                         frames: int = 16, frame_size: int = 64, fps: int = 8,
                         sample_rate: int = 16000, noise_std: float = 0.3,
                         split_fractions: Sequence[float] = (0.7, 0.15, 0.15), num_workers: int = 1,
                         overwrite: bool = False) -> Path:
    """Writes a generated raw dataset in MMSA's raw layout.

    Every clip draws from a stream seeded by ``(seed, clip index)``, so the files do
    not depend on the number of workers.

    Args:
        out_dir (str | os.PathLike): The dataset folder; created when missing.
        num_clips (int): The number of clips.
        seed (int): The random seed.
        frames (int): Frames per video.
        frame_size (int): Frame width and height in pixels (even).
        fps (int): Video frames per second.
        sample_rate (int): Audio samples per second.
        noise_std (float): The standard deviation of the Gaussian label noise.
        split_fractions (Sequence[float]): Train, valid and test shares, by whole video.
        num_workers (int): Processes writing media; 1 writes in this process.
        overwrite (bool): Replace a dataset generated with other parameters.

    Returns:
        Path: ``out_dir``.

    Raises:
        ValueError: On invalid parameters, or another dataset in ``out_dir`` without ``overwrite``.
    """
    out_dir = Path(out_dir)
    params = _params(num_clips=num_clips, seed=seed, frames=frames, frame_size=frame_size, fps=fps,
                     sample_rate=sample_rate, noise_std=noise_std, split_fractions=split_fractions)
    _check_params(params)
    out_dir.mkdir(parents=True, exist_ok=True)
    # A second run asking for the same folder waits for the first, then finds it complete.
    with FileLock(str(out_dir) + ".lock"):
        if _prepare_dir(out_dir, params, overwrite):
            logger.info("%s is already generated with these parameters", out_dir)
            return out_dir
        _write_marker(out_dir, params, complete=False)
        table = plan_clips(num_clips, seed, noise_std, split_fractions)
        _write_media(list(_media_jobs(table, out_dir, params)), len(table), num_workers)
        atomic_write(out_dir / "label.csv", lambda tmp: table[list(LABEL_COLUMNS)].to_csv(tmp, index=False))
        _write_marker(out_dir, params, complete=True)
    logger.info("generated %d clips in %s", len(table), out_dir)
    return out_dir
