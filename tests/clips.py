"""A folder of awkward recorded-looking clips, written with PyAV, for the raw-clip tests.

:func:`build_awkward_clips` writes clips in many containers and codecs with the faults
real recordings have (no audio stream, a separate audio file, 48 kHz stereo, a header
that claims more frames than the file holds, a variable frame rate, late-starting video
timestamps, rotation metadata, a subtitle file instead of a transcript, an empty
transcript), plus ``label.csv``. :data:`AWKWARD_CLIPS` says what each clip is and
:data:`AWKWARD_MISSING` how many clips lack each modality once prepared.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd

WIDTH, HEIGHT = 64, 48
FPS = 10
SECONDS = 1.2
VIDEO_ID = "rec"

# clip id -> (split, file name under Raw/rec/, video codec, audio codec or None, transcript, fault)
AWKWARD_CLIPS: dict[str, tuple[str, str, str, str | None, str, str]] = {
    "c01": ("train", "c01.mp4", "libx264", "aac", "the film was wonderful", "plain H.264 + AAC"),
    "c02": ("train", "c02.mkv", "mpeg4", "aac", "a dull and tired plot", "48 kHz stereo audio"),
    "c03": ("train", "c03.webm", "libvpx", "libopus", "great acting and a fine score", "VP8 + Opus"),
    "c04": ("train", "c04.flv", "flv", "libmp3lame", "i did not enjoy it at all", "Sorenson H.263 + MP3"),
    "c05": ("train", "c05.mpg", "mpeg1video", "mp2", "quite good in the end", "MPEG-1 + MP2 in MPEG-PS"),
    "c06": ("train", "c06.avi", "mjpeg", None, "boring from start to end", "no audio stream"),
    "c07": ("train", "c07.mov", "libx264", None, "what a lovely surprise", "separate .flac beside it"),
    "c08": ("train", "c08.avi", "mpeg4", "mp2", "the worst film this year", "header claims more frames"),
    "c09": ("valid", "c09.mkv", "libx264", "aac", "pretty good overall", "variable frame rate"),
    "c10": ("valid", "c10.mp4", "libx264", "aac", "not bad but too long", "rotated 90 degrees"),
    "c11": ("valid", "c11.ts", "mpeg2video", "mp2", "", ".srt beside it, no transcript"),
    "c12": ("test", "c12.m4v", "libx264", "aac", "", "empty transcript, no subtitle"),
    "c13": ("test", "c13.mkv", "libx264", "aac", "an awful waste of time", "video starts 300 ms late"),
    "c14": ("test", "named/take_3.webm", "libvpx-vp9", "libopus", "i loved every minute",
            "named by the media column"),
}
AWKWARD_SUBTITLE = ("1\n00:00:00,000 --> 00:00:00,600\nsubtitles say\n<i>it was fine</i>\n\n"
                    "2\n00:00:00,600 --> 00:00:01,200\nreally fine\n")
AWKWARD_SUBTITLE_TEXT = "subtitles say it was fine really fine"
# Clips whose modality is absent once prepared: c06 has no audio at all, c12 no transcript
# (c11's comes from its subtitle file).
AWKWARD_MISSING = {"text": 1, "audio": 1, "video": 0}
CLAIMED_FRAMES = 40
ROTATION = 90


def awkward_pixels(index: int, count: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """A frame whose top-left quarter is bright red and whose brightness rises with time.

    Args:
        index (int): The frame's position.
        count (int): Frames in the clip.
        width (int): Frame width.
        height (int): Frame height.

    Returns:
        np.ndarray: ``uint8 (height, width, 3)``.
    """
    level = int(40 + 160 * index / max(count - 1, 1))
    pixels = np.full((height, width, 3), level, dtype=np.uint8)
    pixels[: height // 2, : width // 2] = (255, 0, 0)
    return pixels


def _tone(rate: int, channels: int, seconds: float, pitch: float = 220.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    wave = (0.3 * np.sin(2 * np.pi * pitch * t)).astype(np.float32)
    return np.repeat(wave[None, :], channels, axis=0)


def _audio_stream(container, codec: str, rate: int, channels: int):
    layout = "stereo" if channels == 2 else "mono"
    stream = container.add_stream(codec, rate=rate, layout=layout)
    return stream


def _mux_audio(container, stream, rate: int, channels: int, seconds: float, delay: float = 0.0) -> None:
    samples = _tone(rate, channels, seconds)
    fmt = stream.codec_context.format.name
    layout = "stereo" if channels == 2 else "mono"
    resampler = av.AudioResampler(format=fmt, layout=layout, rate=rate)
    source = av.AudioFrame.from_ndarray(samples.reshape(1, -1) if channels == 1 else
                                        samples.T.reshape(1, -1).copy(), format="flt", layout=layout)
    source.sample_rate = rate
    source.pts = 0
    frame_size = stream.codec_context.frame_size or 1024
    fifo = av.AudioFifo()
    for frame in resampler.resample(source):
        fifo.write(frame)
    start = round(delay * rate)
    for frame in fifo.read_many(frame_size, partial=True):
        frame.pts, frame.time_base = start, Fraction(1, rate)
        start += frame.samples
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def write_clip(path: Path, video_codec: str, audio_codec: str | None, *, frames: int | None = None,
               fps: int = FPS, audio_rate: int = 16000, audio_channels: int = 1,
               frame_times: list[float] | None = None, rotation: int = 0,
               pixels=awkward_pixels, size: tuple[int, int] = (WIDTH, HEIGHT),
               audio_delay: float = 0.0, seconds: float = SECONDS, gop: int | None = None) -> Path:
    """Encodes one clip with PyAV.

    Args:
        path (Path): The file; its suffix picks the container.
        video_codec (str): The video encoder.
        audio_codec (str | None): The audio encoder, or None for no audio stream.
        frames (int | None): Frames to write; by default ``SECONDS * fps``.
        fps (int): The nominal frame rate.
        audio_rate (int): Audio sample rate.
        audio_channels (int): 1 or 2.
        frame_times (list[float] | None): Each frame's time in seconds (a variable
            rate, a late start); by default ``i / fps``.
        rotation (int): Display rotation in degrees written to the stream.
        pixels: ``pixels(index, count)`` -> ``uint8 (H, W, 3)``.
        size (tuple[int, int]): Width and height.
        audio_delay (float): Seconds of the audio's first timestamp after the video's.
        seconds (float): Length of the audio.
        gop (int | None): Frames between keyframes; the encoder's default when None.

    Returns:
        Path: The file written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    count = frames or round(SECONDS * fps)
    width, height = size
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(video_codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p" if video_codec == "mjpeg" else "yuv420p"
        stream.thread_count = 1
        if gop:
            stream.codec_context.gop_size = gop
        if frame_times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
            stream.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        audio = _audio_stream(container, audio_codec, audio_rate, audio_channels) if audio_codec else None
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(pixels(index, count), format="rgb24")
            if frame_times is not None:
                frame.pts = round(frame_times[index] * 1000)
                frame.time_base = Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if audio is not None:
            _mux_audio(container, audio, audio_rate, audio_channels, seconds, audio_delay)
    return path


def write_flac(path: Path, rate: int = 22050, channels: int = 2, seconds: float = SECONDS) -> Path:
    """Writes a tone as a FLAC file (a separate audio track beside a clip)."""
    with av.open(str(path), mode="w") as container:
        stream = _audio_stream(container, "flac", rate, channels)
        _mux_audio(container, stream, rate, channels, seconds)
    return path


def claim_more_frames(path: Path, frames: int) -> None:
    """Rewrites an AVI header's frame counts (``avih`` total and ``strh`` length) to lie."""
    data = bytearray(path.read_bytes())
    main = data.index(b"avih")
    data[main + 8 + 16: main + 8 + 20] = frames.to_bytes(4, "little")
    stream = data.index(b"strh")
    data[stream + 8 + 32: stream + 8 + 36] = frames.to_bytes(4, "little")
    path.write_bytes(bytes(data))


def build_awkward_clips(root: Path) -> Path:
    """Writes :data:`AWKWARD_CLIPS` and ``label.csv`` (with a ``media`` column) into ``root``.

    Args:
        root (Path): The dataset folder to write.

    Returns:
        Path: ``root``.
    """
    folder = root / "Raw" / VIDEO_ID
    rows = []
    count = round(SECONDS * FPS)
    for index, (clip, (split, name, video, audio, text, _)) in enumerate(AWKWARD_CLIPS.items()):
        path = folder / name
        options: dict = {}
        if clip == "c02":
            options = {"audio_rate": 48000, "audio_channels": 2}
        elif audio in ("libopus",):
            options = {"audio_rate": 48000}
        elif audio in ("mp2", "libmp3lame"):
            options = {"audio_rate": 44100}
        if clip == "c09":
            gaps = [0.05, 0.15, 0.05, 0.2, 0.05, 0.1, 0.05, 0.25, 0.05, 0.1, 0.1]
            options["frame_times"] = list(np.concatenate([[0.0], np.cumsum(gaps)]))
        if clip == "c13":
            options["frame_times"] = [0.3 + i / FPS for i in range(count)]
        if clip == "c10":
            options["rotation"] = ROTATION
        if clip == "c05":
            options["fps"] = 25
        write_clip(path, video, audio, **options)
        if clip == "c07":
            write_flac(path.with_suffix(".flac"))
        if clip == "c08":
            claim_more_frames(path, CLAIMED_FRAMES)
        if clip == "c11":
            path.with_suffix(".srt").write_text(AWKWARD_SUBTITLE, encoding="utf-8")
        media = f"Raw/{VIDEO_ID}/{name}" if "/" in name else ""
        label = round(float(np.sin(index + 1) * 2.5), 3)
        rows.append({"video_id": VIDEO_ID, "clip_id": clip, "text": text, "label": label,
                     "annotation": "Positive" if label >= 0 else "Negative", "mode": split, "media": media})
    pd.DataFrame(rows).to_csv(root / "label.csv", index=False)
    return root
