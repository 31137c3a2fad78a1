"""Decoding clips with PyAV: frames for the video encoder, log-mel frames for audio."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import av
import numpy as np


class DecodeError(RuntimeError):
    """A media file could not be read; the message names the file and the reason."""


def decode_frames(path: str | Path, num_frames: int, size: int) -> np.ndarray:
    """Decodes a video into ``num_frames`` frames sampled evenly over its length.

    Every frame is scaled while decoding, so a long, large clip never sits in memory
    at full resolution.

    Args:
        path (str | Path): The video file (any container and codec FFmpeg reads).
        num_frames (int): Frames to return.
        size (int): Output height and width.

    Returns:
        np.ndarray: ``uint8`` array, shape ``(num_frames, size, size, 3)``.

    Raises:
        DecodeError: If the file is missing, unreadable, or has no video frame.
    """
    frames = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DecodeError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_count = 1
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(width=size, height=size, format="rgb24", threads=1))
    except (av.FFmpegError, OSError, ValueError) as error:
        raise DecodeError(f"{path}: cannot decode video ({error})") from error
    if not frames:
        raise DecodeError(f"{path}: the video holds no frames")
    indices = np.linspace(0, len(frames) - 1, num_frames).round().astype(int)
    return np.stack([frames[i] for i in indices])


def decode_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Decodes the first audio stream of a file to mono float samples.

    Args:
        path (str | Path): A WAV file, or a video whose container carries audio.
        sample_rate (int): The rate to resample to.

    Returns:
        np.ndarray: ``float32`` samples in [-1, 1], shape ``(N,)``.

    Raises:
        DecodeError: If the file is missing, unreadable or silent-empty.
    """
    chunks = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise DecodeError(f"{path}: no audio stream")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            for frame in container.decode(audio=0):
                chunks += [r.to_ndarray().reshape(-1) for r in resampler.resample(frame)]
            chunks += [r.to_ndarray().reshape(-1) for r in resampler.resample(None)]
    except (av.FFmpegError, OSError, ValueError) as error:
        raise DecodeError(f"{path}: cannot decode audio ({error})") from error
    if not chunks or sum(len(c) for c in chunks) == 0:
        raise DecodeError(f"{path}: the audio holds no samples")
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
    """Log-mel filterbank energies, the usual front end for speech models.

    Long clips are average-pooled in time down to ``max_frames`` so a batch stays
    small whatever the clip length.

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
