"""Video: a cartoon face whose mouth curvature moves linearly over the clip.

The score is the direction of that movement, so only a model that sees time order
can recover it: the set of frames says nothing about its sign.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

VIDEO_SWING = 1.4
"""float: The change in mouth curvature over a clip per unit of ``s_video``."""

MOUTH_MIDPOINT_SPREAD = 2.0
"""float: Mid-clip curvatures are uniform in ``[-spread, spread]``; a spread well above
``VIDEO_SWING / 2`` keeps any single frame nearly uninformative about ``s_video``."""


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
    """Returns a speaker's look drawn from ``rng``."""
    return Appearance(
        radius=float(rng.uniform(0.28, 0.34)),
        aspect=float(rng.uniform(1.0, 1.15)),
        # A light face with dark features keeps the mouth visible on any background.
        skin=_colour(rng, 150, 250),
        background=_colour(rng, 0, 255),
        features=_colour(rng, 0, 70))


def sample_face_style(appearance: Appearance, frame_size: int,
                      rng: np.random.Generator) -> FaceStyle:
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
        features=appearance.features)


def mouth_curvatures(midpoint: float, s_video: float, frames: int) -> np.ndarray:
    """The mouth curvature in each frame: a line from ``A`` to ``B`` around ``midpoint``.

    ``B - A = VIDEO_SWING * s_video``; ``-s_video`` gives exactly the reverse.

    Args:
        midpoint (float): The curvature half-way through the clip.
        s_video (float): The video latent score in ``[-1, 1]``.
        frames (int): The number of frames (at least 2).

    Returns:
        np.ndarray: float64 curvatures, shape ``(frames,)``; positive is a smile.
    """
    steps = np.arange(frames, dtype=np.float64) * 2 - (frames - 1)
    return midpoint + VIDEO_SWING * s_video * (steps / (2 * (frames - 1)))


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

    The curve stays centred on its height, so the height says nothing about the curvature.
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
        # Low crf keeps the thin mouth stroke; one thread keeps workers from oversubscribing;
        # mbtree=0 makes the same seed write the same bytes at these tiny sizes.
        stream.options = {
            "crf": "18", "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0",}
        for pixels in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
