"""Pretraining one encoder alone on the sentiment target."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mmsent.data.schema import Modality
from mmsent.errors import ConfigError, check_choice
from mmsent.models.fusion import RegressionHead
from mmsent.tasks.base import BaseTask
from mmsent.tasks.checkpoints import encoder_config, load_unimodal, modality_paths


class UnimodalTask(BaseTask):
    """An encoder and a regression head, trained on one modality.

    With ``fixed``, the stage refits its modality on what other modalities' stages leave
    unexplained (one backfitting step of an additive model): their frozen predictions are
    added to this model's, so the loss, metrics and ``predictions.csv`` are the sum's.

    Args:
        modality (Modality): ``"text"``, ``"audio"`` or ``"video"``.
        encoder (Callable[[int], nn.Module]): Builds the encoder from its input size
            (in YAML: a ``class_path`` and ``init_args`` without ``input_dim``).
        head_hidden (int): Hidden size of the head; 0 for linear.
        head_dropout (float): Dropout in the head.
        fixed (dict[str, str | None] | None): Per other modality, a unimodal stage's
            checkpoint whose predictions are held fixed and added.
        **kwargs: :class:`BaseTask` arguments (loss, optimizer, ...).
    """

    def __init__(self, modality: Modality, encoder: Callable[[int], nn.Module], head_hidden: int = 0,
                 head_dropout: float = 0.0, fixed: dict[str, str | None] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        check_choice("model.modality", modality, Modality)
        if modality not in self.input_dims:
            raise ValueError(f"model.modality is {modality!r} but the data holds only "
                             f"{sorted(self.input_dims)}")
        self.save_plain_hyperparameters(ignore=("encoder",))
        self.modality = modality
        self.encoder = encoder(self.input_dims[modality])
        self.head = RegressionHead(self.encoder.out_dim, head_hidden, head_dropout)
        self.start_head(self.head)
        self.fixed = self._load_fixed(modality_paths(fixed, "model.fixed"))
        self.param_groups()

    def _load_fixed(self, paths: dict[str, str]) -> nn.ModuleDict:
        fixed = nn.ModuleDict()
        for name, path in paths.items():
            key = f"model.fixed.{name}"
            if name == self.modality:
                raise ConfigError(f"{key} is set, but this stage trains the {name} model itself; "
                                  "fix only other modalities' stages")
            fixed[name] = load_unimodal(path, key, self.input_dims)
            if fixed[name].modality != name:
                raise ConfigError(f"{key}: {path} holds a {fixed[name].modality} model, not a {name} one")
        return fixed

    def train(self, mode: bool = True):
        # Lightning restores each submodule's mode as found at the start of fit instead
        # of calling train(), so the fixed models are put back in eval mode here.
        super().train(mode)
        self.fixed.eval()
        return self

    def own_prediction(self, batch: dict) -> torch.Tensor:
        """This stage's model alone, without the fixed predictions.

        Args:
            batch (dict): A dict batch.

        Returns:
            torch.Tensor: Shape ``(B,)``.
        """
        m = self.modality
        return self.head(self.encoder(batch[m], batch[f"{m}_mask"]))

    def fixed_prediction(self, batch: dict) -> torch.Tensor | float:
        """The sum of the fixed models' predictions.

        Args:
            batch (dict): A dict batch.

        Returns:
            torch.Tensor | float: Shape ``(B,)``, or 0.0 without any.
        """
        total = 0.0
        with torch.no_grad():
            for name, model in self.fixed.items():
                added = model(batch)
                total = total + torch.where(batch[f"{name}_present"].bool(), added, torch.zeros_like(added))
        return total

    def forward(self, batch: dict) -> torch.Tensor:
        return self.own_prediction(batch) + self.fixed_prediction(batch)

    def predictions(self, batch: dict) -> dict[str, torch.Tensor]:
        if not len(self.fixed):
            return super().predictions(batch)
        own = self.own_prediction(batch).detach()
        return {"prediction": own + self.fixed_prediction(batch), "own_prediction": own}

    def parameter_parts(self) -> dict[str, nn.Module]:
        return {self.modality: self.encoder, "head": self.head}

    def checkpoint_meta(self) -> dict:
        return {"task": "unimodal", "modality": self.modality,
                "encoder_config": encoder_config(self.encoder), "encoder_prefix": "encoder.",
                **({"fixed": sorted(self.fixed)} if len(self.fixed) else {})}
