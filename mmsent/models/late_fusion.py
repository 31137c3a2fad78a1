"""Late fusion over dict batches: one encoder per modality, a fusion module, a head.

A modality a sample lacks (``batch[f"{m}_present"]`` false) or the model no longer uses
(:meth:`LateFusionModel.switch_off`) enters the fusion as a zero embedding; modality
dropout trains the fusion on exactly that case.
"""

from __future__ import annotations

import torch
from torch import nn


class ModalityDropout(nn.Module):
    """Drops whole modalities of training samples; each sample keeps at least one.

    Args:
        p: Probability of dropping each modality of each sample.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, present: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Returns ``present`` (boolean ``(B,)`` per modality) thinned out in training mode; a
        sample that would lose all keeps what it had."""
        if not (self.training and self.p > 0):
            return present
        names = list(present)
        stacked = torch.stack([present[m] for m in names], dim=1)
        kept = stacked & (torch.rand(stacked.shape, device=stacked.device) >= self.p)
        kept = torch.where(kept.any(1, keepdim=True), kept, stacked)
        return {m: kept[:, i] for i, m in enumerate(names)}


def zero_absent(embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Returns ``embeddings`` (``(B, D_m)`` per modality) with the rows where ``present``
    (boolean ``(B,)`` per modality) is false set to zero."""
    return {m: z * present[m].unsqueeze(-1).to(z.dtype) for m, z in embeddings.items()}


class LateFusionModel(nn.Module):
    """Encoders per modality, a fusion module and a head, over dict batches.

    Args:
        encoders: One encoder per modality, called as ``encoder(batch[m], batch[f"{m}_mask"])``
            and exposing ``out_dim``.
        fusion: Maps ``dict[str, Tensor]`` to ``(B, fusion.out_dim)``.
        head: Maps the fused embedding to ``(B,)`` scores.
        modality_dropout: See :class:`ModalityDropout`.

    Attributes:
        active (torch.Tensor): Boolean per encoder; a switched-off modality is absent
            everywhere. A buffer, so the choice travels with the weights.
    """

    def __init__(self, encoders: nn.ModuleDict, fusion: nn.Module, head: nn.Module,
                 modality_dropout: float = 0.0) -> None:
        super().__init__()
        self.encoders = encoders
        self.fusion = fusion
        self.head = head
        self.modality_dropout = ModalityDropout(modality_dropout)
        self.register_buffer("active", torch.ones(len(encoders), dtype=torch.bool))

    def forward(self, batch: dict) -> torch.Tensor:
        """Returns the scores ``(B,)`` of a collated ``batch``."""
        embeddings = self.encode(batch)
        return self.predict_from_embeddings(embeddings, self.presence(batch))

    def encode(self, batch: dict) -> dict[str, torch.Tensor]:
        """dict[str, torch.Tensor]: Every encoder's embedding ``(B, D_m)`` of a batch."""
        return {m: encoder(batch[m], batch[f"{m}_mask"]) for m, encoder in self.encoders.items()}

    def presence(self, batch: dict) -> dict[str, torch.Tensor]:
        """dict[str, torch.Tensor]: Boolean ``(B,)`` per modality: present, in use, not dropped."""
        return self.modality_dropout(self._in_use({m: batch[f"{m}_present"].bool() for m in self.encoders}))

    def predict_from_embeddings(self, embeddings: dict[str, torch.Tensor],
                                present: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Fuses embeddings (real or generated) and scores them.

        Args:
            embeddings: Shape ``(B, D_m)`` per modality.
            present: Boolean ``(B,)`` per modality, None: all; absent ones are zeroed.

        Returns:
            Scores, shape ``(B,)``.
        """
        if present is None:
            present = {m: torch.ones(len(z), dtype=torch.bool, device=z.device) for m, z in embeddings.items()}
        return self.head(self.fusion(zero_absent(embeddings, self._in_use(present))))

    @property
    def active_modalities(self) -> list[str]:
        """list[str]: The modalities the model uses, in encoder order."""
        return [m for m, on in zip(self.encoders, self.active.tolist(), strict=True) if on]

    def switch_off(self, modality: str) -> None:
        """Stops using a modality: it enters the fusion as absent from now on.

        Args:
            modality: One of the encoders' modalities.

        Raises:
            ValueError: If the model has no such encoder, or it is the last one in use.
        """
        if modality not in self.encoders:
            raise ValueError(f"cannot switch off {modality!r}: the model fuses {list(self.encoders)}")
        if self.active_modalities == [modality]:
            raise ValueError(f"cannot switch off {modality!r}: it is the last modality in use")
        self.active[list(self.encoders).index(modality)] = False

    def _in_use(self, present: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: present[m] & on for m, on in zip(self.encoders, self.active, strict=True)}
