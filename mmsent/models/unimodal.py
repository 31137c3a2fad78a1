"""One modality's encoder and regression head as a plain module over dict batches."""

from __future__ import annotations

import torch
from torch import nn


class UnimodalModel(nn.Module):
    """``head(encoder(batch[m], batch[m_mask]))``: a unimodal stage's model without its
    training task, e.g. to add a trained stage's predictions to another's.

    Args:
        modality (str): The modality it reads.
        encoder (nn.Module): The encoder, called with the features and their mask.
        head (nn.Module): The regression head over the encoder's embedding.
    """

    def __init__(self, modality: str, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.modality = modality
        self.encoder = encoder
        self.head = head

    def forward(self, batch: dict) -> torch.Tensor:
        """Scores a dict batch.

        Args:
            batch (dict): Holds ``<modality>`` and ``<modality>_mask``.

        Returns:
            torch.Tensor: Shape ``(B,)``.
        """
        m = self.modality
        return self.head(self.encoder(batch[m], batch[f"{m}_mask"]))
