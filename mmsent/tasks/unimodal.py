"""Pretraining one encoder alone on the sentiment target."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from mmsent.data.schema import MODALITIES
from mmsent.models.fusion import RegressionHead
from mmsent.tasks.base import BaseTask
from mmsent.tasks.checkpoints import encoder_config


class UnimodalTask(BaseTask):
    """An encoder and a regression head, trained on one modality.

    Args:
        modality (str): ``"text"``, ``"audio"`` or ``"video"``.
        encoder (Callable[[int], nn.Module]): Builds the encoder from its input size
            (in YAML: a ``class_path`` and ``init_args`` without ``input_dim``).
        head_hidden (int): Hidden size of the head; 0 for linear.
        head_dropout (float): Dropout in the head.
        **kwargs: :class:`BaseTask` arguments (loss, optimizer, ...).
    """

    def __init__(self, modality: str, encoder: Callable[[int], nn.Module], head_hidden: int = 0,
                 head_dropout: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        if modality not in MODALITIES:
            raise ValueError(f"model.modality must be one of {MODALITIES}, got {modality!r}")
        if modality not in self.input_dims:
            raise ValueError(f"model.modality is {modality!r} but the data holds only "
                             f"{sorted(self.input_dims)}")
        self.save_plain_hyperparameters(ignore=("encoder",))
        self.modality = modality
        self.encoder = encoder(self.input_dims[modality])
        self.head = RegressionHead(self.encoder.out_dim, head_hidden, head_dropout)
        self.start_head(self.head)
        self.param_groups()

    def forward(self, batch: dict):
        m = self.modality
        return self.head(self.encoder(batch[m], batch[f"{m}_mask"]))

    def parameter_parts(self) -> dict[str, nn.Module]:
        return {self.modality: self.encoder, "head": self.head}

    def checkpoint_meta(self) -> dict:
        return {"task": "unimodal", "modality": self.modality,
                "encoder_config": encoder_config(self.encoder), "encoder_prefix": "encoder."}
