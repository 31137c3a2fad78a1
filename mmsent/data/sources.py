"""Data sources: one class per on-disk format, each producing prepared examples.

A source has a cheap ``open`` that validates the index and fits what depends on the
training split, and a per-clip ``load`` that decodes; :mod:`mmsent.data.cache` runs
``load`` once per clip and caches the result.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from mmsent.data.clip_files import (
    AUDIO_SUFFIXES,
    VIDEO_SUFFIXES,
    ClipMedia,
    find_clip_media,
    media_for_file,
)
from mmsent.data.faces import FaceCropper
from mmsent.data.labels import read_label_table
from mmsent.data.lm_features import TranscriptText
from mmsent.data.media import DecodeError, decode_audio, decode_frames, log_mel_frames
from mmsent.data.schema import MODALITIES, DatasetSpec
from mmsent.data.transcripts import Transcriber, clip_transcript
from mmsent.io import content_hash, file_signature

# Bumped when the way frames or audio are read changes, so old caches are prepared anew.
DECODING_VERSION = 2


@dataclass
class Loaded:
    """What ``load`` returns for one clip.

    Attributes:
        example (dict): The example (see :mod:`mmsent.data.schema`); ``None`` if unreadable.
        problems (list[str]): One message per modality that failed, naming the file.
        notes (dict): What is recorded about the clip without being a failure:
            ``transcript`` (where the text came from), ``face`` (found or centre crop).
    """

    example: dict
    problems: list[str] = field(default_factory=list)
    notes: dict = field(default_factory=dict)


class DataSource(ABC):
    """One dataset on disk, turned into prepared examples.

    Subclasses set :attr:`name` and implement the abstract methods.
    """

    name: str = "dataset"

    @abstractmethod
    def fingerprint(self) -> dict:
        """dict: Every setting and input-file signature the cache depends on."""

    @abstractmethod
    def open(self, workdir: Path) -> tuple[list[dict], DatasetSpec]:
        """Validates the index and fits what depends on the training split.

        Args:
            workdir (Path): The cache folder for this fingerprint (for a tokenizer).

        Returns:
            tuple[list[dict], DatasetSpec]: One record per clip (at least ``id`` and
            ``split``) for :meth:`load`, and the spec of what it produces.

        Raises:
            ValueError: On bad index content, naming the file and row.
        """

    @abstractmethod
    def load(self, record: dict) -> Loaded:
        """Returns the example of one ``record`` from :meth:`open`, and its problems; must not
        raise for a bad clip, only report it."""


def _as_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class RawClipSource(DataSource):
    """Raw clips in MMSA's layout: ``label.csv`` plus ``Raw/<video_id>/<clip_id>.<ext>``.

    Files are found as :func:`~mmsent.data.clip_files.find_clip_media` says (audio
    from the container where no audio file is beside it, as MMSA ships raw
    MOSI/MOSEI/SIMS), transcripts as :func:`~mmsent.data.transcripts.clip_transcript` says.

    Args:
        root (str): The dataset folder.
        label_file (str): The label table, relative to ``root``.
        video_dir (str): The clip folder, relative to ``root``.
        video_ext (str | None): A container tried first when a clip has files in several.
        modalities (list[str]): Which of text, audio, video to prepare.
        frames (int): Frames sampled per clip, evenly over its decoded duration.
        frame_size (int): Frame height and width after scaling.
        sample_rate (int): Audio resampling rate, in Hz.
        n_mels (int): Log-mel bands per audio frame.
        max_audio_frames (int): Longer clips are average-pooled down to this.
        tokenizer (str): ``"word"``, ``"minilm"``, or a Hugging Face model id or path.
        max_text_length (int): Longest token sequence kept.
        text_features (str | None): A language model whose token states become the text input.
        face (dict | None): :class:`~mmsent.data.faces.FaceCropper` settings; None: whole frames.
        asr (str | None): A local speech-recognition model folder (never downloaded).
    """

    name = "raw"

    def __init__(self, root: str, label_file: str = "label.csv", video_dir: str = "Raw",
                 video_ext: str | None = None, modalities: list[str] | None = None, frames: int = 16,
                 frame_size: int = 32, sample_rate: int = 16000, n_mels: int = 40,
                 max_audio_frames: int = 256, tokenizer: str = "word",
                 max_text_length: int = 64, text_features: str | None = None,
                 face: dict | None = None, asr: str | None = None) -> None:
        self.root = Path(root)
        self.label_file = label_file
        self.video_dir = video_dir
        self.video_ext = video_ext.lstrip(".") if video_ext else None
        self.modalities = list(modalities or MODALITIES)
        unknown = set(self.modalities) - set(MODALITIES)
        if unknown:
            raise ValueError(f"modalities: unknown {sorted(unknown)}; expected some of {MODALITIES}")
        self.frames = frames
        self.frame_size = frame_size
        self.sample_rate = sample_rate
        self.n_mels = n_mels
        self.max_audio_frames = max_audio_frames
        self.text = TranscriptText(tokenizer, max_text_length, text_features)
        self.tokenizer = self.text.tokenizer
        self.face = FaceCropper.from_settings(face)
        self.asr = Transcriber(asr) if asr else None

    def clip_media(self, video_id: str, clip_id: str, media: str | None = None) -> ClipMedia:
        """The files of one clip, in ``video_ext`` where it has one.

        Args:
            video_id (str): The video.
            clip_id (str): The clip.
            media (str | None): ``label.csv``'s ``media`` cell, if any.

        Returns:
            ClipMedia: Its files (None where absent).
        """
        if self.video_ext and not (media and media.strip()):
            preferred = self.root / self.video_dir / video_id / f"{clip_id}.{self.video_ext}"
            if preferred.is_file():
                return media_for_file(preferred)
        return find_clip_media(self.root, video_id, clip_id, media, self.video_dir)

    def fingerprint(self) -> dict:
        table = self.root / self.label_file
        clips = self.root / self.video_dir
        media = [p for p in clips.rglob("*") if p.is_file()] if clips.exists() else []
        media += [self.root / m for m in _media_column(table)]
        return {"root": str(self.root.resolve()),
                "labels": content_hash(table) if table.exists() else None,
                "media": file_signature(media), "decoding": DECODING_VERSION,
                "video_ext": self.video_ext, "modalities": self.modalities, "frames": self.frames,
                "frame_size": self.frame_size, "sample_rate": self.sample_rate,
                "n_mels": self.n_mels, "max_audio_frames": self.max_audio_frames,
                "tokenizer": self.tokenizer.name, "max_text_length": self.tokenizer.max_length,
                **({"text_features": self.text.states.fingerprint()} if self.text.states else {}),
                **({"face": self.face.settings()} if self.face else {}),
                **({"asr": self.asr.fingerprint()} if self.asr else {})}

    def open(self, workdir: Path) -> tuple[list[dict], DatasetSpec]:
        table = read_label_table(self.root / self.label_file)
        records = [self._record(row) for row in table.to_dict("records")]
        if "text" in self.modalities:
            texts = {r["id"]: r["transcript"] for r in records if r["transcript"]}
            self.text.fit([r["transcript"] for r in records if r["split"] == "train" and r["transcript"]],
                          texts, workdir)
        return records, self._spec()

    def _record(self, row: dict) -> dict:
        media = self.clip_media(row["video_id"], row["clip_id"], row.get("media"))
        clean = _as_float(row.get("clean_label", math.nan))
        record = clip_record(row["id"], row["mode"], row["text"], row["label"], media,
                             self.asr if "text" in self.modalities else None)
        record["clean_label"] = clean
        record["media_stem"] = str(self.root / self.video_dir / row["video_id"] / row["clip_id"])
        return record

    def _spec(self) -> DatasetSpec:
        dims = {"text": self.text.input_dim if "text" in self.modalities else 0,
                "audio": self.n_mels, "video": 3}
        return DatasetSpec(
            input_dims={m: dims[m] for m in self.modalities},
            text_kind=self.text.kind,
            video_kind="frames",
            pad_token_id=self.text.pad_token_id if "text" in self.modalities else 0,
            extras={"frame_shape": [self.frames, self.frame_size, self.frame_size, 3],
                    "tokenizer": self.text.name})

    def load(self, record: dict) -> Loaded:
        example = {key: record[key] for key in ("id", "split", "transcript", "label", "clean_label")}
        problems: list[str] = []
        notes: dict = {}
        for modality in MODALITIES:
            example[modality] = None
            if modality not in self.modalities:
                continue
            if modality == "text":
                notes["transcript"] = record["transcript_source"]
                if record["transcript"]:
                    example["text"] = self.text.encode(record["id"], record["transcript"])
                continue
            try:
                example[modality] = self._load_media(modality, record, notes)
            except DecodeError as error:
                problems.append(f"{record['id']}: {modality}: {error}")
        return Loaded(example, problems, notes)

    def _load_media(self, modality: str, record: dict, notes: dict):
        path = record[f"{modality}_path"]
        if not path:
            stem = record.get("media_stem") or record["id"]
            tried = VIDEO_SUFFIXES if modality == "video" else VIDEO_SUFFIXES + AUDIO_SUFFIXES
            raise DecodeError(f"{stem}: no {modality} file (looked for {', '.join(tried)})")
        if modality == "audio":
            samples = decode_audio(path, self.sample_rate)
            return log_mel_frames(samples, self.sample_rate, self.n_mels,
                                  max_frames=self.max_audio_frames)
        decoded = decode_frames(path, self.frames, self.frame_size, self.face)
        if decoded.face_found is not None:
            notes["face"] = "found" if decoded.face_found else "centre crop"
        return decoded.frames


def clip_record(clip_id: str, split: str, text: str | None, label: float, media: ClipMedia,
                transcriber: Transcriber | None = None) -> dict:
    """One clip's record for :meth:`RawClipSource.load`; scoring builds its records here too.

    Args:
        clip_id (str): The clip id.
        split (str): Its split.
        text (str | None): Its transcript in the table (empty or None when unknown).
        label (float): Its score (NaN when unknown).
        media (ClipMedia): Its files.
        transcriber (Transcriber | None): Speech recognition for clips without text.

    Returns:
        dict: ``id``, ``split``, ``transcript``, ``transcript_source``, ``label``,
        ``clean_label`` and ``video_path``, ``audio_path``, ``subtitle_path`` ("" if absent).
    """
    transcript, origin = clip_transcript(text, media.subtitle, media.audio, transcriber)
    return {"id": clip_id, "split": split, "transcript": transcript, "transcript_source": origin,
            "label": label, "clean_label": math.nan,
            "video_path": str(media.video) if media.video else "",
            "audio_path": str(media.audio) if media.audio else "",
            "subtitle_path": str(media.subtitle) if media.subtitle else ""}


def _media_column(table: Path) -> list[str]:
    """The paths a ``media`` column names; none when unreadable (``open`` then says why)."""
    import pandas as pd

    try:
        named = pd.read_csv(table, dtype=str, keep_default_na=False, usecols=lambda c: c == "media")
    except (OSError, UnicodeDecodeError, ValueError):
        return []
    return [m.strip() for m in named.get("media", []) if m.strip()]


class GeneratedSource(RawClipSource):
    """The built-in default dataset: generated clips in the raw layout.

    The clips are written on first use (deterministic from ``seed``) and read back as
    real raw clips are. The noise-free score lets reports show the best achievable error.

    Args:
        root (str): Where the clips are written.
        num_clips (int): How many clips to generate.
        seed (int): Generation seed.
        source_frames (int): Frames written per clip.
        source_frame_size (int): Height and width of the written video.
        **kwargs: Any :class:`RawClipSource` argument.
    """

    name = "generated"

    def __init__(self, root: str = "data/generated/default", num_clips: int = 1200, seed: int = 0,
                 source_frames: int = 16, source_frame_size: int = 64, **kwargs) -> None:
        super().__init__(root, **kwargs)
        self.num_clips = num_clips
        self.seed = seed
        self.source_frames = source_frames
        self.source_frame_size = source_frame_size

    def ensure_generated(self) -> None:
        """Writes the clips unless the same ones are already there."""
        # Imported here: the generator's tables are needed only to write clips.
        from mmsent.data.synthetic import generate_raw_dataset

        generate_raw_dataset(self.root, num_clips=self.num_clips, seed=self.seed,
                             frames=self.source_frames, frame_size=self.source_frame_size,
                             sample_rate=self.sample_rate)

    def fingerprint(self) -> dict:
        self.ensure_generated()
        return super().fingerprint()
