"""MMSA's processed feature pickles (aligned or unaligned) of CMU-MOSI, MOSEI and CH-SIMS.

The keys and shapes are listed in the Data guide. In the aligned pickles every
sequence follows the words, so the text length applies to all three modalities.
Unpickling can run arbitrary code, so load only pickles you trust; the cache converts
a pickle once, and later runs never unpickle it again.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Literal

import numpy as np

from mmsent.data.features import FeatureData, FeatureSource
from mmsent.data.schema import ID_SEPARATOR, SPLITS, check_label, scale_label
from mmsent.errors import check_choice
from mmsent.io import file_signature

log = logging.getLogger(__name__)

TextMode = Literal["vectors", "bert_ids", "transcript"]
MODALITY_KEYS = {"audio": "audio", "video": "vision"}


def load_pickle(path: Path) -> dict:
    """Unpickles an MMSA feature file, warning that this can run code.

    Args:
        path (Path): The ``.pkl`` file.

    Returns:
        dict: The splits.

    Raises:
        FileNotFoundError: If the file is missing.
        ValueError: If it does not hold MMSA's ``train``/``valid``/``test`` dict.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MMSA feature pickle not found")
    log.warning("loading the pickle %s: unpickling can execute arbitrary code, so only load "
                "files from a source you trust. It is converted once into the Arrow cache; "
                "later runs read the cache and do not unpickle it again.", path)
    with path.open("rb") as handle:
        data = pickle.load(handle)
    if not isinstance(data, dict) or any(split not in data for split in SPLITS):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: expected a dict with splits {SPLITS}, got {keys}")
    return data


def text_lengths(split: dict) -> np.ndarray | None:
    """Returns the word pieces per sample, ``int (N,)``, of one ``split`` of the pickle, from
    ``text_bert``'s attention mask; None without ``text_bert``."""
    bert = split.get("text_bert")
    if bert is None:
        return None
    return np.asarray(bert)[:, 1, :].sum(-1).astype(int)


def real_steps(sequence: np.ndarray, length: int | None = None) -> np.ndarray:
    """The real steps of a zero-padded sequence, padded at the end or at the front.

    Args:
        sequence (np.ndarray): ``(T, D)`` (or ``(T,)`` ids).
        length (int | None): The recorded number of real steps, if the pickle has it.

    Returns:
        np.ndarray: With ``length``, that many steps from the end that is not padded;
        without, the steps from the first non-zero step to the last.
    """
    steps = sequence.reshape(len(sequence), -1)
    nonzero = np.flatnonzero(np.any(steps != 0, axis=-1))
    if length is not None:
        front_padded = length < len(sequence) and nonzero.size and nonzero[0] > 0
        return sequence[len(sequence) - length:] if front_padded else sequence[:length]
    if not nonzero.size:
        return sequence[:0]
    return sequence[nonzero[0]: nonzero[-1] + 1]


