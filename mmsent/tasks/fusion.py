"""Fusing the pretrained encoders: stage 4 (frozen encoders) and stage 5 (fine-tuning)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch
from torch import nn

from mmsent.data.schema import MODALITIES
from mmsent.errors import ConfigError, check_choice
from mmsent.metrics import sentiment_metrics
from mmsent.models.config import module_config
from mmsent.models.fusion import ConcatFusion, RegressionHead
from mmsent.models.generative import ScoreMode, sample_embeddings
from mmsent.models.late_fusion import LateFusionModel
from mmsent.tasks.base import BaseTask
from mmsent.tasks.checkpoints import (
    META_KEY,
    EncoderFactory,
    build_encoders,
    encoder_config,
    load_fused,
    load_generator,
    load_head,
    modality_paths,
    read_checkpoint,
    reading_once,
)

MONITOR = "val/MAE"


class FusionTask(BaseTask):
    """Pretrained encoders, a fusion module and a head, over every modality present.

    Stage 4 freezes the encoders (kept in eval mode, so batch-norm statistics and dropout
    do not drift) and loads each from ``encoders``. Stage 5 loads the stage-4 model from
    ``init_checkpoint`` and fine-tunes it, one parameter group per modality plus
    ``fusion`` (fusion module and head). The checkpoints record the encoders, so neither
    stage names them; a model folder from ``mmsent export`` serves as a checkpoint.

    With ``generator_checkpoint``, a batch of ``B`` real samples gets
    ``round(generated_ratio * B)`` generated embedding tuples and the loss becomes
    ``loss(real) + generated_ratio * loss(generated)``: each generated sample weighs as
    much as a real one.

    Args:
        text_encoder (EncoderFactory | None): Builds the text encoder; None builds the
            one recorded in ``encoders["text"]`` or ``init_checkpoint``, which a
            configured one must agree with.
        audio_encoder (EncoderFactory | None): Builds the acoustic encoder, likewise.
        video_encoder (EncoderFactory | None): Builds the video encoder, likewise.
        encoders (dict[str, str | None] | None): Per modality, where its encoder comes
            from: a unimodal, fused or generative checkpoint, or a model folder.
        unimodal (dict[str, str | None] | None): Per modality, the unimodal checkpoint
            giving the head and the validation MAE, where it is not the one ``encoders``
            names (e.g. after a ``fixed`` refit); by default those of ``encoders``.
        init_checkpoint (str | None): A fused checkpoint (or model folder) to start
            from (stage 5).
        fusion (Callable[[dict], nn.Module]): Builds the fusion module from the
            encoders' output sizes (``ConcatFusion``, ``TensorFusion``, ``LowRankFusion``).
        head_hidden (int | None): Hidden size of the head; 0 for linear. None: that of
            the head it starts from (``init_checkpoint``'s or ``head_from``'s, else 0).
        head_from (str | None): A modality whose unimodal head the fused head starts
            from, or ``"best"``: the one with the lowest recorded validation MAE. A
            fusion taking ``primary`` (``GatedResidualFusion``) is built on it, so the
            fused model starts as that unimodal model. Ignored with ``init_checkpoint``.
        freeze_encoders (bool | list[str]): Train only the fusion module and head
            (true), every encoder too (false), or all but the listed modalities'
            encoders, which stay frozen and in eval mode (e.g. a slow 3D-CNN).
        modality_dropout (float): Probability of dropping each modality per sample.
        generator_checkpoint (str | None): A generative stage's checkpoint; needs
            ``freeze_encoders``, since its samples live in the frozen encoders' space.
        generated_ratio (float): Generated samples per real sample in training.
        generated_scores (ScoreMode): Scores the samples are conditioned on: ``"train"``
            (the batch's labels) or ``"uniform"`` (uniform in [-3, 3]).
        **kwargs: :class:`BaseTask` arguments (loss, optimizer, param_groups, ...).
    """

    @reading_once()
    def __init__(self, text_encoder: EncoderFactory | None = None,
                 audio_encoder: EncoderFactory | None = None,
                 video_encoder: EncoderFactory | None = None,
                 encoders: dict[str, str | None] | None = None, unimodal: dict[str, str | None] | None = None,
                 init_checkpoint: str | None = None,
                 fusion: Callable[[dict], nn.Module] = ConcatFusion, head_hidden: int | None = None,
                 head_from: str | None = None, freeze_encoders: bool | list[str] = True,
                 modality_dropout: float = 0.0,
                 generator_checkpoint: str | None = None, generated_ratio: float = 0.0,
                 generated_scores: ScoreMode = "train", **kwargs) -> None:
        super().__init__(**kwargs)
        self.save_plain_hyperparameters(ignore=("text_encoder", "audio_encoder", "video_encoder", "fusion"))
        factories = {"text": text_encoder, "audio": audio_encoder, "video": video_encoder}
        sources = modality_paths(encoders, "model.encoders")
        named = modality_paths(unimodal, "model.unimodal")
        built = build_encoders(factories, sources, self.input_dims, init_checkpoint)
        checkpoints = {m: named.get(m) or (sources.get(m) if _is_unimodal(sources.get(m)) else None)
                       for m in MODALITIES}
        self.head_modality = self._head_modality(head_from, list(built), checkpoints, init_checkpoint)
        fusion_module = build_fusion(fusion, {m: e.out_dim for m, e in built.items()}, self.head_modality)
        start = self._start_checkpoint(checkpoints, init_checkpoint)
        if head_hidden is None:
            recorded = read_checkpoint(*start).get("hyper_parameters", {}) if start else {}
            head_hidden = int(recorded.get("head_hidden") or 0)
        self.hparams["head_hidden"] = head_hidden  # rebuilding from the saved hyperparameters needs no file
        head = RegressionHead(fusion_module.out_dim, head_hidden)
        self.start_head(head)
        self.model = LateFusionModel(built, fusion_module, head, modality_dropout)
        if init_checkpoint:
            load_fused(self.model, *start)
        elif start:
            load_head(self.model.head, self.head_modality, *start)
        self.frozen = frozen_modalities(freeze_encoders, list(built))
        self.freeze_encoders = self.frozen == list(built)
        for modality in self.frozen:
            self.model.encoders[modality].requires_grad_(False)
        # Otherwise each encoder keeps what its own config froze (e.g. freeze_embeddings).
        self.ablation = nn.ModuleDict({m: sentiment_metrics() for m in built})
        self.generated_ratio = generated_ratio
        self.generated_scores = generated_scores
        self.generator = self._load_generator(generator_checkpoint)
        # Lightning restores each submodule's mode as found at the start of fit instead
        # of calling train(), so the frozen parts are put in eval mode here.
        self.train()
        self.param_groups()

    def _load_generator(self, path: str | None) -> nn.Module | None:
        if self.generated_ratio < 0:
            raise ValueError(f"model.generated_ratio must be >= 0, got {self.generated_ratio}")
        check_choice("model.generated_scores", self.generated_scores, ScoreMode)
        if not path:
            if self.generated_ratio > 0:
                raise ValueError("model.generated_ratio > 0 needs model.generator_checkpoint")
            return None
        if not self.freeze_encoders:
            raise ValueError("model.generator_checkpoint needs model.freeze_encoders: true; generated "
                             "embeddings live in the space of the encoders it was trained on")
        return load_generator(path, "model.generator_checkpoint", self.model.encoders)

    def _start_checkpoint(self, checkpoints: dict[str, str | None],
                          init_checkpoint: str | None) -> tuple[str, str] | None:
        """The (path, config key) the head starts from: ``init_checkpoint`` or ``head_from``'s."""
        if init_checkpoint:
            return init_checkpoint, "model.init_checkpoint"
        if self.head_modality and checkpoints[self.head_modality]:
            return checkpoints[self.head_modality], f"model.unimodal.{self.head_modality}"
        return None

    def _head_modality(self, head_from: str | None, modalities: list[str], checkpoints: dict[str, str | None],
                       init_checkpoint: str | None) -> str | None:
        if head_from not in (None, "best", *modalities):
            raise ConfigError(f"model.head_from is {head_from!r}, not 'best' nor one of the fused "
                              f"modalities {modalities}")
        if init_checkpoint:  # the fused checkpoint started from has its head
            recorded = read_checkpoint(init_checkpoint, "model.init_checkpoint").get(META_KEY, {}).get("unimodal")
            if recorded and recorded.get("head_modality"):
                return recorded["head_modality"]
        if head_from != "best":
            return head_from
        scores = {m: recorded_val_mae(path, f"model.unimodal.{m}") for m, path in checkpoints.items()
                  if path and m in modalities}
        scores = {m: score for m, score in scores.items() if score is not None}
        if not scores and any(checkpoints.values()):
            raise ConfigError(f"model.head_from is 'best', but no unimodal checkpoint records its "
                              f"validation MAE ({MONITOR} monitored by its ModelCheckpoint)")
        return min(scores, key=scores.get) if scores else None

    def train(self, mode: bool = True):
        super().train(mode)
        for modality in self.frozen:
            self.model.encoders[modality].eval()
        if self.generator is not None:
            self.generator.eval()
        return self

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model(batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        if self.generator is None or not self.generated_ratio:
            return loss
        generated_loss = self.generated_loss(batch["label"])
        self.log("train/generated_loss", generated_loss, batch_size=len(batch["label"]))
        return loss + self.generated_ratio * generated_loss

    def generated_loss(self, labels: torch.Tensor) -> torch.Tensor:
        """The loss on generated samples to add to a real batch's.

        Args:
            labels (torch.Tensor): The real batch's scores, shape ``(B,)``.

        Returns:
            torch.Tensor: The loss on ``round(generated_ratio * B)`` generated tuples.
        """
        dims = {m: e.out_dim for m, e in self.model.encoders.items()}
        embeddings, scores = sample_embeddings(self.generator, dims, labels, self.generated_ratio,
                                               self.generated_scores)
        # Generated samples get the same modality dropout as real ones.
        present = self.model.presence({f"{m}_present": torch.ones_like(scores, dtype=torch.bool) for m in dims})
        return self.loss_fn(self.model.predict_from_embeddings(embeddings, present), scores)

    def parameter_parts(self) -> dict[str, nn.Module]:
        parts = dict(self.model.encoders.items())
        parts["fusion"] = nn.ModuleList([self.model.fusion, self.model.head])
        return parts

    def test_step(self, batch: dict, batch_idx: int) -> None:
        # One pass through the encoders serves the full prediction and every ablation.
        embeddings = self.model.encode(batch)
        present = self.model.presence(batch)
        self._evaluate(batch, "test", self.model.predict_from_embeddings(embeddings, present))
        for modality, metric in self.ablation.items():
            ablated = dict(present)
            ablated[modality] = torch.zeros_like(present[modality])
            metric.update(self.model.predict_from_embeddings(embeddings, ablated), batch["label"])

    def on_test_epoch_end(self) -> None:
        full_mae = self.metrics["test"]["MAE"].compute()
        super().on_test_epoch_end()
        for modality, metric in self.ablation.items():
            without = metric.compute()
            metric.reset()
            self.log_gathered(f"test/without_{modality}/MAE", without["MAE"])
            self.log_gathered(f"test/without_{modality}/Corr", without["Corr"])
            self.log_gathered(f"test/contribution/{modality}", float(without["MAE"]) - float(full_mae))

    def checkpoint_meta(self) -> dict:
        return {"task": "fusion", "encoder_configs": {m: encoder_config(e) for m, e in self.model.encoders.items()},
                "unimodal": {"head_modality": self.head_modality},
                "fusion_config": module_config(self.model.fusion), "head_config": module_config(self.model.head)}


def _is_unimodal(path: str | None) -> bool:
    return bool(path) and read_checkpoint(path, "model.encoders").get(META_KEY, {}).get("task") in (None, "unimodal")


def frozen_modalities(freeze_encoders: bool | list[str], modalities: list[str]) -> list[str]:
    """The modalities whose encoders a fused stage keeps frozen.

    A modality the data lacks may be named, so one config serves datasets with and without it.

    Args:
        freeze_encoders (bool | list[str]): All, none, or the named modalities.
        modalities (list[str]): The fused model's modalities.

    Returns:
        list[str]: The frozen ones, in the model's order.

    Raises:
        ConfigError: If a name is not a modality at all.
    """
    if isinstance(freeze_encoders, bool):
        return list(modalities) if freeze_encoders else []
    unknown = sorted(set(freeze_encoders) - set(MODALITIES))
    if unknown:
        raise ConfigError(f"model.freeze_encoders names {unknown}, not among the modalities {list(MODALITIES)}")
    return [m for m in modalities if m in freeze_encoders]


def build_fusion(factory: Callable[..., nn.Module], dims: dict[str, int], primary: str | None) -> nn.Module:
    """Builds the fusion module, on ``primary`` when it takes a ``primary`` argument.

    Args:
        factory (Callable[..., nn.Module]): The configured fusion.
        dims (dict[str, int]): Embedding size per modality.
        primary (str | None): The modality the head comes from.

    Returns:
        nn.Module: The fusion module.
    """
    if primary is not None and takes_primary(factory):
        return factory(dims, primary=primary)
    return factory(dims)


def takes_primary(factory: Callable[..., nn.Module]) -> bool:
    """Whether a fusion factory takes a ``primary`` argument.

    Args:
        factory (Callable[..., nn.Module]): A class, or jsonargparse's partial of one.

    Returns:
        bool: True when ``primary`` can be passed.
    """
    if isinstance(factory, functools.partial) and "primary" in factory.keywords:
        return True
    target = factory.func if isinstance(factory, functools.partial) else factory
    try:
        return "primary" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


def recorded_val_mae(path: str, what: str) -> float | None:
    """The best validation MAE a stage's checkpoint records in its ``ModelCheckpoint`` state.

    Args:
        path (str): A checkpoint.
        what (str): The config key that named it, for messages.

    Returns:
        float | None: The score, or None when no checkpoint callback monitored ``val/MAE``.
    """
    for key, state in read_checkpoint(path, what).get("callbacks", {}).items():
        score = state.get("best_model_score") if isinstance(state, dict) else None
        if key.startswith("ModelCheckpoint") and state.get("monitor") == MONITOR and score is not None:
            return float(score)
    return None
