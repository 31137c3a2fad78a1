"""Reading clips with PyAV: frames for the video encoder, log-mel frames for audio.

Training preparation and scoring both decode here, so a clip reads the same on both paths.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np

if TYPE_CHECKING:
    from mmsent.data.faces import FaceCropper

class DecodeError(RuntimeError):
    """A media file could not be read; the message names the file and the reason."""


@dataclass
class DecodedVideo:
    """Frames sampled from a clip.

    Attributes:
        frames (np.ndarray): ``uint8 (num_frames, size, size, 3)``.
        face_found (bool | None): Whether a face was found (None with faces off).
        box (tuple[int, int, int, int] | None): The crop ``(x, y, side, side)`` (faces on).
    """

    frames: np.ndarray
    face_found: bool | None = None
    box: tuple[int, int, int, int] | None = None


def _open(path: str | Path):
    if not str(path):
        raise DecodeError("no file given")
    return av.open(str(path))


def _frame_index(container, stream) -> tuple[list[int], list[int]]:
    """Sorted frame and keyframe timestamps from the packets, without decoding.

    Both lists are empty when some packet carries no timestamp.
    """
    times, keys = [], []
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        if packet.pts is None:
            return [], []
        times.append(packet.pts)
        if packet.is_keyframe:
            keys.append(packet.pts)
    return sorted(times), sorted(keys)


def sample_times(times: list[int], count: int) -> list[int]:
    """Returns the timestamp of the frame on display at each of ``count`` instants spread
    evenly from the first to the last of the sorted ``times``.

    A variable frame rate thus samples by time, not by index.
    """
    instants = np.linspace(times[0], times[-1], count)
    return [times[max(bisect_right(times, round(t)) - 1, 0)] for t in instants]


def _rotation(frame, stream) -> int:
    """Counter-clockwise quarter turns that make a frame upright."""
    # PyAV < 14 and older muxers give the clockwise "rotate" tag instead of a display matrix.
    angle = getattr(frame, "rotation", 0)
    if not angle:
        try:
            angle = -int(stream.metadata.get("rotate", 0))
        except ValueError:
            angle = 0
    return round(angle / 90) % 4


def _convert(frame, stream, size: int, face: FaceCropper | None) -> np.ndarray:
    turns = _rotation(frame, stream)
    if face is None:
        image = frame.to_ndarray(width=size, height=size, format="rgb24", threads=1)
    else:
        width, height = face.working_size(frame.width, frame.height, size)
        image = frame.to_ndarray(width=width, height=height, format="rgb24", threads=1)
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


def decode_frames(path: str | Path, num_frames: int, size: int,
                  face: FaceCropper | None = None) -> DecodedVideo:
    """Samples ``num_frames`` frames evenly over a video's real, decoded duration.

    Timestamps come from the packets, so a header claiming more frames than the file
    holds, a variable frame rate, a late first timestamp or a wrong base rate change
    nothing. Groups of pictures holding no sampled frame are skipped; a display rotation
    (phone clips) is undone.

    Args:
        path (str | Path): The video file (any container and codec FFmpeg reads).
        num_frames (int): Frames to return.
        size (int): Output height and width.
        face (FaceCropper | None): Crop to the clip's face; None scales the whole frame.

    Returns:
        DecodedVideo: ``uint8`` frames of shape ``(num_frames, size, size, 3)``.

    Raises:
        DecodeError: If the file is missing, unreadable, or has no video frame.
    """
    frames = read_sampled_frames(path, num_frames, size, face)
    if face is None:
        return DecodedVideo(np.stack(frames))
    crop = face.crop(frames, size)
    return DecodedVideo(crop.frames, crop.found, crop.box)


def read_sampled_frames(path: str | Path, num_frames: int, size: int,
                        face: FaceCropper | None = None) -> list[np.ndarray]:
    """The sampled frames of :func:`decode_frames`, upright, before any face crop.

    Args:
        path (str | Path): The video file.
        num_frames (int): Frames to return.
        size (int): The encoder's frame size.
        face (FaceCropper | None): Frames come at its working size; None: ``size x size``.

    Returns:
        list[np.ndarray]: ``uint8 (H, W, 3)`` frames.

    Raises:
        DecodeError: If the file is missing, unreadable, or has no video frame.
    """
    try:
        with _open(path) as container:
            if not container.streams.video:
                raise DecodeError(f"{path}: no video stream")
            times, keys = _frame_index(container, container.streams.video[0])
        count = 0 if times else _count_frames(path)
        with _open(path) as container:
            stream = container.streams.video[0]
            stream.thread_count = 1
            if times:
                frames = _decode_at(container, stream, sample_times(times, num_frames), keys, size, face)
            elif count:
                indices = np.linspace(0, count - 1, num_frames).round().astype(int).tolist()
                frames = _decode_indices(container, stream, indices, size, face)
            else:
                frames = []
    except (av.FFmpegError, OSError, ValueError) as error:
        raise DecodeError(f"{path}: cannot decode video ({error})") from error
    if not frames:
        raise DecodeError(f"{path}: the video holds no frames")
    return frames


def _decode_at(container, stream, wanted: list[int], keys: list[int], size: int,
               face: FaceCropper | None) -> list[np.ndarray]:
    """Decodes the frames at ``wanted`` timestamps, seeking over groups of pictures without one."""
    pending = sorted(set(wanted))
    pending_set = set(pending)
    got: dict[int, np.ndarray] = {}
    position: int | None = None
    # One iterator, resumed per target: the last frames come from the decoder's final
    # flush, and a new iterator would flush it a second time, which it refuses.
    frames = container.decode(stream)
    index = 0
    while index < len(pending):
        target = pending[index]
        key = keys[max(bisect_right(keys, target) - 1, 0)] if keys else None
        if position is not None and key is not None and key > position:
            container.seek(key, stream=stream, backward=True, any_frame=False)
            frames = container.decode(stream)
        for frame in frames:
            if frame.pts is None:
                continue
            position = frame.pts
            if frame.pts in pending_set and frame.pts not in got:
                got[frame.pts] = _convert(frame, stream, size, face)
            if frame.pts >= target:
                break
        else:
            break
        while index < len(pending) and (pending[index] in got or pending[index] <= position):
            index += 1
    if not got:
        return []
    # A frame whose packet would not decode is replaced by the closest one decoded.
    decoded = sorted(got)
    closest = {t: got[t] if t in got else got[min(decoded, key=lambda d: abs(d - t))] for t in wanted}
    return [closest[t] for t in wanted]


def _count_frames(path: str | Path) -> int:
    """Frames that decode, for a file whose packets carry no timestamps."""
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        return sum(1 for _ in container.decode(stream))


def _decode_indices(container, stream, indices: list[int], size: int,
                    face: FaceCropper | None) -> list[np.ndarray]:
    """Decodes every frame, converting only those at ``indices`` (in decoding order)."""
    wanted = set(indices)
    got = {}
    for position, frame in enumerate(container.decode(stream)):
        if position in wanted:
            got[position] = _convert(frame, stream, size, face)
    return [got[i] for i in indices if i in got]


def decode_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Decodes the first audio stream of a file to mono float samples.

    Audio starting later than the container's video is preceded by silence (one clock).

    Args:
        path (str | Path): An audio file, or a video whose container carries audio.
        sample_rate (int): The rate to resample to, in Hz.

    Returns:
        np.ndarray: ``float32`` samples in [-1, 1], shape ``(N,)``.

    Raises:
        DecodeError: If the file is missing, unreadable or silent-empty.
    """
    chunks = []
    start_audio = start_video = None
    try:
        with _open(path) as container:
            if not container.streams.audio:
                raise DecodeError(f"{path}: no audio stream")
            audio = container.streams.audio[0]
            video = container.streams.video[0] if container.streams.video else None
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            for packet in container.demux(*[s for s in (audio, video) if s is not None]):
                if packet.stream is video:
                    if packet.pts is not None and packet.size:
                        time = float(packet.pts * packet.time_base)
                        start_video = time if start_video is None else min(start_video, time)
                    continue
                for frame in packet.decode():
                    if start_audio is None and frame.pts is not None:
                        start_audio = float(frame.pts * frame.time_base)
                    chunks += [r.to_ndarray().reshape(-1) for r in resampler.resample(frame)]
            chunks += [r.to_ndarray().reshape(-1) for r in resampler.resample(None)]
    except (av.FFmpegError, OSError, ValueError) as error:
        raise DecodeError(f"{path}: cannot decode audio ({error})") from error
    if not chunks or sum(len(c) for c in chunks) == 0:
        raise DecodeError(f"{path}: the audio holds no samples")
    if start_audio is not None and start_video is not None and start_audio > start_video:
        chunks.insert(0, np.zeros(round((start_audio - start_video) * sample_rate), np.float32))
    return np.concatenate(chunks).astype(np.float32)


@lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangular filters evenly spaced on the mel scale (HTK formula).

    Args:
        sample_rate (int): Sampling rate in Hz.
        n_fft (int): FFT size.
        n_mels (int): Number of filters.

    Returns:
        np.ndarray: Shape ``(n_mels, n_fft // 2 + 1)``.
    """
    def to_mel(hz):
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    def to_hz(mel):
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)

    edges = to_hz(np.linspace(to_mel(0.0), to_mel(sample_rate / 2), n_mels + 2))
    bins = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / np.maximum(center - lower, 1e-9)
    falling = (upper - bins) / np.maximum(upper - center, 1e-9)
    return np.clip(np.minimum(rising, falling), 0.0, None).astype(np.float32)


def log_mel_frames(samples: np.ndarray, sample_rate: int, n_mels: int = 40,
                   window_ms: float = 25.0, hop_ms: float = 10.0,
                   max_frames: int = 256) -> np.ndarray:
    """Log-mel filterbank energies, average-pooled in time down to ``max_frames``.

    Args:
        samples (np.ndarray): Mono samples, shape ``(N,)``.
        sample_rate (int): Sampling rate in Hz.
        n_mels (int): Mel bands.
        window_ms (float): Analysis window length.
        hop_ms (float): Hop between windows.
        max_frames (int): Upper bound on the returned frames.

    Returns:
        np.ndarray: ``float32``, shape ``(T, n_mels)``, ``1 <= T <= max_frames``.
    """
    window = int(sample_rate * window_ms / 1000)
    hop = int(sample_rate * hop_ms / 1000)
    n_fft = 1 << (window - 1).bit_length()
    if len(samples) < window:
        samples = np.pad(samples, (0, window - len(samples)))
    count = 1 + (len(samples) - window) // hop
    index = np.arange(window)[None, :] + hop * np.arange(count)[:, None]
    spectrum = np.abs(np.fft.rfft(samples[index] * np.hanning(window), n=n_fft)) ** 2
    features = np.log(spectrum @ mel_filterbank(sample_rate, n_fft, n_mels).T + 1e-6)
    if count > max_frames:
        groups = np.array_split(features, max_frames)
        features = np.stack([g.mean(0) for g in groups])
    return features.astype(np.float32)