class MMSAPickleSource(FeatureSource):
    """MMSA's processed features (aligned or unaligned) from one pickle.

    Args:
        path (str): The pickle, e.g. ``.../MOSI/Processed/unaligned_50.pkl``.
        modalities (list[str] | None): Which of text, audio, video to prepare; None: those held.
        text (TextMode | None): The ``text`` array, ``text_bert``'s ids, or ``raw_text`` tokenized;
            None: ``"transcript"`` with ``text_features``, else ``"vectors"``.
        vocab_size (int): Vocabulary size of ``text_bert`` ids (BERT base: 30522).
        standardize (bool): Scale audio and vision with training statistics (MMSA's models do not).
        label_scale (list[float] | None): The scores' ``[low, high]``, mapped onto [-3, 3].
        **kwargs: :class:`FeatureSource` options.
    """

    name = "mmsa"

    def __init__(self, path: str, modalities: list[str] | None = None, text: TextMode | None = None,
                 vocab_size: int = 30522, standardize: bool = False, label_scale: list[float] | None = None,
                 **kwargs) -> None:
        super().__init__(modalities=modalities, standardize=standardize, **kwargs)
        # None: resolved against the pickle when it is read; the fingerprint keeps the request.
        self.held_modalities = modalities is None
        self.requested_modalities = list(self.modalities)
        if label_scale is not None and (len(label_scale) != 2 or not label_scale[0] < label_scale[1]):
            raise ValueError(f"label_scale must be [low, high] with low < high, got {label_scale}")
        self.label_scale = tuple(float(v) for v in label_scale) if label_scale is not None else None
        if text is None:
            text = "transcript" if self.text.states is not None else "vectors"
        check_choice("text", text, TextMode)
        if self.text.states is not None and text != "transcript":
            raise ValueError(f"text_features computes text from the transcripts; it cannot be "
                             f"combined with text: {text}")
        self.path = Path(path)
        self.text_mode = text
        self.vocab_size = vocab_size

    def fingerprint(self) -> dict:
        return {"path": str(self.path.resolve()), "file": file_signature([self.path]),
                "text_mode": self.text_mode, "vocab_size": self.vocab_size, "label_scale": self.label_scale,
                **self.settings(),
                "modalities": "held by the pickle" if self.held_modalities else self.requested_modalities}

    def read(self) -> FeatureData:
        data = load_pickle(self.path)
        if self.held_modalities:
            self.modalities = self._held(data)
        clips, features = [], {m: {} for m in self.modalities
                               if m != "text" or self.text_mode != "transcript"}
        dims: dict[str, tuple[int, str]] = {}
        seen: set[str] = set()
        for split in SPLITS:
            part = data[split]
            ids = self._split_ids(part, split, seen)
            clips += self._clips(part, split, ids)
            for modality, found in features.items():
                values = self._modality(part, split, modality, ids)
                self._check_dims(values, modality, split, dims)
                found.update(values)
        files = {m: str(self.path) for m in self.modalities}
        text = None
        if "text" in features:
            text = ("tokens", self.vocab_size, 0) if self.text_mode == "bert_ids" else \
                ("vectors", dims["text"][0], 0)
        return FeatureData(clips, features, files, text=text)

    def _held(self, data: dict) -> list[str]:
        """The requested modalities whose arrays every split holds; raises if none is held."""
        held = [m for m in self.requested_modalities
                if (m == "text" and self.text_mode == "transcript")
                or all(self._key(m) in data[split] for split in SPLITS)]
        if not held:
            raise ValueError(f"{self.path}: holds none of the arrays {[self._key(m) for m in self.requested_modalities]}; "
                             f"the train split has {sorted(data['train'])}")
        lacking = [m for m in self.requested_modalities if m not in held]
        if lacking:
            log.warning("%s holds no %s: preparing %s only", self.path,
                        " nor ".join(repr(self._key(m)) for m in lacking), "+".join(held))
        return held

    def _split_ids(self, part: dict, split: str, seen: set[str]) -> list[str]:
        where = f"{self.path} [{split}]"
        for key in ("id", "regression_labels", "raw_text"):
            if key not in part:
                raise ValueError(f"{where}: missing key {key!r}; the split has {sorted(part)}")
        ids = [_as_str(i) for i in part["id"]]
        for key in ("regression_labels", "raw_text"):
            if len(part[key]) != len(ids):
                raise ValueError(f"{where}: {key} holds {len(part[key])} entries for {len(ids)} ids")
        for index, clip in enumerate(ids):
            if ID_SEPARATOR not in clip:
                raise ValueError(f"{where} row {index}: id {clip!r} is not of the form "
                                 f"<video_id>{ID_SEPARATOR}<clip_id>")
            if clip in seen:
                raise ValueError(f"{where}: duplicate id {clip!r} at row {index}")
            seen.add(clip)
        return ids

    def _clips(self, part: dict, split: str, ids: list[str]) -> list[dict]:
        labels = np.asarray(part["regression_labels"], dtype=np.float64).reshape(len(ids), -1)[:, 0]
        scaled = f" (label_scale {list(self.label_scale)} applied)" if self.label_scale else ""
        return [{"id": clip, "split": split, "transcript": _as_str(part["raw_text"][i]),
                 "label": check_label(scale_label(labels[i], self.label_scale),
                                      f"{self.path} [{split}] row {i} ({clip}){scaled}")}
                for i, clip in enumerate(ids)]

    def _modality(self, part: dict, split: str, modality: str, ids: list[str]) -> dict:
        key = self._key(modality)
        if key not in part:
            raise ValueError(f"{self.path} [{split}]: no {key!r} array for the {modality} "
                             f"modality; the split has {sorted(part)}")
        array = np.asarray(part[key])
        if len(array) != len(ids):
            raise ValueError(f"{self.path} [{split}]: {key} holds {len(array)} samples for {len(ids)} ids")
        lengths = self._lengths(part, modality)
        values = {}
        for index, clip in enumerate(ids):
            sample = array[index][0] if key == "text_bert" else array[index]
            sample = real_steps(sample, None if lengths is None else lengths[index])
            if len(sample):
                values[clip] = sample.astype(np.int64 if key == "text_bert" else np.float32)
        if key == "text_bert":
            self._check_ids(values, split)
        return values

    def _key(self, modality: str) -> str:
        if modality == "text":
            return "text_bert" if self.text_mode == "bert_ids" else "text"
        return MODALITY_KEYS[modality]

    def _lengths(self, part: dict, modality: str) -> list[int] | None:
        words = text_lengths(part)
        own = part.get(f"{MODALITY_KEYS.get(modality, '')}_lengths")
        if own is not None:
            return [int(n) for n in own]
        array = part[self._key(modality)]
        steps = np.shape(array)[-1] if self._key(modality) == "text_bert" else np.shape(array)[1]
        if words is not None and (modality == "text" or steps == part["text_bert"].shape[-1]):
            return [int(n) for n in words]
        return None

    def _check_ids(self, values: dict, split: str) -> None:
        for clip, ids in values.items():
            if ids.min() < 0 or ids.max() >= self.vocab_size:
                raise ValueError(f"{self.path} [{split}] {clip}: text_bert id {int(ids.max())} is "
                                 f"outside the vocabulary of {self.vocab_size} (set vocab_size)")

    def _check_dims(self, values: dict, modality: str, split: str, dims: dict) -> None:
        if not values or self._key(modality) == "text_bert":
            return
        clip, sample = next(iter(values.items()))
        if sample.ndim != 2:
            raise ValueError(f"{self.path} [{split}] {clip}: {modality} should be (steps, features), "
                             f"got shape {sample.shape}")
        first = dims.setdefault(modality, (sample.shape[1], split))
        if sample.shape[1] != first[0]:
            raise ValueError(f"{self.path} [{split}] {clip}: {modality} has {sample.shape[1]} "
                             f"features, but split {first[1]!r} has {first[0]}")


def _as_str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
