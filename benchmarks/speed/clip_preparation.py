"""Clips per second per core: preparing real-sized clips against PyAV decoding them.

The script encodes clips with PyAV as a camera or a video site would ship them,
H.264 + AAC (44.1 kHz stereo) in MP4, at 1280x720 for 4 s and 1920x1080 for 10 s, 25
fps, showing a real face (scikit-image's astronaut) moving before a shaded wall with
sensor-like noise (a flat picture would decode unrealistically fast). On
each, one process with one thread times:

* ``floor``: PyAV alone decoding every video and every audio frame of the file, one
  decoder thread, nothing converted: what any preparation must at least pay;
* ``prepare``: :meth:`mmsent.data.RawClipSource.load` of the clip (16 frames of 32x32,
  40 log-mel bands at 16 kHz, the defaults), faces off;
* ``faces``: the same with the face front end on (``face: {detector: haar}``).

Cases alternate within each repeat, so load on the shared machine hits them alike.
Figures are clips/s per core (one over the median seconds per clip of a repeat), as
mean ± std over repeats; the figure of merit is ``prepare / floor`` (target >= 0.7)
and the face front end's cost is ``faces - prepare`` seconds per clip. Raw results go
to ``benchmarks/results/clip_preparation.json``.

    python benchmarks/speed/clip_preparation.py --clips 3 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import av
import numpy as np

# Run as a file, a script sees only its own folder; the repository root makes `benchmarks` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import save_measurement
from mmsent.data import RawClipSource
from mmsent.data.clip_files import media_for_file
from mmsent.data.sources import clip_record

SIZES = {"720p": (1280, 720, 4.0), "1080p": (1920, 1080, 10.0)}
FPS = 25
AUDIO_RATE = 44100


class Scene:
    """Frames of a person speaking to the camera: scikit-image's astronaut photograph
    (a real face) drifting a little in front of a shaded wall, with sensor-like noise,
    so decoding and face search cost what they cost on real footage."""

    def __init__(self, width: int, height: int, seed: int) -> None:
        import cv2
        from skimage import data

        side = int(height * 0.8)
        self.person = cv2.resize(data.astronaut(), (side, side), interpolation=cv2.INTER_AREA)
        y, x = np.mgrid[:height, :width]
        wall = 90 + 60 * x / width + 30 * np.sin(y / height * 3 + seed)
        self.wall = np.repeat(wall[..., None], 3, axis=2).astype(np.float32)
        self.rng = np.random.default_rng(seed)
        self.width, self.height = width, height

    def frame(self, index: int) -> np.ndarray:
        side = len(self.person)
        x = int(self.width / 2 - side / 2 + self.width * 0.05 * np.sin(index / 20))
        y = int(self.height - side + self.height * 0.02 * np.sin(index / 7))
        image = self.wall + self.rng.normal(0, 3, self.wall.shape).astype(np.float32)
        image[y:y + side, x:x + side] = self.person[: self.height - y]
        return np.clip(image, 0, 255).astype(np.uint8)


def encode(path: Path, width: int, height: int, seconds: float, seed: int) -> Path:
    """Writes one H.264 + AAC clip with PyAV."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=FPS, options={"preset": "veryfast"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = container.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
        scene = Scene(width, height, seed)
        for index in range(int(seconds * FPS)):
            container.mux(video.encode(av.VideoFrame.from_ndarray(scene.frame(index), format="rgb24")))
        container.mux(video.encode(None))
        t = np.arange(int(seconds * AUDIO_RATE)) / AUDIO_RATE
        wave = (0.2 * np.sin(2 * np.pi * (180 + 40 * seed) * t) * (1 + np.sin(3 * t))).astype(np.float32)
        stereo = np.stack([wave, wave[::-1]]).T.reshape(1, -1).copy()
        fifo = av.AudioFifo()
        source = av.AudioFrame.from_ndarray(stereo, format="flt", layout="stereo")
        source.sample_rate, source.pts, source.time_base = AUDIO_RATE, 0, Fraction(1, AUDIO_RATE)
        resampler = av.AudioResampler(format=audio.codec_context.format.name, layout="stereo", rate=AUDIO_RATE)
        for frame in resampler.resample(source):
            fifo.write(frame)
        for frame in fifo.read_many(audio.codec_context.frame_size, partial=True):
            container.mux(audio.encode(frame))
        container.mux(audio.encode(None))
    return path


def decode_everything(path: Path) -> int:
    """The floor: every video and audio frame decoded with one thread, nothing converted."""
    count = 0
    with av.open(str(path)) as container:
        container.streams.video[0].thread_count = 1
        for _ in container.decode(video=0, audio=0):
            count += 1
    return count


def median_seconds(case, count: int) -> float:
    """The median seconds ``case(i)`` takes over clips ``i < count``."""
    seconds = []
    for index in range(count):
        started = time.perf_counter()
        case(index)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def measure(clips: list[Path], repeats: int) -> dict:
    """Seconds per clip of each case, per repeat (median over the clips)."""
    plain = RawClipSource(".")
    faces = RawClipSource(".", face={"detector": "haar"})
    records = [clip_record(path.stem, "test", "", 0.0, media_for_file(path)) for path in clips]
    cases = {"floor": lambda i: decode_everything(clips[i]),
             "prepare": lambda i: plain.load(records[i]),
             "faces": lambda i: faces.load(records[i])}
    for case in cases.values():  # warm-up: imports, the cascade's load
        case(0)
    seconds = {name: [] for name in cases}
    for _ in range(repeats):
        for name, case in cases.items():
            seconds[name].append(median_seconds(case, len(clips)))
    return seconds


def summary(seconds: dict) -> dict:
    rates = {name: [1 / s for s in values] for name, values in seconds.items()}
    ratio = [p / f for p, f in zip(rates["prepare"], rates["floor"], strict=True)]
    cost = [f - p for f, p in zip(seconds["faces"], seconds["prepare"], strict=True)]
    return {"clips_per_s": {n: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0)
                            for n, v in rates.items()},
            "prepare_over_floor": (statistics.mean(ratio), statistics.stdev(ratio) if len(ratio) > 1 else 0.0),
            "face_seconds_per_clip": (statistics.mean(cost), statistics.stdev(cost) if len(cost) > 1 else 0.0),
            "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=3, help="clips per size")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes over the clips")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            width, height, seconds = SIZES[size]
            clips = [encode(Path(folder) / f"{size}_{seed}.mp4", width, height, seconds, seed)
                     for seed in range(args.clips)]
            result = {"size": size, "width": width, "height": height, "seconds": seconds,
                      "clips": args.clips, "repeats": args.repeats,
                      **summary(measure(clips, args.repeats))}
            results.append(result)
            rates = result["clips_per_s"]
            print(f"{size} ({seconds:g} s): floor {rates['floor'][0]:.3f} ± {rates['floor'][1]:.3f} clips/s, "
                  f"prepare {rates['prepare'][0]:.3f} ± {rates['prepare'][1]:.3f}, "
                  f"prepare/floor {result['prepare_over_floor'][0]:.3f} ± {result['prepare_over_floor'][1]:.3f}, "
                  f"faces {rates['faces'][0]:.3f} ± {rates['faces'][1]:.3f} clips/s "
                  f"(+{result['face_seconds_per_clip'][0] * 1000:.0f} ± "
                  f"{result['face_seconds_per_clip'][1] * 1000:.0f} ms per clip)", flush=True)
    path = save_measurement("clip_preparation", " ".join(["python", *sys.argv]), results)
    print(f"raw results: {path}")


if __name__ == "__main__":
    main()
