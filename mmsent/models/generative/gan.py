"""A conditional GAN over vectors: its critic, objectives and gradient penalty."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm as apply_spectral_norm

from mmsent.errors import check_choice
from mmsent.models.audio import mlp
from mmsent.models.generative.base import EmbeddingGenerator, score_condition

GanLoss = Literal["hinge", "bce", "wasserstein"]


class Critic(nn.Module):
    """The GAN's discriminator: a LeakyReLU MLP, a projection on the score, InfoGAN's code head.

    The score enters by projection (Miyato & Koyama 2018), logit ``s(h) + <e(y), h>``,
    which conditions far more strongly than appending one scalar to the input.

    Args:
        in_dim: Input size.
        hidden_dims: Hidden sizes.
        spectral_norm: Spectrally normalize every layer that feeds the score.
        info_dim: Size of InfoGAN's code predicted from the features; 0 for none.
    """

    def __init__(self, in_dim: int, hidden_dims: list[int], spectral_norm: bool, info_dim: int) -> None:
        super().__init__()

        def linear(i: int, o: int) -> nn.Module:
            return apply_spectral_norm(nn.Linear(i, o)) if spectral_norm else nn.Linear(i, o)

        layers: list[nn.Module] = []
        for width in hidden_dims:
            layers += [linear(in_dim, width), nn.LeakyReLU(0.2)]
            in_dim = width
        self.body = nn.Sequential(*layers)
        self.score = linear(in_dim, 1)
        self.embed_condition = nn.Sequential(linear(1, in_dim), nn.LeakyReLU(0.2), linear(in_dim, in_dim))
        self.info = nn.Linear(in_dim, info_dim) if info_dim else None

    def forward(self, inputs: Tensor, cond: Tensor) -> tuple[Tensor, Tensor | None]:
        """Returns the logits ``(B,)`` of ``inputs`` ``(B, in_dim)`` under scaled scores ``cond``
        ``(B, 1)``, and the predicted code ``(B, info_dim)`` (None without InfoGAN)."""
        features = self.body(inputs)
        logits = self.score(features).squeeze(-1) + (self.embed_condition(cond) * features).sum(-1)
        info = self.info(features) if self.info is not None else None
        return logits, info


def check_adversarial_loss(owner: str, loss: GanLoss, spectral_norm: bool, gradient_penalty: float) -> None:
    """Checks an adversarial model's loss settings.

    Args:
        owner: The model's name, for the message.
        loss: The adversarial loss.
        spectral_norm: Whether the critic is spectrally normalized.
        gradient_penalty: Weight of the gradient penalty.

    Raises:
        ValueError: If ``loss`` is unknown, or Wasserstein has no Lipschitz constraint.
    """
    check_choice(f"{owner}: loss", loss, GanLoss)
    if loss == "wasserstein" and not (spectral_norm or gradient_penalty):
        raise ValueError(f"{owner}: the wasserstein loss needs a Lipschitz constraint: "
                         "spectral_norm or gradient_penalty > 0")


def discriminator_objective(real: Tensor, fake: Tensor, kind: GanLoss) -> Tensor:
    """The discriminator's loss for real and fake logits.

    Args:
        real: Logits of real samples.
        fake: Logits of generated samples.
        kind: The adversarial loss.

    Returns:
        The scalar loss.
    """
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    if kind == "bce":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    return fake.mean() - real.mean()


def generator_objective(fake: Tensor, kind: GanLoss) -> Tensor:
    """The generator's (non-saturating) loss for the logits of its samples.

    Args:
        fake: Logits of generated samples.
        kind: The adversarial loss.

    Returns:
        The scalar loss.
    """
    return F.softplus(-fake).mean() if kind == "bce" else -fake.mean()


def gradient_penalty(critic: Critic, real: Tensor, fake: Tensor, cond: Tensor) -> Tensor:
    """WGAN-GP's penalty: ``(||grad D||_2 - 1)^2`` at random points between pairs.

    Args:
        critic: The discriminator.
        real: Critic inputs of real samples, ``(B, in_dim)``.
        fake: Critic inputs of generated samples.
        cond: The conditions both share, ``(B, 1)``.

    Returns:
        The scalar penalty, differentiable w.r.t. the critic.
    """
    mix = torch.rand(len(real), 1, device=real.device)
    between = (mix * real + (1 - mix) * fake).requires_grad_(True)
    logits, _ = critic(between, cond)
    (grad,) = torch.autograd.grad(logits.sum(), between, create_graph=True)
    return ((grad.norm(2, dim=-1) - 1) ** 2).mean()


class ConditionalGAN(EmbeddingGenerator):
    """A conditional GAN over vectors: the score is appended to the generator's input
    and projected in the discriminator (:class:`Critic`).

    Train it by alternating :meth:`discriminator_loss` and :meth:`generator_loss`, each
    with the optimizer of its :meth:`parts` entry.

    Args:
        data_dim: Size of the vectors.
        noise_dim: Size of the Gaussian noise.
        hidden_dims: Generator hidden sizes; None means ``[128, 128]``.
        critic_dims: Discriminator hidden sizes; None means the generator's.
        loss: The adversarial loss; ``"bce"`` is the non-saturating one.
        spectral_norm: Spectrally normalize the discriminator.
        gradient_penalty: Weight of WGAN-GP's gradient penalty; 0 for none.
        info_dim: InfoGAN: size of a uniform ``[-1, 1]`` code to recover from fakes; 0: none.
        info_weight: Weight of the code's reconstruction loss.
    """

    adversarial = True
    can_reconstruct = False

    def __init__(self, data_dim: int, noise_dim: int = 32, hidden_dims: list[int] | None = None,
                 critic_dims: list[int] | None = None, loss: GanLoss = "wasserstein",
                 spectral_norm: bool = False, gradient_penalty: float = 10.0, info_dim: int = 0,
                 info_weight: float = 1.0) -> None:
        super().__init__(data_dim)
        check_adversarial_loss("ConditionalGAN", loss, spectral_norm, gradient_penalty)
        hidden = [128, 128] if hidden_dims is None else list(hidden_dims)
        critic = hidden if critic_dims is None else list(critic_dims)
        self.noise_dim, self.info_dim = noise_dim, info_dim
        self.loss_kind, self.penalty_weight, self.info_weight = loss, gradient_penalty, info_weight
        self.generator_net = mlp(noise_dim + info_dim + 1, hidden, data_dim, None)
        self.discriminator = Critic(data_dim, critic, spectral_norm, info_dim)

    def parts(self) -> dict[str, nn.Module]:
        """dict[str, nn.Module]: The ``generator`` and ``discriminator`` (with the code head)."""
        return {"generator": self.generator_net, "discriminator": self.discriminator}

    def draw_latent(self, count: int, rng: torch.Generator | None = None,
                    device: torch.device | None = None) -> Tensor:
        """Gaussian noise followed by the uniform InfoGAN code.

        Args:
            count: How many latents.
            rng: Random source.
            device: Where to create them.

        Returns:
            Shape ``(count, noise_dim + info_dim)``.
        """
        noise = torch.randn(count, self.noise_dim, generator=rng, device=device)
        code = torch.rand(count, self.info_dim, generator=rng, device=device) * 2 - 1
        return torch.cat([noise, code], -1)

    def generate(self, latent: Tensor, scores: Tensor) -> Tensor:
        """Returns vectors ``(N, data_dim)``, original scale, decoded from chosen ``latent``
        ``(N, noise_dim + info_dim)`` (e.g. with a swept InfoGAN code) under ``scores`` ``(N,)``."""
        return self.scaler.denormalize(self.generator_net(torch.cat([latent, score_condition(scores)], -1)))

    def discriminator_loss(self, x: Tensor, scores: Tensor) -> dict[str, Tensor]:
        """Returns the discriminator's objective on real vectors ``x`` ``(B, data_dim)`` and as
        many fakes, which get the same ``scores``: ``loss`` and its terms ``adversarial``
        (Wasserstein: minus the critic's distance estimate), ``penalty`` and ``info`` where
        enabled."""
        cond = score_condition(scores)
        real = self.scaler.normalize(x)
        latent = self.draw_latent(len(x), device=x.device)
        with torch.no_grad():
            fake = self.generator_net(torch.cat([latent, cond], -1))
        real_logit, _ = self.discriminator(real, cond)
        fake_logit, code = self.discriminator(fake, cond)
        terms = {"adversarial": discriminator_objective(real_logit, fake_logit, self.loss_kind)}
        if self.penalty_weight:
            terms["penalty"] = gradient_penalty(self.discriminator, real, fake, cond)
        if self.info_dim:
            terms["info"] = F.mse_loss(code, latent[:, self.noise_dim:])
        return self._total(terms)

    def generator_loss(self, scores: Tensor, real: Tensor | None = None) -> dict[str, Tensor]:
        """Returns the generator's objective on one fake per score of ``scores`` ``(B,)`` (a real
        batch's): ``loss`` and its terms ``adversarial`` and, with InfoGAN, ``info``. ``real`` is
        unused, taken so every adversarial generator is stepped alike."""
        cond = score_condition(scores)
        latent = self.draw_latent(len(scores), device=scores.device)
        fake = self.generator_net(torch.cat([latent, cond], -1))
        fake_logit, code = self.discriminator(fake, cond)
        terms = {"adversarial": generator_objective(fake_logit, self.loss_kind)}
        if self.info_dim:
            terms["info"] = F.mse_loss(code, latent[:, self.noise_dim:])
        return self._total(terms)

    def _total(self, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        weights = {"penalty": self.penalty_weight, "info": self.info_weight}
        return {"loss": sum(weights.get(name, 1.0) * value for name, value in terms.items()), **terms}

    def _generate(self, cond: Tensor, rng: torch.Generator | None) -> Tensor:
        latent = self.draw_latent(len(cond), rng, cond.device)
        return self.generator_net(torch.cat([latent, cond], -1))

