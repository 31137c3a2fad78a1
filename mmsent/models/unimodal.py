"""One modality's encoder and regression head as a plain module over dict batches."""

from __future__ import annotations

import torch
from torch import nn


class UnimodalModel(nn.Module):
    """``head(encoder(batch[m], batch[m_mask]))``: a unimodal stage's model without its task.

    Args:
        modality: The modality it reads.
        encoder: The encoder, called with the features and their mask.
        head: The regression head over the encoder's embedding.
    """

    def __init__(self, modality: str, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.modality = modality
        self.encoder = encoder
        self.head = head

    def forward(self, batch: dict) -> torch.Tensor:
        """Returns the scores ``(B,)`` of a dict ``batch`` holding ``<modality>`` and
        ``<modality>_mask``."""
        m = self.modality
        return self.head(self.encoder(batch[m], batch[f"{m}_mask"]))
