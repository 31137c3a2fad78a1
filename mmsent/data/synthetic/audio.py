"""Audio: a voiced-like signal whose pitch, loudness and spectral tilt carry the score."""

from __future__ import annotations

import os
import wave
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Voice:
    """A speaker's voice, the nuisance shared by all clips of one video.

    Attributes:
        pitch_offset_hz (float): Added to the fundamental frequency.
        tilt_offset (float): Added to the spectral tilt exponent.
        gain_offset_db (float): Added to the loudness.
    """

    pitch_offset_hz: float
    tilt_offset: float
    gain_offset_db: float


def sample_voice(rng: np.random.Generator) -> Voice:
    """Returns a speaker's voice drawn from ``rng``."""
    return Voice(pitch_offset_hz=float(rng.normal(0.0, 20.0)),
                 tilt_offset=float(rng.normal(0.0, 0.25)),
                 gain_offset_db=float(rng.normal(0.0, 2.0)))


def _syllable_envelope(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random syllable-rate amplitude envelope with short fades at both ends."""
    rate = rng.uniform(3.0, 5.5)
    envelope = np.clip(0.55 + 0.45 * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)), 0, 1)
    fade = np.clip(np.minimum(t, t[-1] - t) / 0.03, 0.0, 1.0)
    return envelope**1.5 * fade


def synthesize_audio(s_audio: float, duration: float, sample_rate: int, voice: Voice,
                     rng: np.random.Generator) -> np.ndarray:
    """Synthesizes a voiced-like signal whose acoustics carry ``s_audio``.

    Per unit of ``s_audio``, pitch rises 50 Hz (from 140), loudness 5 dB, and the
    spectrum brightens; voice, jitter, contour, syllables and noise are nuisance.

    Args:
        s_audio (float): The audio latent score in ``[-1, 1]``.
        duration (float): The length in seconds.
        sample_rate (int): Samples per second.
        voice (Voice): The speaker's voice.
        rng (np.random.Generator): The random source for the nuisance.

    Returns:
        np.ndarray: float32 samples in ``[-1, 1]``, shape ``(round(duration * sample_rate),)``.
    """
    t = np.arange(round(duration * sample_rate)) / sample_rate
    f0 = 140.0 + 50.0 * s_audio + voice.pitch_offset_hz + rng.normal(0.0, 8.0)
    contour = 1.0 + 0.04 * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * t + rng.uniform(0, 2 * np.pi))
    contour -= rng.uniform(0.0, 0.08) * t / duration
    phase = 2 * np.pi * np.cumsum(f0 * contour) / sample_rate
    tilt = 1.6 - 0.6 * s_audio + voice.tilt_offset
    harmonics = [k for k in range(1, 11) if k * f0 * 1.1 < sample_rate / 2]
    voiced = sum(k**-tilt * np.sin(k * phase) for k in harmonics)
    voiced /= np.sqrt(np.mean(voiced**2)) + 1e-8
    gain_db = -20.0 + 5.0 * s_audio + voice.gain_offset_db + rng.normal(0.0, 3.0)
    signal = 10 ** (gain_db / 20) * voiced * _syllable_envelope(t, rng)
    noise = 10 ** (rng.uniform(-50.0, -38.0) / 20) * rng.standard_normal(t.size)
    return np.clip(signal + noise, -1.0, 1.0).astype(np.float32)


def write_wav(path: str | os.PathLike, samples: np.ndarray, sample_rate: int) -> None:
    """Writes float samples in ``[-1, 1]`` as 16-bit PCM mono WAV.

    Args:
        path (str | os.PathLike): The file to write.
        samples (np.ndarray): float samples, shape ``(N,)``.
        sample_rate (int): Samples per second.
    """
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(os.fspath(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(pcm.tobytes())
