"""A conditional autoencoder that generates through a Gaussian fitted to its codes."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from mmsent.models.audio import mlp
from mmsent.models.dropout import make_dropout
from mmsent.models.generative.base import EmbeddingGenerator, score_condition


class ConditionalAutoencoder(EmbeddingGenerator):
    """An autoencoder with the score fed to both encoder and decoder.

    It trains on reconstruction alone; its codes still carry the score, so it generates
    from ``z | y ~ N(W [1, y], S)`` fitted to the training codes by moving moments.

    Args:
        data_dim: Size of the vectors.
        latent_dim: Size of the code.
        hidden_dims: Encoder hidden sizes, mirrored by the decoder; None means ``[128]``.
        dropout: Dropout between hidden layers.
        prior_momentum: Weight of each batch in the moving moments of ``(1, y, z)``.
    """

    def __init__(self, data_dim: int, latent_dim: int = 16, hidden_dims: list[int] | None = None,
                 dropout: float = 0.0, prior_momentum: float = 0.05) -> None:
        super().__init__(data_dim)
        hidden = [128] if hidden_dims is None else list(hidden_dims)
        self.momentum = prior_momentum
        self.encoder = mlp(data_dim + 1, hidden, latent_dim, make_dropout("bernoulli", dropout))
        self.decoder = mlp(latent_dim + 1, hidden[::-1], data_dim, make_dropout("bernoulli", dropout))
        self.register_buffer("prior_moments", torch.eye(latent_dim + 2))
        self.register_buffer("prior_batches", torch.zeros((), dtype=torch.long))

    def losses(self, x: Tensor, scores: Tensor) -> dict[str, Tensor]:
        """Returns the training objective on real vectors ``x`` ``(B, data_dim)`` with their
        ``scores`` ``(B,)``: ``loss`` (MSE in standardized units) and ``recon`` (the same value);
        in training mode it also updates the prior."""
        cond = score_condition(scores)
        target = self.scaler.normalize(x)
        code = self.encoder(torch.cat([target, cond], -1))
        recon = F.mse_loss(self.decoder(torch.cat([code, cond], -1)), target)
        if self.training:
            self._update_prior(cond, code.detach())
        return {"loss": recon, "recon": recon}

    @torch.no_grad()
    def _update_prior(self, cond: Tensor, code: Tensor) -> None:
        v = torch.cat([torch.ones_like(cond), cond, code], -1)
        weight = 1.0 if self.prior_batches == 0 else self.momentum
        self.prior_moments.lerp_(v.T @ v / len(v), weight)
        self.prior_batches += 1

    def _generate(self, cond: Tensor, rng: torch.Generator | None) -> Tensor:
        moments = self.prior_moments.double()
        eye = torch.eye(len(moments) - 2, dtype=moments.dtype, device=moments.device)
        given, cross, codes = moments[:2, :2], moments[2:, :2], moments[2:, 2:]
        weight = cross @ torch.linalg.inv(given + 1e-6 * eye[:2, :2])
        factor, _ = torch.linalg.cholesky_ex(codes - weight @ cross.T + 1e-4 * eye)
        inputs = torch.cat([torch.ones_like(cond), cond], -1)
        noise = torch.randn(len(cond), len(eye), generator=rng, device=cond.device)
        code = inputs @ weight.T.to(cond.dtype) + noise @ factor.T.to(cond.dtype)
        return self.decoder(torch.cat([code, cond], -1))

    def _reconstruct(self, x: Tensor, cond: Tensor) -> Tensor:
        return self.decoder(torch.cat([self.encoder(torch.cat([x, cond], -1)), cond], -1))

