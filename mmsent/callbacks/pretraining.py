"""Callback that pretrains the acoustic MLP greedily, layer by layer, before fitting."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info

from mmsent.models.audio import AcousticMLPEncoder, greedy_layerwise_pretraining


class LayerwisePretraining(pl.Callback):
    """Greedy layer-wise autoencoder pretraining of a unimodal task's acoustic MLP.

    At the start of fitting, the hidden layers are pretrained one at a time as
    autoencoders on the training set's pooled features. For a unimodal audio stage::

        trainer:
          callbacks:
            - class_path: mmsent.callbacks.LayerwisePretraining
              init_args: {epochs: 5}

    Args:
        epochs (int): Passes over the training set per layer.
        lr (float): Adam's learning rate for the autoencoders.
        batch_size (int): Their batch size.
        seed (int): Seed of the batch order (a private generator).

    Attributes:
        errors (list[float]): Per hidden layer, its last reconstruction error.
    """

    def __init__(self, epochs: int = 5, lr: float = 1e-3, batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        if epochs < 1:
            raise ValueError(f"LayerwisePretraining: epochs must be >= 1, got {epochs}")
        self.epochs, self.lr, self.batch_size, self.seed = epochs, lr, batch_size, seed
        self.errors: list[float] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Pretrains the encoder on the training set, before the first epoch.

        Args:
            trainer (pl.Trainer): The running trainer, with its datamodule set up.
            pl_module (pl.LightningModule): A unimodal task.

        Raises:
            TypeError: If the task's encoder is not an :class:`AcousticMLPEncoder`.
        """
        encoder = getattr(pl_module, "encoder", None)
        if not isinstance(encoder, AcousticMLPEncoder):
            raise TypeError("LayerwisePretraining pretrains the AcousticMLPEncoder of a unimodal audio "
                             f"stage; this task's encoder is {type(encoder).__name__}")
        modality = pl_module.modality
        batches = ((batch[modality].to(pl_module.device), batch[f"{modality}_mask"].to(pl_module.device))
                   for batch in trainer.datamodule.train_dataloader())
        inputs = encoder.pooled_inputs(batches)
        self.errors = greedy_layerwise_pretraining(encoder.net, inputs, self.epochs, self.lr,
                                                   self.batch_size, self.seed)
        for index, error in enumerate(self.errors):
            rank_zero_info(f"layer-wise pretraining: layer {index + 1} reconstruction MSE {error:.4f}")
