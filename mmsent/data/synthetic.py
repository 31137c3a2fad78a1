"""A generated raw dataset laid out like MMSA's raw CMU-MOSI, CMU-MOSEI and CH-SIMS.

The generator writes real files, so the code path it exercises is the one a user with
real clips takes::

    <out_dir>/label.csv                     one row per clip
    <out_dir>/Raw/<video_id>/<clip_id>.mp4  H.264 (libx264, yuv420p) cartoon face
    <out_dir>/Raw/<video_id>/<clip_id>.wav  16-bit PCM mono voice-like signal
    <out_dir>/generated.json                the generation parameters and a completion marker

Every clip has three independent latent scores in ``[-1, 1]``, one per modality, and
its noise-free sentiment is a weighted sum of them (:data:`MODALITY_WEIGHTS`). Each
modality alone therefore predicts the score only in part, and all three together
predict it strictly better. The cues are built so that a model must use structure, not
just statistics:

* text: the score of a review sentence is compositional (intensifiers scale,
  negation flips and attenuates, the clause after "but" dominates), so word order
  matters;
* audio: pitch, loudness and spectral tilt carry the score, under speaker and
  recording nuisance;
* video: the mouth curvature moves linearly over the clip and the score is the
  direction of that movement: the multiset of frames says nothing about its sign and
  any single frame little, so only a model that sees time order can recover it.

Run ``python -m mmsent.data.synthetic --out DIR --num-clips N --seed S`` to generate
from the command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import wave
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mmsent.data.schema import LABEL_RANGE, SPLITS

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
"""int: Bumped whenever the generated content changes for the same parameters."""

LABEL_COLUMNS: tuple[str, ...] = (
    "video_id", "clip_id", "text", "label", "annotation", "mode",
    "clean_label", "text_score", "audio_score", "visual_score",
)
MODALITY_WEIGHTS: dict[str, float] = {"text": 1.5, "audio": 1.05, "visual": 1.25}

# Independent random streams, so adding a draw to one part never shifts another.
_PLAN_STREAM, _CLIP_STREAM, _MEDIA_STREAM, _VIDEO_STREAM = 0, 1, 2, 3

# ---------------------------------------------------------------------------
# Text: a small review grammar with a compositional score.
# ---------------------------------------------------------------------------

ADJECTIVES: dict[str, float] = {
    "excellent": 0.8, "amazing": 0.8, "brilliant": 0.75, "fantastic": 0.75,
    "wonderful": 0.7, "great": 0.65, "beautiful": 0.6, "enjoyable": 0.5, "good": 0.45,
    "interesting": 0.4, "charming": 0.4, "nice": 0.35, "solid": 0.3, "decent": 0.2,
    "fine": 0.15, "okay": 0.08,
    "awful": -0.8, "terrible": -0.8, "horrible": -0.75, "dreadful": -0.7,
    "painful": -0.65, "bad": -0.5, "annoying": -0.5, "boring": -0.45, "dull": -0.4,
    "weak": -0.35, "confusing": -0.3, "bland": -0.25, "predictable": -0.22,
    "mediocre": -0.2, "forgettable": -0.18, "slow": -0.15,
}
"""dict[str, float]: Polar adjectives and their polarity."""

# Past tense for plain clauses, base form after a negated auxiliary ("didn't like").
_SENTIMENT_VERBS: dict[str, tuple[str, float]] = {
    "loved": ("love", 0.75), "enjoyed": ("enjoy", 0.5), "liked": ("like", 0.4),
    "hated": ("hate", -0.75), "disliked": ("dislike", -0.4),
}
VERBS: dict[str, float] = {
    form: value for past, (base, value) in _SENTIMENT_VERBS.items() for form in (past, base)
}
"""dict[str, float]: Polar verbs (both forms) and their polarity."""

POLAR_WORDS: dict[str, float] = {**ADJECTIVES, **VERBS}
"""dict[str, float]: Every word that carries sentiment on its own."""

INTENSIFIERS: dict[str, float] = {
    "extremely": 1.5, "incredibly": 1.5, "absolutely": 1.5,
    "really": 1.3, "very": 1.3, "truly": 1.3,
    "quite": 1.15, "pretty": 1.1, "rather": 0.85, "fairly": 0.8, "somewhat": 0.6,
    "slightly": 0.5, "mildly": 0.5,
}
"""dict[str, float]: Words that scale the next polar word."""

_AMPLIFIERS = tuple(word for word, scale in INTENSIFIERS.items() if scale > 1.0)
_VERB_INTENSIFIERS = ("absolutely", "really", "truly", "quite")

NEGATORS: frozenset[str] = frozenset(
    {"not", "never", "wasn't", "isn't", "weren't", "aren't", "didn't"}
)
"""frozenset[str]: Words that flip and attenuate the next polar word."""

NEGATION_FACTOR = -0.5
"""float: "not good" is mildly negative and "not awful" mildly positive."""

CONTRAST_WEIGHTS: tuple[float, float] = (0.25, 0.75)
"""tuple[float, float]: Weights of the conceded clause and the dominant clause."""

CONJUNCTION_WEIGHTS: tuple[float, float] = (0.5, 0.5)

_SINGULAR_SUBJECTS = (
    "the movie", "the film", "the story", "the plot", "the acting", "the script",
    "the dialogue", "the ending", "the soundtrack", "the music", "the direction",
    "the cinematography", "her performance", "his performance", "the main character",
    "the lead actor", "the villain", "the pacing", "the humor", "the editing",
)
_PLURAL_SUBJECTS = (
    "the characters", "the jokes", "the visuals", "the action scenes",
    "the special effects", "the songs",
)
_COPULAS = {
    False: {"plain": ("was", "is", "seemed", "felt"),
            "negated": ("was not", "wasn't", "was never", "is not", "isn't",
                        "didn't seem", "never seemed", "did not feel")},
    True: {"plain": ("were", "are", "seemed", "felt"),
           "negated": ("were not", "weren't", "were never", "are not", "aren't",
                       "didn't seem", "never seemed", "did not feel")},
}
_SPEAKERS = ("i", "we")
_PREFIXES = (
    "honestly", "overall", "well", "um", "i think", "i guess", "i mean", "to be honest",
    "in my opinion", "basically", "actually", "you know",
)
_SUFFIXES = ("overall", "to be honest", "i guess", "you know", "for me", "in the end")
# Single clause, "X but Y", "although X, Y", "X and Y".
_STRUCTURES = ("single", "but", "although", "and")
_STRUCTURE_PROBS = (0.4, 0.25, 0.15, 0.2)
_SENTENCE_CANDIDATES = 16

_TOKEN_PATTERN = re.compile(r"[a-z']+|,")


def tokenize(text: str) -> list[str]:
    """Splits a sentence into lower-case words and commas.

    Args:
        text (str): A sentence.

    Returns:
        list[str]: The tokens, commas kept as their own token.
    """
    return _TOKEN_PATTERN.findall(text.lower())


def _score_clause(tokens: Sequence[str]) -> float:
    """Scores one clause: each polar word, scaled by the intensifiers and negation before it."""
    score, scale, negated = 0.0, 1.0, False
    for token in tokens:
        if token in NEGATORS:
            negated = not negated
        elif token in INTENSIFIERS:
            scale *= INTENSIFIERS[token]
        elif token in POLAR_WORDS:
            value = POLAR_WORDS[token] * scale
            score += NEGATION_FACTOR * value if negated else value
            scale, negated = 1.0, False
    return min(1.0, max(-1.0, score))


def _split_at(tokens: list[str], word: str) -> tuple[list[str], list[str]] | None:
    """Splits at the first ``word``, or returns None when it is absent."""
    if word not in tokens:
        return None
    index = tokens.index(word)
    return tokens[:index], tokens[index + 1:]


def score_sentence(tokens: Sequence[str] | str) -> float:
    """Computes the compositional sentiment of a review sentence.

    "although X, Y" and "X but Y" weight the conceded clause X and the dominant
    clause Y by :data:`CONTRAST_WEIGHTS`; "X and Y" averages the clauses; a clause
    sums its polar words, each scaled by the intensifiers before it and multiplied
    by :data:`NEGATION_FACTOR` when a negator precedes it, and is clipped to
    ``[-1, 1]``. "good but boring" and "boring but good" hold the same words and
    score differently.

    Args:
        tokens (Sequence[str] | str): The tokens from :func:`tokenize`, or the sentence.

    Returns:
        float: The score in ``[-1, 1]``.
    """
    tokens = tokenize(tokens) if isinstance(tokens, str) else list(tokens)
    first, second = CONTRAST_WEIGHTS
    if "although" in tokens:
        start = tokens.index("although")
        end = tokens.index(",", start) if "," in tokens[start:] else len(tokens)
        conceded, dominant = tokens[start + 1:end], tokens[:start] + tokens[end + 1:]
        return first * score_sentence(conceded) + second * score_sentence(dominant)
    if parts := _split_at(tokens, "but"):
        return first * score_sentence(parts[0]) + second * score_sentence(parts[1])
    if parts := _split_at(tokens, "and"):
        left, right = CONJUNCTION_WEIGHTS
        return left * score_sentence(parts[0]) + right * score_sentence(parts[1])
    return _score_clause(tokens)


def _pick(rng: np.random.Generator, options: Sequence) -> object:
    """Draws one element uniformly."""
    return options[rng.integers(len(options))]


def _polar_word(rng: np.random.Generator, sign: int) -> str:
    """Draws an adjective whose polarity has the given sign (0: either)."""
    words = [word for word, value in ADJECTIVES.items() if sign == 0 or value * sign > 0]
    return _pick(rng, words)


def _clause(rng: np.random.Generator, sign: int = 0) -> str:
    """Draws one clause, either "<subject> <copula> [intensifier] <adjective>" or
    "<speaker> [intensifier] <verb> <subject>"; ``sign`` constrains the clause score's sign."""
    negated = rng.random() < 0.25
    verbal = rng.random() < 0.25
    # "not very good" and "really liked" are natural, "not slightly good" and "fairly liked" not.
    if verbal:
        choices = ("really",) if negated else _VERB_INTENSIFIERS
    else:
        choices = _AMPLIFIERS if negated else tuple(INTENSIFIERS)
    intensifier = f"{_pick(rng, choices)} " if rng.random() < 0.5 else ""
    if verbal:
        verbs = [past for past, (_, value) in _SENTIMENT_VERBS.items()
                 if sign == 0 or value * sign * (-1 if negated else 1) > 0]
        past = _pick(rng, verbs)
        base = _SENTIMENT_VERBS[past][0]
        verb = f"didn't {intensifier}{base}" if negated else f"{intensifier}{past}"
        subject = _pick(rng, _SINGULAR_SUBJECTS + _PLURAL_SUBJECTS)
        return f"{_pick(rng, _SPEAKERS)} {verb} {subject}"
    plural = rng.random() < 0.25
    subject = _pick(rng, _PLURAL_SUBJECTS if plural else _SINGULAR_SUBJECTS)
    copula = _pick(rng, _COPULAS[plural]["negated" if negated else "plain"])
    adjective = _polar_word(rng, -sign if negated else sign)
    return f"{subject} {copula} {intensifier}{adjective}"


