"""A CycleGAN between two modalities' embedding spaces, and filling in a missing modality.

The translators are not conditioned on the score: at test time, where they fill in a
modality a sample lacks, the score is what is being predicted.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mmsent.models.audio import mlp
from mmsent.models.config import HubMixin
from mmsent.models.generative.base import RunningStandardizer
from mmsent.models.generative.gan import (
    Critic,
    GanLoss,
    check_adversarial_loss,
    discriminator_objective,
    generator_objective,
    gradient_penalty,
)


class EmbeddingCycleGAN(nn.Module, HubMixin):
    """Translators between two modalities' embeddings, trained adversarially with the
    cycle-consistency loss (Zhu et al. 2017).

    A critic per space tells real embeddings from translated ones; the L1 cycle errors
    make the translators (nearly) inverse. Inputs are standardized per space with
    statistics fed by :meth:`observe`. Train by alternating :meth:`discriminator_loss`
    and :meth:`generator_loss`, each with its :meth:`parts` optimizer.

    Args:
        source_dim: Size of the source embeddings.
        target_dim: Size of the target embeddings.
        source: The source modality's name.
        target: The target modality's name.
        hidden_dims: Hidden sizes of translators and critics; None means ``[128, 128]``.
        loss: The adversarial loss.
        spectral_norm: Spectrally normalize the critics.
        gradient_penalty: Weight of WGAN-GP's gradient penalty; 0 for none.
        cycle_weight: Weight of the cycle-consistency loss.
        paired_weight: Weight of the L1 loss against the partner of the same clip; 0: none.

    Raises:
        ValueError: If ``loss`` is unknown, source and target are the same modality,
            or Wasserstein is asked for without a Lipschitz constraint.
    """

    def __init__(self, source_dim: int, target_dim: int, source: str = "text", target: str = "audio",
                 hidden_dims: list[int] | None = None, loss: GanLoss = "wasserstein",
                 spectral_norm: bool = False, gradient_penalty: float = 10.0,
                 cycle_weight: float = 10.0, paired_weight: float = 0.0) -> None:
        super().__init__()
        check_adversarial_loss("EmbeddingCycleGAN", loss, spectral_norm, gradient_penalty)
        if source == target:
            raise ValueError(f"EmbeddingCycleGAN: source and target are both {source!r}")
        hidden = [128, 128] if hidden_dims is None else list(hidden_dims)
        self.source, self.target = source, target
        self.loss_kind, self.penalty_weight = loss, gradient_penalty
        self.cycle_weight, self.paired_weight = cycle_weight, paired_weight
        self.source_scaler = RunningStandardizer(source_dim)
        self.target_scaler = RunningStandardizer(target_dim)
        self.forward_net = mlp(source_dim, hidden, target_dim, None)
        self.backward_net = mlp(target_dim, hidden, source_dim, None)
        # A Critic under a constant condition is an unconditional critic.
        self.source_critic = Critic(source_dim, hidden, spectral_norm, info_dim=0)
        self.target_critic = Critic(target_dim, hidden, spectral_norm, info_dim=0)

    def parts(self) -> dict[str, nn.Module]:
        """dict[str, nn.Module]: The ``generator`` (both translators) and ``discriminator``."""
        return {"generator": nn.ModuleList([self.forward_net, self.backward_net]),
                "discriminator": nn.ModuleList([self.source_critic, self.target_critic])}

    def observe(self, source: Tensor, target: Tensor) -> None:
        """Adds a training batch of each space, ``source`` ``(B, source_dim)`` and ``target``
        ``(B', target_dim)``, to the standardization statistics."""
        self.source_scaler.update(source)
        self.target_scaler.update(target)

    @torch.no_grad()
    def to_target(self, source: Tensor) -> Tensor:
        """Tensor: Source embeddings translated to the target space, original scale."""
        return self.target_scaler.denormalize(self.forward_net(self.source_scaler.normalize(source)))

    @torch.no_grad()
    def to_source(self, target: Tensor) -> Tensor:
        """Tensor: Target embeddings translated to the source space, original scale."""
        return self.source_scaler.denormalize(self.backward_net(self.target_scaler.normalize(target)))

    def discriminator_loss(self, source: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Returns both critics' objective on real embeddings, ``source`` ``(B, source_dim)`` and
        ``target`` ``(B', target_dim)`` (need not pair), and translated ones: ``loss``,
        ``adversarial`` and, where enabled, ``penalty``."""
        a, b = self.source_scaler.normalize(source), self.target_scaler.normalize(target)
        with torch.no_grad():
            fake_b, fake_a = self.forward_net(a), self.backward_net(b)
        adversarial, penalty = 0.0, 0.0
        for critic, real, fake in ((self.target_critic, b, fake_b), (self.source_critic, a, fake_a)):
            count = min(len(real), len(fake))
            real, fake = real[:count], fake[:count]
            cond = real.new_zeros(count, 1)
            adversarial = adversarial + discriminator_objective(critic(real, cond)[0], critic(fake, cond)[0],
                                                                self.loss_kind)
            if self.penalty_weight:
                penalty = penalty + gradient_penalty(critic, real, fake, cond)
        terms = {"adversarial": adversarial}
        if self.penalty_weight:
            terms["penalty"] = penalty
        return {"loss": adversarial + self.penalty_weight * penalty, **terms}

    def generator_loss(self, source: Tensor, target: Tensor) -> dict[str, Tensor]:
        """The translators' objective: fool both critics and come back where they started.

        Args:
            source: Source embeddings ``(B, source_dim)``.
            target: Target embeddings, paired row by row when ``paired_weight`` is set.

        Returns:
            ``loss``, ``adversarial``, ``cycle`` and, with ``paired_weight``, ``paired``.

        Raises:
            ValueError: If ``paired_weight`` is set and the batches differ in length.
        """
        a, b = self.source_scaler.normalize(source), self.target_scaler.normalize(target)
        fake_b, fake_a = self.forward_net(a), self.backward_net(b)
        adversarial = (generator_objective(self.target_critic(fake_b, a.new_zeros(len(a), 1))[0], self.loss_kind)
                       + generator_objective(self.source_critic(fake_a, b.new_zeros(len(b), 1))[0], self.loss_kind))
        cycle = F.l1_loss(self.backward_net(fake_b), a) + F.l1_loss(self.forward_net(fake_a), b)
        terms = {"adversarial": adversarial, "cycle": cycle}
        loss = adversarial + self.cycle_weight * cycle
        if self.paired_weight:
            if len(a) != len(b):
                raise ValueError(f"EmbeddingCycleGAN: paired_weight needs paired batches, got {len(a)} "
                                 f"{self.source} and {len(b)} {self.target} embeddings")
            terms["paired"] = F.l1_loss(fake_b, b) + F.l1_loss(fake_a, a)
            loss = loss + self.paired_weight * terms["paired"]
        return {"loss": loss, **terms}


def fill_missing(embeddings: dict[str, Tensor], present: dict[str, Tensor],
                 translators: list[EmbeddingCycleGAN]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Fills in absent modalities with embeddings translated from present ones.

    A missing modality gets the mean translation of those the sample has, over every
    translator linking them (either direction); one no translator reaches stays absent.

    Args:
        embeddings: Shape ``(B, D_m)`` per modality; absent rows may hold anything.
        present: Boolean ``(B,)`` per modality.
        translators: Trained translators.

    Returns:
        The embeddings with filled rows, and the presence with them marked present, for
        :meth:`~mmsent.models.LateFusionModel.predict_from_embeddings`.
    """
    filled, now_present = dict(embeddings), dict(present)
    for missing, own in embeddings.items():
        gap = ~present[missing].bool()
        total = torch.zeros_like(own)
        count = torch.zeros(len(gap), 1, device=gap.device)
        for translator in translators:
            if translator.target == missing and translator.source in embeddings:
                origin, translate = translator.source, translator.to_target
            elif translator.source == missing and translator.target in embeddings:
                origin, translate = translator.target, translator.to_source
            else:
                continue
            usable = gap & present[origin].bool()
            total = total + translate(embeddings[origin]) * usable[:, None]
            count = count + usable[:, None]
        reached = count.squeeze(-1) > 0
        filled[missing] = torch.where(reached[:, None], total / count.clamp(min=1), own)
        now_present[missing] = present[missing].bool() | reached
    return filled, now_present
