"""Data sources: one class per on-disk format, each producing prepared examples.

A source is chosen in YAML (``data.source.class_path``). It does two things: a cheap
``open`` that validates the index and fits what must be fitted on the training
split (a tokenizer, feature statistics), and a per-clip ``load`` that does the heavy
work (decoding). :mod:`mmsent.data.cache` runs ``load`` once per clip, with
progress, error handling and resumable shards, and caches the result.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mmsent.data.lm_features import TranscriptText
from mmsent.data.media import DecodeError, decode_audio, decode_frames, log_mel_frames
from mmsent.data.schema import MODALITIES, DatasetSpec, check_label, check_split, make_id
from mmsent.data.synthetic import generate_raw_dataset
from mmsent.errors import ConfigError
from mmsent.io import content_hash, file_signature

RAW_COLUMNS = ("video_id", "clip_id", "text", "label", "mode")


@dataclass
class Loaded:
    """What ``load`` returns for one clip.

    Attributes:
        example (dict): The example (see :mod:`mmsent.data.schema`); a modality that
            could not be read is ``None``.
        problems (list[str]): One message per modality that failed, naming the file.
    """

    example: dict
    problems: list[str] = field(default_factory=list)


class DataSource(ABC):
    """One dataset on disk, turned into prepared examples.

    Subclasses set :attr:`name` and implement :meth:`fingerprint`, :meth:`open` and
    :meth:`load`.
    """

    name: str = "dataset"

    @abstractmethod
    def fingerprint(self) -> dict:
        """dict: Every setting and input-file signature the prepared data depends on.

        The cache is rebuilt exactly when this changes.
        """

    @abstractmethod
    def open(self, workdir: Path) -> tuple[list[dict], DatasetSpec]:
        """Validates the index and fits what depends on the training split.

        Args:
            workdir (Path): The cache folder for this fingerprint (for a tokenizer).

        Returns:
            tuple[list[dict], DatasetSpec]: One record per clip (at least ``id`` and
            ``split``), handed to :meth:`load`, and the spec of what load produces.

        Raises:
            ValueError: On bad index content, naming the file and row.
        """

    @abstractmethod
    def load(self, record: dict) -> Loaded:
        """Produces one example; must not raise for a bad clip, only report it.

        Args:
            record (dict): One record from :meth:`open`.

        Returns:
            Loaded: The example and its problems.
        """


def read_label_table(path: Path) -> pd.DataFrame:
    """Reads and validates an MMSA-style ``label.csv``.

    Args:
        path (Path): The CSV (``video_id, clip_id, text, label, annotation, mode``).

    Returns:
        pd.DataFrame: The table with an ``id`` column and float labels.

    Raises:
        FileNotFoundError: If the file is missing.
        ValueError: On a missing column, no row, an empty transcript, a bad label, an
            unknown split or a duplicate id, naming the file and row (1-based, header =
            row 1).
    """
    if not path.exists():
        raise FileNotFoundError(f"{path}: label file not found")
    check_utf8(path)
    table = pd.read_csv(path, dtype={"video_id": str, "clip_id": str, "text": str, "mode": str},
                        keep_default_na=False)
    missing = [c for c in RAW_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    if table.empty:
        raise ConfigError(f"{path}: no clip: the table has a header but no row")
    seen: dict[str, int] = {}
    labels = []
    for index, row in enumerate(table.itertuples(index=False)):
        where = f"{path}, row {index + 2} ({row.video_id}/{row.clip_id})"
        if not str(row.text).strip():
            raise ValueError(f"{where}: empty transcript")
        labels.append(check_label(_label_value(row.label, where), where))
        check_split(row.mode, where)
        clip = make_id(row.video_id, row.clip_id)
        if clip in seen:
            raise ValueError(f"{where}: duplicate id {clip!r} (first at row {seen[clip]})")
        seen[clip] = index + 2
    table["label"] = labels
    table["id"] = list(seen)
    return table


def _as_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _label_value(value, where: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: label {value!r} is not a number") from None


def check_utf8(path: Path) -> None:
    """Checks that a text file is UTF-8, naming the first line that is not.

    Args:
        path (Path): The file.

    Raises:
        ConfigError: Naming the file, the line (1-based) and the byte, and asking
            for UTF-8.
    """
    with path.open("rb") as stream:
        for number, line in enumerate(stream, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ConfigError(
                    f"{path}, row {number}: not UTF-8 (byte {line[error.start:error.start + 1]!r} at "
                    f"column {error.start + 1}); save the file as UTF-8") from None


def audio_file(video: Path) -> Path:
    """The audio of a clip: the ``.wav`` of the same name beside its video, else the
    video itself (its own audio track).

    Args:
        video (Path): The clip's video file.

    Returns:
        Path: The file to read the audio from.
    """
    wav = video.with_suffix(".wav")
    return wav if wav.exists() else video


class RawClipSource(DataSource):
    """Raw clips in MMSA's layout: ``label.csv`` plus ``Raw/<video_id>/<clip_id>.mp4``.

    Audio comes from ``<clip_id>.wav`` beside the video where present, otherwise from
    the video's own audio stream, which is how MMSA ships raw MOSI/MOSEI/SIMS.

    Args:
        root (str): The dataset folder.
        label_file (str): The label table, relative to ``root``.
        video_dir (str): The clip folder, relative to ``root``.
        video_ext (str): The video file extension.
        modalities (list[str]): Which of text, audio, video to prepare.
        frames (int): Frames sampled per clip.
        frame_size (int): Frame height and width after scaling.
        sample_rate (int): Audio resampling rate.
        n_mels (int): Log-mel bands per audio frame.
        max_audio_frames (int): Longer clips are average-pooled down to this.
        tokenizer (str): ``"word"``, ``"minilm"``, or a Hugging Face model id or path.
        max_text_length (int): Longest token sequence kept.
        text_features (str | None): A language model (``"minilm"``, a Hugging Face id
            or a local path) whose frozen token states, computed once while
            preparing, become the text input (``text_kind == "vectors"``) instead of
            token ids; see :mod:`mmsent.data.lm_features`.
    """

    name = "raw"

    def __init__(self, root: str, label_file: str = "label.csv", video_dir: str = "Raw",
                 video_ext: str = "mp4", modalities: list[str] | None = None, frames: int = 16,
                 frame_size: int = 32, sample_rate: int = 16000, n_mels: int = 40,
                 max_audio_frames: int = 256, tokenizer: str = "word",
                 max_text_length: int = 64, text_features: str | None = None) -> None:
        self.root = Path(root)
        self.label_file = label_file
        self.video_dir = video_dir
        self.video_ext = video_ext
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

    def clip_paths(self, video_id: str, clip_id: str) -> tuple[Path, Path]:
        """The video and audio file of one clip.

        Args:
            video_id (str): The video.
            clip_id (str): The clip.

        Returns:
            tuple[Path, Path]: The video path and the audio path (the WAV beside it if
            it exists, else the video itself).
        """
        video = self.root / self.video_dir / video_id / f"{clip_id}.{self.video_ext}"
        return video, audio_file(video)

    def fingerprint(self) -> dict:
        table = self.root / self.label_file
        media = [self.root / self.video_dir / p for p in _listing(self.root / self.video_dir)]
        return {
            "root": str(self.root.resolve()),
            "labels": content_hash(table) if table.exists() else None,
            "media": file_signature(media),
            "modalities": self.modalities,
            "frames": self.frames,
            "frame_size": self.frame_size,
            "sample_rate": self.sample_rate,
            "n_mels": self.n_mels,
            "max_audio_frames": self.max_audio_frames,
            "tokenizer": self.tokenizer.name,
            "max_text_length": self.tokenizer.max_length,
            **({"text_features": self.text.states.fingerprint()} if self.text.states else {}),
        }

    def open(self, workdir: Path) -> tuple[list[dict], DatasetSpec]:
        table = read_label_table(self.root / self.label_file)
        if "text" in self.modalities:
            self.text.fit(table.loc[table["mode"] == "train", "text"].tolist(),
                          dict(zip(table["id"], table["text"], strict=True)), workdir)
        records = [self._record(row) for row in table.to_dict("records")]
        return records, self._spec()

    def _record(self, row: dict) -> dict:
        video, audio = self.clip_paths(row["video_id"], row["clip_id"])
        clean = _as_float(row.get("clean_label", math.nan))
        return {"id": row["id"], "split": row["mode"], "transcript": row["text"], "label": row["label"],
                "clean_label": clean, "video_path": str(video), "audio_path": str(audio)}

    def _spec(self) -> DatasetSpec:
        dims = {"text": self.text.input_dim if "text" in self.modalities else 0,
                "audio": self.n_mels, "video": 3}
        return DatasetSpec(
            input_dims={m: dims[m] for m in self.modalities},
            text_kind=self.text.kind,
            video_kind="frames",
            pad_token_id=self.text.pad_token_id if "text" in self.modalities else 0,
            extras={"frame_shape": [self.frames, self.frame_size, self.frame_size, 3],
                    "tokenizer": self.text.name},
        )

    def load(self, record: dict) -> Loaded:
        example = {key: record[key] for key in ("id", "split", "transcript", "label", "clean_label")}
        problems: list[str] = []
        for modality in MODALITIES:
            example[modality] = None
            if modality in self.modalities:
                try:
                    example[modality] = self._load_modality(modality, record)
                except DecodeError as error:
                    problems.append(f"{record['id']}: {modality}: {error}")
        return Loaded(example, problems)

    def _load_modality(self, modality: str, record: dict):
        if modality == "text":
            return self.text.encode(record["id"], record["transcript"])
        if modality == "audio":
            samples = decode_audio(record["audio_path"], self.sample_rate)
            return log_mel_frames(samples, self.sample_rate, self.n_mels,
                                  max_frames=self.max_audio_frames)
        return decode_frames(record["video_path"], self.frames, self.frame_size)


def _listing(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]


class GeneratedSource(RawClipSource):
    """The built-in default dataset: generated clips in the raw layout.

    The clips are written on first use (deterministic from ``seed``) and then read
    back through :class:`RawClipSource`, the path real raw clips take. The label
    table carries the noise-free score, so reports show the best achievable error.

    Args:
        root (str): Where the clips are written.
        num_clips (int): How many clips to generate.
        seed (int): Generation seed.
        source_frames (int): Frames written per clip.
        source_frame_size (int): Height and width of the written video.
        **kwargs: Any :class:`RawClipSource` argument (decoded frames, tokenizer, ...).
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
        generate_raw_dataset(self.root, num_clips=self.num_clips, seed=self.seed,
                             frames=self.source_frames, frame_size=self.source_frame_size,
                             sample_rate=self.sample_rate)

    def fingerprint(self) -> dict:
        self.ensure_generated()
        return super().fingerprint()