def _with_filler(rng: np.random.Generator, sentence: str) -> str:
    """Adds neutral filler words before or after a sentence, or neither."""
    draw = rng.random()
    if draw < 0.25:
        return f"{_pick(rng, _PREFIXES)} {sentence}"
    if draw < 0.4:
        return f"{sentence} {_pick(rng, _SUFFIXES)}"
    return sentence


def _sentence_candidate(rng: np.random.Generator, structure: str) -> str:
    """Draws one sentence of the given structure."""
    if structure == "single":
        return _with_filler(rng, _clause(rng))
    sign = 1 if rng.random() < 0.5 else -1
    if structure == "and":
        return _with_filler(rng, f"{_clause(rng, sign)} and {_clause(rng, sign)}")
    conceded, dominant = _clause(rng, -sign), _clause(rng, sign)
    if structure == "but":
        return _with_filler(rng, f"{conceded} but {dominant}")
    return f"although {conceded}, {dominant}"


def make_sentence(target: float, rng: np.random.Generator) -> tuple[str, float]:
    """Writes a review sentence whose compositional score is close to a target.

    A sentence structure is drawn first, then several sentences of that structure,
    and the one scoring closest to ``target`` is kept. The returned score is exactly
    :func:`score_sentence` of the returned text.

    Args:
        target (float): The wanted score in ``[-1, 1]``.
        rng (np.random.Generator): The random source.

    Returns:
        tuple[str, float]: The sentence and its score.
    """
    structure = _STRUCTURES[rng.choice(len(_STRUCTURES), p=_STRUCTURE_PROBS)]
    candidates = [_sentence_candidate(rng, structure) for _ in range(_SENTENCE_CANDIDATES)]
    scores = [score_sentence(text) for text in candidates]
    best = int(np.argmin([abs(score - target) for score in scores]))
    return candidates[best], scores[best]


