"""A conditional BiGAN: a generator and an encoder, judged together on (x, z) pairs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmsent.models.audio import mlp
from mmsent.models.generative.base import EmbeddingGenerator, score_condition
from mmsent.models.generative.gan import (
    Critic,
    GanLoss,
    check_adversarial_loss,
    discriminator_objective,
    generator_objective,
    gradient_penalty,
)


class BiGAN(EmbeddingGenerator):
    """A conditional BiGAN (Donahue et al. 2017; Dumoulin et al. 2017, ALI).

    The discriminator judges pairs ``(x, E(x, y))`` of real vectors and ``(G(z, y), z)``
    of generated ones. At the optimum ``E`` inverts ``G``, so unlike a plain GAN it can
    :meth:`reconstruct` and :meth:`encode`. Train it as
    :class:`~mmsent.models.generative.ConditionalGAN`; :meth:`generator_loss` needs the
    real batch.

    Args:
        data_dim: Size of the vectors.
        noise_dim: Size of the Gaussian noise ``z``.
        hidden_dims: Hidden sizes of generator and encoder; None means ``[128, 128]``.
        critic_dims: Discriminator hidden sizes; None means the generator's.
        loss: The adversarial loss; ``"bce"`` is the non-saturating one.
        spectral_norm: Spectrally normalize the discriminator.
        gradient_penalty: Weight of WGAN-GP's gradient penalty on the pairs; 0 for none.

    Raises:
        ValueError: If ``loss`` is unknown, or Wasserstein without a Lipschitz constraint.
    """

    adversarial = True
    can_reconstruct = True

    def __init__(self, data_dim: int, noise_dim: int = 16, hidden_dims: list[int] | None = None,
                 critic_dims: list[int] | None = None, loss: GanLoss = "wasserstein",
                 spectral_norm: bool = False, gradient_penalty: float = 10.0) -> None:
        super().__init__(data_dim)
        check_adversarial_loss("BiGAN", loss, spectral_norm, gradient_penalty)
        hidden = [128, 128] if hidden_dims is None else list(hidden_dims)
        critic = hidden if critic_dims is None else list(critic_dims)
        self.noise_dim = noise_dim
        self.loss_kind, self.penalty_weight = loss, gradient_penalty
        self.generator_net = mlp(noise_dim + 1, hidden, data_dim, None)
        self.encoder_net = mlp(data_dim + 1, hidden, noise_dim, None)
        self.discriminator = Critic(data_dim + noise_dim, critic, spectral_norm, info_dim=0)

    def parts(self) -> dict[str, nn.Module]:
        """dict[str, nn.Module]: The ``generator`` (with the encoder) and ``discriminator``."""
        return {"generator": nn.ModuleList([self.generator_net, self.encoder_net]),
                "discriminator": self.discriminator}

    @torch.no_grad()
    def encode(self, x: Tensor, scores: Tensor) -> Tensor:
        """Returns the noise ``(B, noise_dim)`` the encoder assigns to real vectors ``x``
        ``(B, data_dim)``, original scale, with their ``scores`` ``(B,)``."""
        return self._encode(self.scaler.normalize(x), score_condition(scores))

    def discriminator_loss(self, x: Tensor, scores: Tensor) -> dict[str, Tensor]:
        """Returns the discriminator's objective on the real pairs of ``x`` ``(B, data_dim)`` and as
        many generated pairs, which get the same ``scores``: ``loss``, ``adversarial`` and, where
        enabled, ``penalty``."""
        cond = score_condition(scores)
        with torch.no_grad():
            real, fake = self._pairs(self.scaler.normalize(x), cond)
        real_logit, _ = self.discriminator(real, cond)
        fake_logit, _ = self.discriminator(fake, cond)
        terms = {"adversarial": discriminator_objective(real_logit, fake_logit, self.loss_kind)}
        if self.penalty_weight:
            terms["penalty"] = gradient_penalty(self.discriminator, real, fake, cond)
        loss = terms["adversarial"] + self.penalty_weight * terms.get("penalty", 0.0)
        return {"loss": loss, **terms}

    def generator_loss(self, scores: Tensor, real: Tensor | None = None) -> dict[str, Tensor]:
        """The objective of generator and encoder: fool the discriminator both ways.

        The labels are swapped: generated pairs should look real, and real pairs generated.

        Args:
            scores: The real batch's scores, shape ``(B,)``.
            real: The real batch, shape ``(B, data_dim)``.

        Returns:
            ``loss`` and ``adversarial``.

        Raises:
            ValueError: If ``real`` is missing.
        """
        if real is None:
            raise ValueError("BiGAN.generator_loss needs the real batch (real=...) for the encoder")
        cond = score_condition(scores)
        real_pair, fake_pair = self._pairs(self.scaler.normalize(real), cond)
        real_logit, _ = self.discriminator(real_pair, cond)
        fake_logit, _ = self.discriminator(fake_pair, cond)
        adversarial = generator_objective(fake_logit, self.loss_kind) + generator_objective(
            -real_logit, self.loss_kind)
        return {"loss": adversarial, "adversarial": adversarial}

    def _pairs(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        noise = torch.randn(len(x), self.noise_dim, device=x.device)
        real = torch.cat([x, self._encode(x, cond)], -1)
        fake = torch.cat([self._decode(noise, cond), noise], -1)
        return real, fake

    def _encode(self, x: Tensor, cond: Tensor) -> Tensor:
        return self.encoder_net(torch.cat([x, cond], -1))

    def _decode(self, noise: Tensor, cond: Tensor) -> Tensor:
        return self.generator_net(torch.cat([noise, cond], -1))

    def _generate(self, cond: Tensor, rng: torch.Generator | None) -> Tensor:
        return self._decode(torch.randn(len(cond), self.noise_dim, generator=rng, device=cond.device), cond)

    def _reconstruct(self, x: Tensor, cond: Tensor) -> Tensor:
        return self._decode(self._encode(x, cond), cond)
