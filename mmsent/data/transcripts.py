"""Where a clip's transcript comes from: ``label.csv``, a subtitle beside it, or local ASR.

Training preparation and scoring both call :func:`clip_transcript`, so a clip gets the
same text on both paths; a clip without any lacks the text modality.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mmsent.errors import ConfigError
from mmsent.pretrained import model_signature

FROM_TABLE = "label.csv"
FROM_SUBTITLE = "subtitle"
FROM_ASR = "asr"
NO_TRANSCRIPT = "none"
SOURCES = (FROM_TABLE, FROM_SUBTITLE, FROM_ASR, NO_TRANSCRIPT)

_TAG = re.compile(r"<[^>]*>|\{\\[^}]*\}")


def read_subtitle(path: str | Path) -> str:
    """The text of an ``.srt`` or ``.vtt`` file: every cue's lines, joined by spaces.

    Cue numbers, timings, the ``WEBVTT`` header, ``NOTE``/``STYLE``/``REGION`` blocks
    and markup (``<i>``, ``<v Speaker>``, ``{\\an8}``) are left out.

    Args:
        path (str | Path): The subtitle file (UTF-8, a BOM allowed).

    Returns:
        str: The spoken text; empty when the file holds no cue.

    Raises:
        ValueError: If the file is not UTF-8, naming it.
    """
    path = Path(path)
    try:
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 ({error.reason} at byte {error.start}); "
                         f"save the subtitle as UTF-8") from None
    words = []
    for block in re.split(r"\n\s*\n", content.replace("\r\n", "\n").replace("\r", "\n")):
        lines = [line.strip() for line in block.strip().split("\n") if line.strip()]
        if not lines or lines[0].startswith(("WEBVTT", "NOTE", "STYLE", "REGION")):
            continue
        timing = next((i for i, line in enumerate(lines) if "-->" in line), None)
        if timing is None:
            continue
        for line in lines[timing + 1:]:
            text = _TAG.sub("", line).strip()
            if text:
                words.append(text)
    return " ".join(" ".join(words).split())


class Transcriber:
    """A local speech-recognition model for clips without a transcript; never downloaded.

    Args:
        folder (str): The model folder (weights, config, processor files).

    Raises:
        ConfigError: If the folder does not exist, naming the setting.
    """

    def __init__(self, folder: str) -> None:
        if not Path(folder).is_dir():
            raise ConfigError(f"data.source.init_args.asr: {folder} is not a folder; give a local "
                              "speech-recognition model folder (models are never downloaded)")
        self.folder = str(folder)
        self._pipeline = None

    def fingerprint(self) -> dict:
        """dict: What identifies the model's weights."""
        return model_signature(self.folder)

    @property
    def sample_rate(self) -> int:
        """int: The rate the model's feature extractor expects."""
        return int(self._load().feature_extractor.sampling_rate)

    def _load(self):
        if self._pipeline is None:
            from transformers import pipeline

            # A folder path loads from disk; the name is never looked up on the Hub.
            self._pipeline = pipeline("automatic-speech-recognition", model=self.folder, device="cpu")
        return self._pipeline

    def transcribe(self, samples: np.ndarray) -> str:
        """Returns the text spoken in mono ``samples`` ``float32 (N,)`` at :attr:`sample_rate`,
        whitespace collapsed (possibly empty)."""
        result = self._load()({"raw": samples, "sampling_rate": self.sample_rate})
        return " ".join(str(result.get("text", "")).split())

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "_pipeline": None}


def clip_transcript(text: str | None, subtitle: str | Path | None, audio: str | Path | None = None,
                    transcriber: Transcriber | None = None) -> tuple[str, str]:
    """A clip's transcript and where it came from.

    The table's text wins; else the subtitle's; else what the transcriber hears.

    Args:
        text (str | None): The transcript in ``label.csv`` (empty or None when unknown).
        subtitle (str | Path | None): An ``.srt``/``.vtt`` beside the clip.
        audio (str | Path | None): The clip's audio file (for speech recognition).
        transcriber (Transcriber | None): A local speech-recognition model.

    Returns:
        tuple[str, str]: The transcript (empty when none) and one of :data:`SOURCES`.
    """
    from mmsent.data.media import DecodeError, decode_audio

    text = " ".join(str(text or "").split())
    if text:
        return text, FROM_TABLE
    if subtitle:
        text = read_subtitle(subtitle)
        if text:
            return text, FROM_SUBTITLE
    if transcriber is not None and audio:
        try:
            text = transcriber.transcribe(decode_audio(audio, transcriber.sample_rate))
        except DecodeError:
            text = ""
        if text:
            return text, FROM_ASR
    return "", NO_TRANSCRIPT