# ---------------------------------------------------------------------------
# Audio: a voiced-like signal whose pitch, loudness and tilt carry the score.
# ---------------------------------------------------------------------------


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
    """Draws a speaker's voice.

    Args:
        rng (np.random.Generator): The random source.

    Returns:
        Voice: The voice.
    """
    return Voice(
        pitch_offset_hz=float(rng.normal(0.0, 20.0)),
        tilt_offset=float(rng.normal(0.0, 0.25)),
        gain_offset_db=float(rng.normal(0.0, 2.0)),
    )


def _syllable_envelope(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random syllable-rate amplitude envelope with short fades at both ends."""
    rate = rng.uniform(3.0, 5.5)
    envelope = np.clip(0.55 + 0.45 * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)), 0, 1)
    fade = np.clip(np.minimum(t, t[-1] - t) / 0.03, 0.0, 1.0)
    return envelope**1.5 * fade


def synthesize_audio(
    s_audio: float, duration: float, sample_rate: int, voice: Voice, rng: np.random.Generator
) -> np.ndarray:
    """Synthesizes a voiced-like signal whose acoustics carry ``s_audio``.

    The fundamental frequency is ``140 + 50 * s_audio`` Hz, loudness rises by 5 dB
    and the spectrum brightens (smaller harmonic roll-off) per unit of ``s_audio``.
    The speaker's voice, a per-clip pitch and loudness jitter, a slow pitch contour,
    a random syllable envelope and background noise are nuisance.

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


# ---------------------------------------------------------------------------
# Video: a cartoon face whose mouth curvature moves over the clip.
# ---------------------------------------------------------------------------

VISUAL_SWING = 1.4
"""float: The change in mouth curvature over a clip per unit of ``s_visual``."""

MOUTH_MIDPOINT_SPREAD = 2.0
"""float: Mid-clip curvatures are uniform in ``[-spread, spread]``; a spread well above
``VISUAL_SWING / 2`` keeps any single frame nearly uninformative about ``s_visual``."""


@dataclass(frozen=True)
class FaceStyle:
    """Everything about a drawn face except its mouth curvature, in pixels and 0-255 RGB.

    Attributes:
        center (tuple[float, float]): Face centre ``(x, y)``.
        radii (tuple[float, float]): Face half-width and half-height.
        skin (tuple[float, float, float]): Face colour.
        background (tuple[float, float, float]): Background colour.
        features (tuple[float, float, float]): Eye and mouth colour.
    """

    center: tuple[float, float]
    radii: tuple[float, float]
    skin: tuple[float, float, float]
    background: tuple[float, float, float]
    features: tuple[float, float, float]


@dataclass(frozen=True)
class Appearance:
    """A speaker's look, shared by all clips of one video (before per-clip jitter).

    Attributes:
        radius (float): Face half-width as a fraction of the frame size.
        aspect (float): Face height over width.
        skin (tuple[float, float, float]): Face colour.
        background (tuple[float, float, float]): Background colour.
        features (tuple[float, float, float]): Eye and mouth colour.
    """

    radius: float
    aspect: float
    skin: tuple[float, float, float]
    background: tuple[float, float, float]
    features: tuple[float, float, float]


def _colour(rng: np.random.Generator, low: float, high: float) -> tuple[float, float, float]:
    """Draws an RGB colour with channels in ``[low, high]``."""
    return tuple(float(value) for value in rng.uniform(low, high, size=3))


def sample_appearance(rng: np.random.Generator) -> Appearance:
    """Draws a speaker's look.

    Args:
        rng (np.random.Generator): The random source.

    Returns:
        Appearance: The look.
    """
    return Appearance(
        radius=float(rng.uniform(0.28, 0.34)),
        aspect=float(rng.uniform(1.0, 1.15)),
        # A light face with dark features keeps the mouth visible on any background.
        skin=_colour(rng, 150, 250),
        background=_colour(rng, 0, 255),
        features=_colour(rng, 0, 70),
    )


def sample_face_style(
    appearance: Appearance, frame_size: int, rng: np.random.Generator
) -> FaceStyle:
    """Places a speaker's face in one clip, with position, size and colour jitter.

    Args:
        appearance (Appearance): The speaker's look.
        frame_size (int): Frame width and height in pixels.
        rng (np.random.Generator): The random source.

    Returns:
        FaceStyle: The face for this clip.
    """
    half_width = appearance.radius * frame_size * rng.uniform(0.95, 1.05)
    center = frame_size / 2 + rng.uniform(-0.08, 0.08, size=2) * frame_size
    jitter = rng.normal(0.0, 8.0, size=3)
    return FaceStyle(
        center=(float(center[0]), float(center[1])),
        radii=(float(half_width), float(half_width * appearance.aspect)),
        skin=tuple(float(v) for v in np.clip(np.add(appearance.skin, jitter), 0, 255)),
        background=tuple(float(v) for v in np.clip(np.add(appearance.background, jitter), 0, 255)),
        features=appearance.features,
    )


def mouth_curvatures(midpoint: float, s_visual: float, frames: int) -> np.ndarray:
    """The mouth curvature in each frame: a line from ``A`` to ``B`` around ``midpoint``.

    ``B - A = VISUAL_SWING * s_visual``. The time steps are exactly antisymmetric, so
    the curvatures for ``-s_visual`` are exactly those for ``s_visual`` reversed.

    Args:
        midpoint (float): The curvature half-way through the clip.
        s_visual (float): The visual latent score in ``[-1, 1]``.
        frames (int): The number of frames (at least 2).

    Returns:
        np.ndarray: float64 curvatures, shape ``(frames,)``; positive is a smile.
    """
    steps = np.arange(frames, dtype=np.float64) * 2 - (frames - 1)
    return midpoint + VISUAL_SWING * s_visual * (steps / (2 * (frames - 1)))


def _coverage(distance: np.ndarray, half_thickness: float) -> np.ndarray:
    """Anti-aliased ink coverage for a stroke ``half_thickness`` wide around distance 0."""
    return np.clip(half_thickness + 0.5 - distance, 0.0, 1.0)


def _face_layers(style: FaceStyle, frame_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Coverage maps of the face disc and the eyes, shape ``(H, W)``."""
    y, x = np.mgrid[0:frame_size, 0:frame_size].astype(np.float64) + 0.5
    (cx, cy), (rx, ry) = style.center, style.radii
    ellipse = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    face = np.clip((1.0 - ellipse) * min(rx, ry) + 0.5, 0.0, 1.0)
    eye_radius = max(1.2, 0.13 * rx)
    eyes = np.zeros_like(face)
    for side in (-1, 1):
        distance = np.hypot(x - (cx + side * 0.38 * rx), y - (cy - 0.25 * ry))
        eyes = np.maximum(eyes, np.clip(eye_radius + 0.5 - distance, 0.0, 1.0))
    return face, eyes


def _mouth_layer(curvatures: np.ndarray, style: FaceStyle, frame_size: int) -> np.ndarray:
    """Coverage maps of the mouth, a parabola per frame, shape ``(T, H, W)``.

    The mouth is ``y = y_m + c * bend * (0.5 - u^2)`` for ``u`` in ``[-1, 1]`` across its
    width: a positive curvature ``c`` lifts the corners (a smile), and the curve stays
    centred on ``y_m`` so its height says nothing about the curvature.
    """
    y, x = np.mgrid[0:frame_size, 0:frame_size].astype(np.float64) + 0.5
    (cx, cy), (rx, ry) = style.center, style.radii
    xm, ym, half_width, bend = cx, cy + 0.42 * ry, 0.5 * rx, 0.16 * rx
    c = np.asarray(curvatures, dtype=np.float64)[:, None, None]
    u = (x - xm) / half_width
    inside = np.abs(u) <= 1.0
    curve = ym + c * bend * (0.5 - u**2)
    slope = -2.0 * c * bend * u / half_width
    along = np.abs(y - curve) / np.sqrt(1.0 + slope**2)
    end_x = xm + np.sign(u) * half_width
    to_end = np.hypot(x - end_x, y - (ym - 0.5 * c * bend))
    distance = np.where(inside, along, to_end)
    return _coverage(distance, max(1.0, 0.09 * rx))


def render_face_frames(curvatures: np.ndarray, style: FaceStyle, frame_size: int) -> np.ndarray:
    """Draws a cartoon face per frame, with the given mouth curvature, without noise.

    Args:
        curvatures (np.ndarray): One mouth curvature per frame, shape ``(T,)``.
        style (FaceStyle): Everything else about the face.
        frame_size (int): Frame width and height in pixels.

    Returns:
        np.ndarray: float64 RGB frames in ``[0, 255]``, shape ``(T, H, W, 3)``.
    """
    face, eyes = _face_layers(style, frame_size)
    mouth = _mouth_layer(curvatures, style, frame_size) * face
    colours = (style.background, style.skin, style.features)
    background, skin, features = (np.asarray(colour) for colour in colours)
    still = background + face[..., None] * (skin - background)
    still = still + (eyes * face)[..., None] * (features - still)
    return still[None] + mouth[..., None] * (features - still[None])


def add_frame_noise(frames: np.ndarray, rng: np.random.Generator, std: float = 3.0) -> np.ndarray:
    """Adds per-pixel Gaussian noise and quantizes to uint8.

    Args:
        frames (np.ndarray): float RGB frames in ``[0, 255]``, shape ``(T, H, W, 3)``.
        rng (np.random.Generator): The random source.
        std (float): The noise standard deviation in intensity levels.

    Returns:
        np.ndarray: uint8 frames, same shape.
    """
    noisy = frames + std * rng.standard_normal(size=frames.shape, dtype=np.float32)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int) -> None:
    """Encodes RGB frames as H.264 (libx264, yuv420p) MP4 with PyAV.

    Args:
        path (str | os.PathLike): The file to write.
        frames (np.ndarray): uint8 RGB frames, shape ``(T, H, W, 3)``, even ``H`` and ``W``.
        fps (int): Frames per second.
    """
    import av

    with av.open(os.fspath(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        # Low crf keeps the thin mouth stroke; one thread keeps workers from oversubscribing.
        # Macroblock-tree rate control made the files differ from run to run for identical
        # frames at these tiny sizes, so it is off to keep the output deterministic.
        stream.options = {
            "crf": "18", "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0",
        }
        for pixels in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())


# ---------------------------------------------------------------------------
# Dataset plan: videos, splits, latents, text and labels (no media).
# ---------------------------------------------------------------------------


def _rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    """A generator seeded from ``(seed, stream, index)``, independent of call order."""
    return np.random.default_rng([seed, stream, index])


def _video_sizes(num_clips: int, rng: np.random.Generator) -> list[int]:
    """Clips per video: 8-12 like speakers, fewer for tiny datasets so each split gets videos."""
    high = max(1, min(12, num_clips // 10))
    low = max(1, round(high * 2 / 3))
    sizes: list[int] = []
    while sum(sizes) < num_clips:
        sizes.append(int(rng.integers(low, high + 1)))
    sizes[-1] -= sum(sizes) - num_clips
    return sizes


def _assign_splits(
    sizes: list[int], fractions: Sequence[float], rng: np.random.Generator
) -> list[str]:
    """Assigns whole videos to splits so clip counts follow ``fractions`` (speaker independent)."""
    order = rng.permutation(len(sizes))
    bounds = np.cumsum(fractions) * sum(sizes)
    splits = [""] * len(sizes)
    done = 0
    for video in order:
        middle = done + sizes[video] / 2
        position = int(np.searchsorted(bounds, middle, side="right"))
        splits[video] = SPLITS[min(position, len(SPLITS) - 1)]
        done += sizes[video]
    _fill_empty_splits(splits, fractions, [int(v) for v in order])
    return splits


def _fill_empty_splits(splits: list[str], fractions: Sequence[float], order: list[int]) -> None:
    """Moves a video into each wanted split left empty, taking from the split with most videos."""
    for split, fraction in zip(SPLITS, fractions, strict=True):
        if fraction <= 0 or split in splits:
            continue
        donor = max(SPLITS, key=splits.count)
        if splits.count(donor) < 2:
            raise ValueError("too few videos to fill every split; generate more clips")
        video = next(v for v in reversed(order) if splits[v] == donor)
        splits[video] = split


def _annotation(label: float) -> str:
    """The MMSA annotation word for a score's sign."""
    return "Positive" if label > 0 else "Negative" if label < 0 else "Neutral"


def _plan_clip(seed: int, index: int, noise_std: float) -> dict:
    """Draws one clip's latents, text and labels from its own random stream."""
    rng = _rng(seed, _CLIP_STREAM, index)
    text, s_text = make_sentence(float(rng.uniform(-1.0, 1.0)), rng)
    scores = {
        "text": round(s_text, 4),
        "audio": round(float(rng.uniform(-1.0, 1.0)), 4),
        "visual": round(float(rng.uniform(-1.0, 1.0)), 4),
    }
    low, high = LABEL_RANGE
    clean = sum(MODALITY_WEIGHTS[name] * value for name, value in scores.items())
    clean = round(float(np.clip(clean, low, high)), 4)
    label = round(float(np.clip(clean + rng.normal(0.0, noise_std), low, high)), 4)
    return {
        "text": text, "label": label, "annotation": _annotation(label), "clean_label": clean,
        **{f"{name}_score": value for name, value in scores.items()},
    }


def plan_clips(
    num_clips: int,
    seed: int = 0,
    noise_std: float = 0.3,
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
) -> pd.DataFrame:
    """Builds the label table of a generated dataset without writing any media.

    Args:
        num_clips (int): The number of clips.
        seed (int): The random seed.
        noise_std (float): The standard deviation of the label noise.
        split_fractions (Sequence[float]): Train, valid and test shares of the clips.

    Returns:
        pd.DataFrame: One row per clip with :data:`LABEL_COLUMNS`, plus ``video_index``.
    """
    rng = _rng(seed, _PLAN_STREAM)
    sizes = _video_sizes(num_clips, rng)
    splits = _assign_splits(sizes, split_fractions, rng)
    width = max(4, len(str(len(sizes))))
    rows = []
    for video, (size, split) in enumerate(zip(sizes, splits, strict=True)):
        for clip in range(size):
            row = _plan_clip(seed, len(rows), noise_std)
            rows.append({"video_id": f"vid{video + 1:0{width}d}", "clip_id": clip + 1,
                         "mode": split, "video_index": video, **row})
    return pd.DataFrame(rows, columns=[*LABEL_COLUMNS, "video_index"])


def best_achievable_mae(
    label_csv_or_frame: str | os.PathLike | pd.DataFrame, split: str | None = "test"
) -> float:
    """The mean absolute error of predicting the noise-free score, the floor for any model.

    Args:
        label_csv_or_frame (str | os.PathLike | pd.DataFrame): A generated ``label.csv``
            or its table.
        split (str | None): The split to average over, or None for all clips.

    Returns:
        float: ``mean |label - clean_label|`` over the split.

    Raises:
        ValueError: If the table has no ``clean_label`` or the split is empty.
    """
    frame = label_csv_or_frame
    if not isinstance(frame, pd.DataFrame):
        frame = pd.read_csv(frame)
    if "clean_label" not in frame.columns:
        raise ValueError("no clean_label column: only generated data know the noise-free score")
    if split is not None:
        frame = frame[frame["mode"] == split]
    if frame.empty:
        raise ValueError(f"split {split!r} has no clips")
    return float((frame["label"] - frame["clean_label"]).abs().mean())


# ---------------------------------------------------------------------------
# Writing the dataset.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _MediaJob:
    """What a worker needs to write one clip's media."""

    index: int
    video_index: int
    video_dir: str
    clip_id: int
    audio_score: float
    visual_score: float
    params: dict


def _media_paths(job: _MediaJob) -> tuple[Path, Path]:
    """The final MP4 and WAV paths of one clip."""
    base = Path(job.video_dir) / str(job.clip_id)
    return base.with_suffix(".mp4"), base.with_suffix(".wav")


def _write_clip(job: _MediaJob) -> int:
    """Renders and writes one clip's video and audio; returns the clip index.

    Files appear atomically, so an interrupted run leaves either whole files or none.
    """
    params = job.params
    video_rng = _rng(params["seed"], _VIDEO_STREAM, job.video_index)
    voice, appearance = sample_voice(video_rng), sample_appearance(video_rng)
    rng = _rng(params["seed"], _MEDIA_STREAM, job.index)
    mp4_path, wav_path = _media_paths(job)
    size, frames = params["frame_size"], params["frames"]

    style = sample_face_style(appearance, size, rng)
    midpoint = float(rng.uniform(-MOUTH_MIDPOINT_SPREAD, MOUTH_MIDPOINT_SPREAD))
    curvatures = mouth_curvatures(midpoint, job.visual_score, frames)
    pixels = add_frame_noise(render_face_frames(curvatures, style, size), rng)
    _atomic(mp4_path, lambda tmp: write_mp4(tmp, pixels, params["fps"]))

    duration = float(rng.uniform(1.0, 2.0))
    samples = synthesize_audio(job.audio_score, duration, params["sample_rate"], voice, rng)
    _atomic(wav_path, lambda tmp: write_wav(tmp, samples, params["sample_rate"]))
    return job.index


def _atomic(path: Path, write) -> None:
    """Writes through a temporary file in the same folder, then renames it into place."""
    tmp = path.with_name(f".{path.name}.part")
    write(tmp)
    os.replace(tmp, path)


def _params(**kwargs) -> dict:
    """The generation parameters as JSON-comparable values."""
    kwargs["split_fractions"] = [float(v) for v in kwargs["split_fractions"]]
    kwargs["noise_std"] = float(kwargs["noise_std"])
    return kwargs


def _check_params(params: dict) -> None:
    """Rejects parameters that cannot produce a valid dataset."""
    fractions = params["split_fractions"]
    if len(fractions) != len(SPLITS) or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0):
        raise ValueError(
            f"split_fractions must be {len(SPLITS)} non-negative shares summing to 1, "
            f"got {fractions}"
        )
    if params["num_clips"] < sum(f > 0 for f in fractions):
        raise ValueError(f"num_clips={params['num_clips']} is too few for the requested splits")
    if params["frames"] < 2:
        raise ValueError("frames must be at least 2: the visual cue is a change over time")
    if params["frame_size"] < 16 or params["frame_size"] % 2:
        raise ValueError("frame_size must be even and at least 16 (H.264 yuv420p)")
    if params["fps"] < 1 or params["sample_rate"] < 8000 or params["noise_std"] < 0:
        raise ValueError("fps must be >= 1, sample_rate >= 8000 and noise_std >= 0")


def _read_marker(out_dir: Path) -> dict | None:
    """The contents of ``generated.json``, or None when absent."""
    marker = out_dir / "generated.json"
    if not marker.exists():
        return None
    with open(marker, encoding="utf-8") as handle:
        return json.load(handle)


def _write_marker(out_dir: Path, params: dict, complete: bool) -> None:
    """Writes ``generated.json`` atomically."""
    record = {
        "generator": "mmsent.data.synthetic", "version": GENERATOR_VERSION,
        "params": params, "complete": complete,
    }
    _atomic(out_dir / "generated.json",
            lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8"))


def _prepare_dir(out_dir: Path, params: dict, overwrite: bool) -> bool:
    """Checks what ``out_dir`` holds; returns True when the dataset is already complete.

    Raises:
        ValueError: If it holds a different or foreign dataset and ``overwrite`` is False.
    """
    marker = _read_marker(out_dir)
    same = marker is not None and (marker.get("params"), marker.get("version")) == (
        params, GENERATOR_VERSION
    )
    if same and marker.get("complete") and (out_dir / "label.csv").exists():
        return True
    foreign = marker is None and ((out_dir / "label.csv").exists() or (out_dir / "Raw").exists())
    if (foreign or (marker is not None and not same)) and not overwrite:
        what = "holds a dataset without generated.json" if foreign else (
            f"was generated with other parameters (generated.json: {marker.get('params')}, "
            f"version {marker.get('version')})")
        raise ValueError(
            f"{out_dir} {what}; requested {params}. Pass overwrite=True to regenerate."
        )
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
                        row.audio_score, row.visual_score, params)
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


def generate_raw_dataset(
    out_dir: str | os.PathLike,
    num_clips: int = 1200,
    seed: int = 0,
    frames: int = 16,
    frame_size: int = 64,
    fps: int = 8,
    sample_rate: int = 16000,
    noise_std: float = 0.3,
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    num_workers: int = 1,
    overwrite: bool = False,
) -> Path:
    """Writes a generated raw dataset in MMSA's raw layout.

    The same parameters always give the same dataset: every clip draws from a random
    stream seeded by ``(seed, clip index)``, whatever the number of workers. Media are
    written first, then ``label.csv``, then ``generated.json`` with ``"complete": true``,
    so an interrupted run never looks complete; rerunning it resumes.

    Args:
        out_dir (str | os.PathLike): The dataset folder; created when missing.
        num_clips (int): The number of clips.
        seed (int): The random seed.
        frames (int): Frames per video.
        frame_size (int): Frame width and height in pixels (even).
        fps (int): Video frames per second.
        sample_rate (int): Audio samples per second.
        noise_std (float): The standard deviation of the Gaussian label noise.
        split_fractions (Sequence[float]): Train, valid and test shares of the clips,
            assigned by whole video.
        num_workers (int): Processes writing media; 1 writes in this process.
        overwrite (bool): Replace a dataset generated with other parameters; a complete
            one with the same parameters is kept as it is.

    Returns:
        Path: ``out_dir``.

    Raises:
        ValueError: If the parameters are invalid, or ``out_dir`` holds a dataset made
            with other parameters (or without ``generated.json``) and ``overwrite`` is False.
    """
    out_dir = Path(out_dir)
    params = _params(num_clips=num_clips, seed=seed, frames=frames, frame_size=frame_size, fps=fps,
                     sample_rate=sample_rate, noise_std=noise_std, split_fractions=split_fractions)
    _check_params(params)
    out_dir.mkdir(parents=True, exist_ok=True)
    if _prepare_dir(out_dir, params, overwrite):
        logger.info("%s is already generated with these parameters", out_dir)
        return out_dir
    _write_marker(out_dir, params, complete=False)
    table = plan_clips(num_clips, seed, noise_std, split_fractions)
    _write_media(list(_media_jobs(table, out_dir, params)), len(table), num_workers)
    _atomic(out_dir / "label.csv", lambda tmp: table[list(LABEL_COLUMNS)].to_csv(tmp, index=False))
    _write_marker(out_dir, params, complete=True)
    logger.info("generated %d clips in %s", len(table), out_dir)
    return out_dir


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: ``python -m mmsent.data.synthetic --out DIR``.

    Args:
        argv (Sequence[str] | None): Arguments; None reads ``sys.argv``.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    parser.add_argument("--num-clips", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--frame-size", type=int, default=64)
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--noise-std", type=float, default=0.3)
    parser.add_argument("--split-fractions", type=float, nargs=3, default=(0.7, 0.15, 0.15))
    parser.add_argument("--num-workers", type=int, default=max(1, min(8, os.cpu_count() or 1)))
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        generate_raw_dataset(
            args.out, num_clips=args.num_clips, seed=args.seed, frames=args.frames,
            frame_size=args.frame_size, fps=args.fps, sample_rate=args.sample_rate,
            noise_std=args.noise_std, split_fractions=args.split_fractions,
            num_workers=args.num_workers, overwrite=args.overwrite,
        )
    except ValueError as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
