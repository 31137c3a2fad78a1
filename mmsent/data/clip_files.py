"""Finding a clip's files: its video in any container, its audio and its subtitle.

Training preparation and scoring both look clips up here, so both find the same files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".flv", ".mpg", ".mpeg", ".ts", ".m4v")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".m4a", ".ogg")
SUBTITLE_SUFFIXES = (".srt", ".vtt")
DEFAULT_VIDEO_DIR = "Raw"


@dataclass(frozen=True)
class ClipMedia:
    """The files of one clip; any may be missing.

    Attributes:
        video (Path | None): The video container.
        audio (Path | None): An audio file beside the clip, else the video container.
        subtitle (Path | None): An ``.srt`` or ``.vtt`` file beside the clip.
    """

    video: Path | None = None
    audio: Path | None = None
    subtitle: Path | None = None


def _beside(stem_path: Path, suffixes: tuple[str, ...]) -> Path | None:
    """The first existing file ``stem_path`` + one of ``suffixes`` (either case)."""
    for suffix in suffixes:
        for candidate in (suffix, suffix.upper()):
            path = stem_path.with_name(stem_path.name + candidate)
            if path.is_file():
                return path
    return None


def find_clip_media(root: str | Path, video_id: str, clip_id: str, media: str | None = None,
                    video_dir: str = DEFAULT_VIDEO_DIR) -> ClipMedia:
    """Finds a clip's video, audio and subtitle files.

    The clip is ``<root>/<video_dir>/<video_id>/<clip_id>.<ext>`` (any of :data:`VIDEO_SUFFIXES`)
    or ``media``; audio comes from a file of the same name beside it, else the container.

    Args:
        root (str | Path): The dataset folder (holding ``label.csv``).
        video_id (str): The source video.
        clip_id (str): The clip.
        media (str | None): A path relative to ``root``; empty or None looks up by id.
        video_dir (str): The clip folder, relative to ``root``.

    Returns:
        ClipMedia: What was found; None where no file is there.
    """
    if media and str(media).strip():
        return media_for_file(Path(root) / str(media).strip())
    stem = Path(root) / video_dir / str(video_id) / str(clip_id)
    video = _beside(stem, VIDEO_SUFFIXES)
    return ClipMedia(video, _beside(stem, AUDIO_SUFFIXES) or video, _beside(stem, SUBTITLE_SUFFIXES))


def media_for_file(path: str | Path) -> ClipMedia:
    """Returns the media of the clip whose video or audio file is ``path``, as
    :func:`find_clip_media` finds them."""
    path = Path(path)
    stem = path.with_suffix("")
    if path.suffix.lower() in AUDIO_SUFFIXES:
        return ClipMedia(None, path, _beside(stem, SUBTITLE_SUFFIXES))
    return ClipMedia(path, _beside(stem, AUDIO_SUFFIXES) or path, _beside(stem, SUBTITLE_SUFFIXES))
