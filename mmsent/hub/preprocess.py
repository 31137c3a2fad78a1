"""Raw clips to model inputs, through the code that prepared the training data.

A model folder records every setting of that preparation (:func:`preprocessing_settings`);
:class:`Preprocessor` rebuilds the same :class:`~mmsent.data.RawClipSource` from them
and runs its per-clip ``load``, :func:`~mmsent.data.cache.to_row` and the
DataModule's :func:`~mmsent.data.datamodule.collate`, so a clip scored from its files
gets exactly the tensors it had in training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from mmsent.data.cache import to_row
from mmsent.data.datamodule import collate
from mmsent.data.schema import MODALITIES, DatasetSpec
from mmsent.data.sources import RawClipSource
from mmsent.errors import ConfigError, MissingFileError

TOKENIZER_FILE = "tokenizer.json"
WORD_TOKENIZER = "word"


@dataclass
class Clip:
    """One clip to score: any of its three inputs may be missing.

    Attributes:
        id (str): What the output calls it.
        video (str | None): The video file.
        audio (str | None): The audio file (a WAV, or a video whose track to use).
        text (str | None): What is said in it.
        label (float | None): Its true score, when known.
    """

    id: str
    video: str | None = None
    audio: str | None = None
    text: str | None = None
    label: float | None = None


@dataclass
class PreparedClip:
    """A clip's model inputs and what could not be read.

    Attributes:
        clip (Clip): The clip.
        row (dict): Its prepared example (:func:`~mmsent.data.cache.to_row`).
        present (list[str]): The modalities read.
        problems (list[str]): One line per input that was given but could not be read.
    """

    clip: Clip
    row: dict
    present: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def preprocessing_settings(source: RawClipSource, spec: DatasetSpec) -> dict:
    """Every setting that turns raw files into the model's inputs, for ``config.json``.

    Args:
        source (RawClipSource): The training data's source, its tokenizer fitted.
        spec (DatasetSpec): What its prepared examples hold.

    Returns:
        dict: The settings, as plain data.

    Raises:
        ConfigError: If the text input is frozen language-model states, which are
            computed per dataset, not per clip.
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
                  "sampling": "frames evenly spaced over the whole clip, scaled to frame_size x frame_size "
                              "RGB while decoding, then to [-1, 1]"},
        "audio": {"source": "the .wav of the same name beside the video, else the video's own audio track",
                  "sample_rate": source.sample_rate, "features": "log-mel filterbank energies",
                  "n_mels": source.n_mels, "window_ms": 25.0, "hop_ms": 10.0,
                  "max_frames": source.max_audio_frames,
                  "normalization": "none in preprocessing: the acoustic encoder standardizes its pooled "
                                   "statistics with its batch norm, whose training statistics are "
                                   "in model.safetensors"},
    }


class Preprocessor:
    """Turns raw clips into collated batches, as the training data was prepared.

    Args:
        settings (dict): The model folder's ``preprocessing`` settings.
        folder (str | Path | None): The model folder (for a word-level tokenizer's file).

    Raises:
        MissingFileError: If a word-level tokenizer's file is missing.
        ConfigError: If the tokenizer found here is not the one the model was trained with.
    """

    def __init__(self, settings: dict, folder: str | Path | None = None) -> None:
        text, video, audio = settings["text"], settings["video"], settings["audio"]
        self.spec = DatasetSpec(**settings["spec"])
        self.source = RawClipSource(".", video_ext=video["container"], modalities=settings["modalities"],
                                    frames=video["frames"], frame_size=video["frame_size"],
                                    sample_rate=audio["sample_rate"], n_mels=audio["n_mels"],
                                    max_audio_frames=audio["max_frames"], tokenizer=text["tokenizer"],
                                    max_text_length=text["max_length"])
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
            clip (Clip): The clip.

        Returns:
            PreparedClip: Its example; an input that was given but could not be read
            (an unreadable video, a video without an audio track) is left out and
            named in ``problems``; an empty transcript counts as no text.
        """
        transcript = (clip.text or "").strip()
        record = {"id": clip.id, "split": "test", "transcript": transcript,
                  "label": float("nan") if clip.label is None else clip.label,
                  "clean_label": float("nan"), "video_path": clip.video or "", "audio_path": clip.audio or ""}
        loaded = self.source.load(record)
        given = {"text": bool(transcript), "video": bool(clip.video), "audio": bool(clip.audio)}
        example = loaded.example
        for modality in MODALITIES:
            if not given[modality]:
                example[modality] = None
        # load() words each problem "<id>: <modality>: <file>: <reason>".
        problems = [p[len(clip.id) + 2:] for p in loaded.problems]
        problems = [p for p in problems if given[p.split(": ", 1)[0]]]
        present = [m for m in self.spec.modalities if example.get(m) is not None]
        return PreparedClip(clip, to_row(example, self.spec), present, problems)

    def collate(self, prepared: list[PreparedClip]) -> dict:
        """dict: A batch of prepared clips, as the DataModule collates it."""
        return collate([p.row for p in prepared], self.spec)

