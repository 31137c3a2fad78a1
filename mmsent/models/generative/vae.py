"""A conditional VAE with a calibrated Gaussian decoder."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mmsent.models.audio import mlp
from mmsent.models.dropout import make_dropout
from mmsent.models.generative.base import EmbeddingGenerator, score_condition


class ConditionalVAE(EmbeddingGenerator):
    """A conditional VAE with a Gaussian decoder whose variance is learned per dimension.

    The learned variance balances reconstruction and KL without tuning.

    Args:
        data_dim: Size of the vectors.
        latent_dim: Size of the latent variable.
        hidden_dims: Encoder hidden sizes, mirrored by the decoder; None means ``[128]``.
        beta: Weight of the KL term (1 is the ELBO).
        dropout: Dropout between hidden layers.
        min_log_sigma: Floor of the decoder's log std (standardized units), so the
            likelihood cannot diverge on a fitted dimension.
    """

    def __init__(self, data_dim: int, latent_dim: int = 16, hidden_dims: list[int] | None = None,
                 beta: float = 1.0, dropout: float = 0.0, min_log_sigma: float = -3.0) -> None:
        super().__init__(data_dim)
        hidden = [128] if hidden_dims is None else list(hidden_dims)
        self.latent_dim = latent_dim
        self.beta = beta
        self.min_log_sigma = min_log_sigma
        self.encoder = mlp(data_dim + 1, hidden, 2 * latent_dim, make_dropout("bernoulli", dropout))
        self.decoder = mlp(latent_dim + 1, hidden[::-1], data_dim, make_dropout("bernoulli", dropout))
        self.log_sigma = nn.Parameter(torch.zeros(data_dim))

    def encode(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """Returns the mean and log-variance, each ``(B, latent_dim)``, of the approximate
        posterior ``q(z | x, y)`` for standardized vectors ``x`` ``(B, data_dim)`` and scaled
        scores ``cond`` ``(B, 1)``."""
        mean, log_var = self.encoder(torch.cat([x, cond], -1)).chunk(2, dim=-1)
        return mean, log_var.clamp(-10.0, 10.0)

    def decode(self, z: Tensor, cond: Tensor) -> Tensor:
        """Tensor: The decoder's mean for latents ``z`` (standardized units)."""
        return self.decoder(torch.cat([z, cond], -1))

    def losses(self, x: Tensor, scores: Tensor) -> dict[str, Tensor]:
        """Returns the negative ELBO, per sample, on real vectors ``x`` ``(B, data_dim)`` with their
        ``scores`` ``(B,)``: ``loss`` (``nll + beta * kl``), ``nll`` (summed over dimensions),
        ``kl`` and ``recon`` (MSE of the decoder mean, standardized units)."""
        cond = score_condition(scores)
        target = self.scaler.normalize(x)
        mean, log_var = self.encode(target, cond)
        z = mean + torch.randn_like(mean) * (0.5 * log_var).exp()
        decoded = self.decode(z, cond)
        log_sigma = self.log_sigma.clamp(min=self.min_log_sigma)
        nll = (0.5 * ((target - decoded) / log_sigma.exp()) ** 2 + log_sigma
               + 0.5 * math.log(2 * math.pi)).sum(-1).mean()
        kl = 0.5 * (mean**2 + log_var.exp() - 1 - log_var).sum(-1).mean()
        return {"loss": nll + self.beta * kl, "nll": nll, "kl": kl,
                "recon": F.mse_loss(decoded, target)}

    def _generate(self, cond: Tensor, rng: torch.Generator | None) -> Tensor:
        z = torch.randn(len(cond), self.latent_dim, generator=rng, device=cond.device)
        return self.decode(z, cond)

    def _reconstruct(self, x: Tensor, cond: Tensor) -> Tensor:
        return self.decode(self.encode(x, cond)[0], cond)

