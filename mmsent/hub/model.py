"""The fused model as a self-contained folder: ``SentimentModel.from_pretrained(folder)``.

The folder is the Hugging Face layout (``config.json``, ``model.safetensors``,
``README.md``), so it loads from a local path or, pushed with ``push_to_hub``, from the Hub
by name. ``config.json`` holds how to build every network, the modalities in use, and every
preprocessing setting (``mmsent.hub.preprocess``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmsent.data.clip_files import media_for_file
from mmsent.data.schema import MODALITIES
from mmsent.errors import ConfigError, MissingFileError
from mmsent.hub.preprocess import Clip, PreparedClip, Preprocessor
from mmsent.io import read_json
from mmsent.models.config import (
    HubMixin,
    build_module,
    check_saved_config,
    load_strict,
    registered_class,
    save_weights,
)
from mmsent.models.late_fusion import LateFusionModel
from mmsent.pretrained import hub_offline_reason, looks_like_path

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def class_labels(score: float) -> dict[str, int | str]:
    """The field's 2-, 5- and 7-class labels of a score (MMSA's conventions).

    Args:
        score: A sentiment score.

    Returns:
        ``label_2`` (``positive`` for ``>= 0``, as ``Has0_acc_2``), ``label_5`` and ``label_7``
            (rounded after clipping to [-2, 2] and [-3, 3]).
    """
    return {"label_2": "positive" if score >= 0 else "negative",
            "label_5": int(np.round(np.clip(score, -2.0, 2.0))),
            "label_7": int(np.round(np.clip(score, -3.0, 3.0)))}


class SentimentModel(nn.Module, HubMixin, tags=["mmsent", "multimodal-sentiment-analysis"]):
    """A fused sentiment model with its preprocessing, built from a model folder's config.

    Args:
        config: ``format_version``, ``encoders`` (per modality a ``{"class_path", "init_args"}``
            record), ``fusion``, ``head``, ``active_modalities`` and ``preprocessing``.

    Raises:
        ConfigError: If the config is of another format version or lacks a key.
    """

    def __init__(self, config: dict) -> None:
        super().__init__()
        check_config(config, "config")
        encoders = nn.ModuleDict({m: build_module(config["encoders"][m], what=f"encoders.{m}")
                                  for m in MODALITIES if m in config["encoders"]})
        self.model = LateFusionModel(encoders, build_module(config["fusion"], what="fusion"),
                                     build_module(config["head"], what="head"))
        for modality in encoders:
            if modality not in config["active_modalities"]:
                self.model.switch_off(modality)
        self.folder: str | None = None
        self._preprocessor: Preprocessor | None = None
        self.eval()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, revision: str | None = None,
                        cache_dir: str | Path | None = None, force_download: bool = False,
                        token: str | bool | None = None, local_files_only: bool = False,
                        map_location: str = "cpu") -> SentimentModel:
        """Loads a model folder, or a Hub repository by name; nothing in it is run.

        The networks ``config.json`` names are built only from mmsent's registry (a class outside
        it is refused); ``model.safetensors`` must hold exactly their tensors, all finite. An
        argument that looks like a path is never sent to the Hub.

        Args:
            pretrained_model_name_or_path: The folder or Hub repository id.
            revision: For a Hub repository: the revision, as ``snapshot_download`` takes it.
            cache_dir: For a Hub repository: where to keep its files.
            force_download: For a Hub repository: fetch it again.
            token: For a Hub repository: the access token.
            local_files_only: For a Hub repository: use the cached files only.
            map_location: The device to load onto.

        Returns:
            The model, in eval mode.

        Raises:
            MissingFileError: If the folder or one of its files is missing, or a Hub repository
                cannot be fetched (offline), naming it.
            ConfigError: If ``config.json`` is unreadable, of another format version, names an
                unregistered class or disagrees with the weights, or the weights do not fit;
                naming the file and the key or tensors.
        """
        folder = model_folder(str(pretrained_model_name_or_path), revision=revision, cache_dir=cache_dir,
                              force_download=force_download, token=token, local_files_only=local_files_only)
        missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
        if missing:
            raise MissingFileError(f"{folder}: not a complete model folder, missing {', '.join(missing)}")
        config_file = folder / CONFIG_FILE
        config = read_config(config_file)
        for key, record in network_records(config):
            if not isinstance(record, dict):
                raise ConfigError(f"{config_file}: {key} must be a mapping with class_path and init_args")
            registered_class(record.get("class_path"), f"{config_file}: {key}.class_path")
        check_saved_config(folder / WEIGHTS_FILE, config)
        try:
            model = cls(config)
        except ConfigError as error:
            raise ConfigError(f"{config_file}: {error}") from error
        load_strict(model, folder / WEIGHTS_FILE)
        if model.modalities != [m for m in model.encoders if m in config["active_modalities"]]:
            raise ConfigError(f"{config_file}: active_modalities {config['active_modalities']} disagrees with "
                              f"the modalities {model.modalities} that {WEIGHTS_FILE} switches on")
        model.folder = str(folder)
        return model.to(map_location).eval()

    def _save_pretrained(self, save_directory: Path) -> None:
        save_weights(self, Path(save_directory) / WEIGHTS_FILE, self.config)
        (Path(save_directory) / CONFIG_FILE).write_text(json.dumps(self.config, indent=2))

    @property
    def modalities(self) -> list[str]:
        """The modalities the model uses."""
        return self.model.active_modalities

    @property
    def encoders(self) -> nn.ModuleDict:
        """The encoder of each modality."""
        return self.model.encoders

    @property
    def preprocessor(self) -> Preprocessor:
        """Raw files to inputs, built on first use."""
        if self._preprocessor is None:
            self._preprocessor = Preprocessor(self.config["preprocessing"], self.folder)
        return self._preprocessor

    def forward(self, batch: dict) -> torch.Tensor:
        """Scores a collated batch (as the DataModule serves them).

        Args:
            batch: The batch.

        Returns:
            Scores, shape ``(B,)``.
        """
        return self.model(batch)

    @torch.no_grad()
    def score_batch(self, batch: dict) -> dict[str, torch.Tensor]:
        """The fused score and each modality's own score of a collated batch.

        A modality's own score is the fused model's with only that modality present (the others
        enter as absent, as modality dropout trained it to handle).

        Args:
            batch: The batch.

        Returns:
            ``score`` and ``score_<modality>`` per modality in use, shape ``(B,)``; NaN where the
                sample lacks that modality.
        """
        embeddings = self.model.encode(batch)
        present = self.model.presence(batch)
        scores = {"score": self.model.predict_from_embeddings(embeddings, present)}
        for modality in self.modalities:
            alone = {m: torch.zeros_like(p) if m != modality else p for m, p in present.items()}
            own = self.model.predict_from_embeddings(embeddings, alone)
            scores[f"score_{modality}"] = torch.where(present[modality], own, torch.full_like(own, math.nan))
        return scores

    def score_clips(self, clips: Iterable[Clip], batch_size: int = 32) -> Iterator[dict]:
        """Scores clips from their files, a batch at a time (bounded memory).

        Args:
            clips: The clips.
            batch_size: Clips per forward pass.

        Yields:
            Per clip: ``id``, the scores and class labels as ``predict`` gives them, and
                ``label``; a clip with nothing readable gets ``score`` None.
        """
        pending: list[PreparedClip] = []
        for clip in clips:
            pending.append(self.preprocessor.prepare(clip))
            if len(pending) == batch_size:
                yield from self._score_prepared(pending)
                pending = []
        if pending:
            yield from self._score_prepared(pending)

    def _score_prepared(self, prepared: list[PreparedClip]) -> Iterator[dict]:
        usable = [p for p in prepared if set(p.present) & set(self.modalities)]
        scores = self.score_batch(self.preprocessor.collate(usable)) if usable else {}
        index, scored = 0, {id(p) for p in usable}
        for item in prepared:
            result = {"id": item.clip.id, "score": None, "modalities": item.present,
                      "problems": item.problems, "label": item.clip.label}
            if id(item) in scored:
                for name, values in scores.items():
                    value = float(values[index])
                    result[name] = None if math.isnan(value) else value
                result.update(class_labels(result["score"]))
                index += 1
            yield result

    def predict(self, video: str | list[str | None] | None = None, audio: str | list[str | None] | None = None,
                text: str | list[str | None] | None = None, batch_size: int = 32) -> dict | list[dict]:
        """Scores one clip or a list of clips from raw inputs.

        Args:
            video: The video file(s).
            audio: The audio file(s); by default an audio file of the video's name beside it, else
                its own audio track.
            text: What is said in each clip; when empty, the cues of an ``.srt``/``.vtt`` of the
                video's name beside it.
            batch_size: Clips per forward pass.

        Returns:
            Per clip (a list when lists were given): ``score``, ``score_<modality>``, the
                2-/5-/7-class labels, ``modalities`` (the ones used) and ``problems`` (inputs given
                but unreadable).

        Raises:
            ValueError: If the lists differ in length or no input is given.
        """
        inputs = {"video": video, "audio": audio, "text": text}
        many = any(isinstance(v, list | tuple) for v in inputs.values())
        lists = {k: list(v) if isinstance(v, list | tuple) else v for k, v in inputs.items()}
        count = max((len(v) for v in lists.values() if isinstance(v, list)), default=1)
        for name, value in lists.items():
            if not isinstance(value, list):
                lists[name] = [value] * count
            elif len(value) != count:
                raise ValueError(f"predict: {name} has {len(value)} entries, another input {count}")
        if all(v is None for values in lists.values() for v in values):
            raise ValueError("predict: give at least one of video, audio, text")
        found = [media_for_file(v) if v else None for v in lists["video"]]
        clips = [Clip(id=str(i), video=lists["video"][i], text=lists["text"][i],
                      audio=lists["audio"][i] or (str(found[i].audio) if found[i] else None),
                      subtitle=str(found[i].subtitle) if found[i] and found[i].subtitle else None)
                 for i in range(count)]
        results = [{k: v for k, v in r.items() if k not in ("id", "label")}
                   for r in self.score_clips(clips, batch_size)]
        return results if many else results[0]


def model_folder(name: str, **download) -> Path:
    """The local folder of a model argument: the folder itself, or the Hub repository's snapshot.

    Args:
        name: A folder, or a Hub repository id.
        **download: Passed to ``huggingface_hub.snapshot_download``.

    Returns:
        The folder.

    Raises:
        MissingFileError: If a path does not exist (it is never sent to the Hub), or a Hub id
            cannot be fetched, saying why.
    """
    if looks_like_path(name):
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise MissingFileError(f"{name}: no such model folder (a path, so not looked up on the "
                                   f"Hugging Face Hub)")
        return folder
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    reason = None if download.get("local_files_only") else hub_offline_reason()
    try:
        return Path(snapshot_download(name, **{**download, "local_files_only": bool(reason) or
                                               download.get("local_files_only", False)}))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as error:
        where = f"no folder {name} here, and the Hugging Face Hub"
        if reason:
            raise MissingFileError(f"{name}: {where} cannot be asked ({reason}), with no cached copy") from None
        raise MissingFileError(f"{name}: {where} did not give it ({type(error).__name__}: "
                               f"{str(error).strip().splitlines()[0] if str(error).strip() else ''})") from None


def network_records(config: dict) -> list[tuple[str, object]]:
    """Each ``{"class_path", "init_args"}`` record of a model config, with its key."""
    return [*((f"encoders.{m}", record) for m, record in config["encoders"].items()),
            ("fusion", config["fusion"]), ("head", config["head"])]


def read_config(path: Path) -> dict:
    """Reads and checks a model folder's ``config.json``.

    Args:
        path: The file.

    Returns:
        The config.

    Raises:
        ConfigError: If it is not JSON, not an object, or fails ``check_config``.
    """
    config = read_json(path)
    check_config(config, str(path))
    return config


def check_config(config: dict, where: str) -> None:
    """Checks a model config's format version and keys.

    Args:
        config: The config.
        where: Its file, for messages.

    Raises:
        ConfigError: If it is of another format version or lacks a key, naming it.
    """
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(config).__name__}")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise ConfigError(f"{where}: model format version {version!r}; this mmsent reads version "
                          f"{FORMAT_VERSION} (export the model again with this version)")
    missing = [key for key in ("encoders", "fusion", "head", "active_modalities", "preprocessing")
               if key not in config]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    for key, kind in (("encoders", dict), ("fusion", dict), ("head", dict), ("active_modalities", list),
                      ("preprocessing", dict)):
        if not isinstance(config[key], kind):
            raise ConfigError(f"{where}: {key} must be a {'mapping' if kind is dict else 'list'}, "
                              f"got {json.dumps(config[key])[:80]}")
    unknown = [m for m in config["encoders"] if m not in MODALITIES]
    if unknown:
        raise ConfigError(f"{where}: encoders.{unknown[0]} is not a modality; modalities: {list(MODALITIES)}")
    active = config["active_modalities"]
    if not active or not all(isinstance(m, str) and m in config["encoders"] for m in active):
        raise ConfigError(f"{where}: active_modalities must name one or more of the encoders "
                          f"{list(config['encoders'])}, got {json.dumps(active)[:80]}")
