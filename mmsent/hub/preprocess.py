"""Raw clips to model inputs, through the code that prepared the training data.

:class:`Preprocessor` rebuilds the training :class:`~mmsent.data.RawClipSource` from the
settings a model folder records and runs its per-clip ``load``, ``to_row`` and ``collate``,
so a clip scored from its files gets exactly the tensors it had in training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from mmsent.data.batches import collate, to_row
from mmsent.data.clip_files import ClipMedia, media_for_file
from mmsent.data.schema import MODALITIES, DatasetSpec
from mmsent.data.sources import RawClipSource, clip_record
from mmsent.errors import ConfigError, MissingFileError

TOKENIZER_FILE = "tokenizer.json"
WORD_TOKENIZER = "word"


@dataclass
class Clip:
    """One clip to score: any of its three inputs may be missing.

    Attributes:
        id: What the output calls it.
        video: The video file.
        audio: The audio file (an audio file, or a video whose track to use).
        text: What is said in it.
        label: Its true score, when known.
        subtitle: An ``.srt``/``.vtt`` whose cues are the transcript when ``text`` is empty; by
            default the one beside the video, if any.
    """

    id: str
    video: str | None = None
    audio: str | None = None
    text: str | None = None
    label: float | None = None
    subtitle: str | None = None


@dataclass
class PreparedClip:
    """A clip's model inputs and what could not be read.

    Attributes:
        clip: The clip.
        row: Its prepared example (:func:`~mmsent.data.batches.to_row`).
        present: The modalities read.
        problems: One line per input that was given but could not be read.
        notes: What preparation noted (``transcript``, ``face``), as in the training cache.
    """

    clip: Clip
    row: dict
    present: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: dict = field(default_factory=dict)


def preprocessing_settings(source: RawClipSource, spec: DatasetSpec) -> dict:
    """Every setting that turns raw files into the model's inputs, for ``config.json``.

    Args:
        source: The training data's source, its tokenizer fitted.
        spec: What its prepared examples hold.

    Returns:
        The settings, as plain data.

    Raises:
        ConfigError: If the text input is frozen language-model states (computed per dataset,
            not per clip).
    """
    if source.text.states is not None:
        raise ConfigError("data.source.init_args.text_features: a model whose text input is frozen "
                          "language-model states cannot be exported for scoring raw files")
    return {
        "source": f"{type(source).__module__}.{type(source).__qualname__}",
        "modalities": list(source.modalities),
        "spec": asdict(spec),
        "text": {"tokenizer": source.tokenizer.name,
                 "tokenizer_fingerprint": source.tokenizer.fingerprint() if "text" in source.modalities else None,
                 "tokenizer_file": TOKENIZER_FILE if source.tokenizer.name == WORD_TOKENIZER else None,
                 "max_length": source.tokenizer.max_length},
        "video": {"container": source.video_ext, "frames": source.frames, "frame_size": source.frame_size,
                  "sampling": "frames on display at instants evenly spaced from the first frame's timestamp "
                              "to the last's, display rotation undone, then either scaled whole to "
                              "frame_size x frame_size RGB or (face) cropped to the clip's face box and "
                              "scaled, then to [-1, 1]",
                  "face": source.face.settings() if source.face else None},
        "transcripts": {"order": "label.csv's text, else the cues of an .srt/.vtt beside the clip, else "
                                 "the asr model's transcript, else no text",
                        "asr": source.asr.folder if source.asr else None},
        "audio": {"source": "an audio file of the same name beside the video (.wav, .flac, .mp3, .m4a, "
                            ".ogg), else the video's own audio track, mixed down to mono; silence fills a "
                            "late start of the audio against the video",
                  "sample_rate": source.sample_rate, "features": "log-mel filterbank energies",
                  "n_mels": source.n_mels, "window_ms": 25.0, "hop_ms": 10.0,
                  "max_frames": source.max_audio_frames,
                  "normalization": "none in preprocessing: the acoustic encoder standardizes its pooled "
                                   "statistics with its batch norm, whose training statistics are "
                                   "in model.safetensors"}}


class Preprocessor:
    """Turns raw clips into collated batches, as the training data was prepared.

    Args:
        settings: The model folder's ``preprocessing`` settings.
        folder: The model folder (for a word-level tokenizer's file).

    Raises:
        MissingFileError: If a word-level tokenizer's file is missing.
        ConfigError: If the tokenizer found here is not the one the model was trained with.
    """

    def __init__(self, settings: dict, folder: str | Path | None = None) -> None:
        text, video, audio = settings["text"], settings["video"], settings["audio"]
        self.spec = DatasetSpec(**settings["spec"])
        asr = settings.get("transcripts", {}).get("asr")
        self.source = RawClipSource(".", video_ext=video["container"], modalities=settings["modalities"],
                                    frames=video["frames"], frame_size=video["frame_size"],
                                    sample_rate=audio["sample_rate"], n_mels=audio["n_mels"],
                                    max_audio_frames=audio["max_frames"], tokenizer=text["tokenizer"],
                                    max_text_length=text["max_length"], face=video.get("face"),
                                    asr=asr if asr and Path(asr).is_dir() else None)
        if "text" in self.source.modalities:
            self._fit_tokenizer(text, folder)

    def _fit_tokenizer(self, text: dict, folder: str | Path | None) -> None:
        if text["tokenizer_file"]:
            path = Path(folder or ".") / text["tokenizer_file"]
            if not path.is_file():
                raise MissingFileError(f"{folder}: the model folder lacks {text['tokenizer_file']}, "
                                       f"its word-level tokenizer")
            self.source.tokenizer.load(path)
        else:
            self.source.tokenizer.fit([], Path(folder or "."))
        found = self.source.tokenizer.fingerprint()
        if found != text["tokenizer_fingerprint"]:
            raise ConfigError(f"{folder}: the tokenizer {text['tokenizer']!r} found here has another "
                              f"vocabulary (fingerprint {found}) than the one the model was trained "
                              f"with ({text['tokenizer_fingerprint']})")

    def prepare(self, clip: Clip) -> PreparedClip:
        """Reads one clip's files through the training data's ``load``.

        Args:
            clip: The clip.

        Returns:
            Its example; an input given but unreadable is left out and named in ``problems``; an
                empty transcript with no subtitle counts as no text.
        """
        subtitle = clip.subtitle or (media_for_file(clip.video).subtitle if clip.video else None)
        media = ClipMedia(clip.video or None, clip.audio or None, subtitle)
        record = clip_record(clip.id, "test", clip.text, float("nan") if clip.label is None else clip.label,
                             media, self.source.asr if "text" in self.source.modalities else None)
        loaded = self.source.load(record)
        given = {"text": bool(record["transcript"]), "video": bool(clip.video), "audio": bool(clip.audio)}
        example = loaded.example
        for modality in MODALITIES:
            if not given[modality]:
                example[modality] = None
        # load() words each problem "<id>: <modality>: <file>: <reason>".
        problems = [p[len(clip.id) + 2:] for p in loaded.problems]
        problems = [p for p in problems if given[p.split(": ", 1)[0]]]
        present = [m for m in self.spec.modalities if example.get(m) is not None]
        return PreparedClip(clip, to_row(example, self.spec), present, problems, loaded.notes)

    def collate(self, prepared: list[PreparedClip]) -> dict:
        """A batch of prepared clips, as the DataModule collates it."""
        return collate([p.row for p in prepared], self.spec)

