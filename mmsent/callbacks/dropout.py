"""Callback that redraws epoch-mode dropout masks."""

from __future__ import annotations

import pytorch_lightning as pl

from mmsent.models.dropout import resample_epoch_masks


class EpochDropoutCallback(pl.Callback):
    """Redraws every epoch-mode dropout mask at each training epoch's start.

    ``dropout_kind: bernoulli_epoch`` needs it: such a layer refuses to train otherwise.

    Attributes:
        last_count (int): How many layers were reset at the last epoch start.
    """

    def __init__(self) -> None:
        super().__init__()
        self.last_count = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Resets the masks; the first training batch of the epoch draws new ones.

        Args:
            trainer (pl.Trainer): The running trainer.
            pl_module (pl.LightningModule): The model being trained.
        """
        self.last_count = resample_epoch_masks(pl_module)
