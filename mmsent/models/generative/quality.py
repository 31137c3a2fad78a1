"""Measures of generated samples: Fréchet distance, diversity and a ridge probe."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mmsent.models.generative.base import SCORE_SCALE, EmbeddingGenerator


def mean_pairwise_distance(x: Tensor) -> float:
    """float: The mean Euclidean distance over all pairs of rows (0 for fewer than 2)."""
    return float(torch.pdist(x.double()).mean()) if len(x) > 1 else 0.0


def conditional_diversity(real: Tensor, generated: Tensor, scores: Tensor) -> float:
    """Spread of generated samples within each score class, relative to real ones.

    Classes are the scores rounded (Acc-7's); a generator that ignores its noise scores
    near 0 even when the scores spread its outputs.

    Args:
        real: Real vectors ``(N, D)`` with scores ``scores``.
        generated: Generated vectors ``(N, D)``, row ``i`` conditioned on ``scores[i]``.
        scores: Shape ``(N,)``.

    Returns:
        ``sum_c n_c * d_gen(c) / sum_c n_c * d_real(c)`` over classes of two or more,
        ``d`` the mean pairwise distance; nan if there is none.
    """
    classes = scores.round().clamp(-SCORE_SCALE, SCORE_SCALE)
    generated_total = real_total = 0.0
    for value in classes.unique():
        members = classes == value
        count = int(members.sum())
        if count > 1:
            generated_total += count * mean_pairwise_distance(generated[members])
            real_total += count * mean_pairwise_distance(real[members])
    return generated_total / real_total if real_total > 0 else math.nan


def frechet_distance(real: Tensor, generated: Tensor) -> float:
    """Returns the Fréchet distance (FID's formula) between Gaussians fitted to ``real``
    ``(N, D)`` and ``generated`` ``(M, D)``, that is
    ``|mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r^1/2 S_g S_r^1/2)^1/2)``."""
    real, generated = real.double(), generated.double()
    cov_r, cov_g = torch.cov(real.T), torch.cov(generated.T)
    values, vectors = torch.linalg.eigh(cov_r)
    root_r = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    cross = torch.linalg.eigvalsh(root_r @ cov_g @ root_r).clamp(min=0).sqrt().sum()
    mean_term = (real.mean(0) - generated.mean(0)).square().sum()
    return float(mean_term + cov_r.trace() + cov_g.trace() - 2 * cross)


class RidgeProbe(nn.Module):
    """A ridge regressor on standardized vectors, fitted in closed form on real data.

    A low error on generated samples means they carry their score as real data does.

    Args:
        dim: Input size.
        alpha: L2 penalty, per sample (the solve uses ``alpha * N``).
    """

    def __init__(self, dim: int, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = alpha
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("weight", torch.zeros(dim))
        self.register_buffer("bias", torch.zeros(()))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, x: Tensor, y: Tensor) -> RidgeProbe:
        """Fits the regressor to real vectors ``x`` ``(N, dim)`` and their scores ``y`` ``(N,)``;
        returns itself."""
        x, y = x.double(), y.double()
        mean, std = x.mean(0), x.std(0, correction=0).clamp(min=1e-6)
        z = (x - mean) / std
        gram = z.T @ z + self.alpha * len(x) * torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
        weight = torch.linalg.solve(gram, z.T @ (y - y.mean()))
        for name, value in (("mean", mean), ("std", std), ("weight", weight), ("bias", y.mean())):
            getattr(self, name).copy_(value)
        self.fitted.fill_(True)
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Tensor: Predicted scores ``(N,)`` for vectors ``(N, dim)``."""
        return ((x - self.mean) / self.std) @ self.weight + self.bias


def sample_quality(generator: EmbeddingGenerator, real: Tensor, scores: Tensor,
                   probe: RidgeProbe | None = None,
                   rng: torch.Generator | None = None) -> tuple[dict[str, float], Tensor]:
    """Generates one sample per real one (same score) and compares the two sets.

    Distances are in standardized units, so every dimension counts alike.

    Args:
        generator: The trained generator.
        real: Held-out real vectors ``(N, D)``.
        scores: Their scores ``(N,)``.
        probe: A regressor fitted on real training data.
        rng: Random source for the samples.

    Returns:
        The measures and the generated vectors. Measures: ``frechet``, ``diversity``
        (mean pairwise distance, generated over real), ``conditional_diversity``; with a
        fitted probe, its error on generated (``fidelity_MAE``) and real (``real_MAE``) ones.
    """
    generated = generator.sample(scores, rng)
    real_std, generated_std = generator.scaler.normalize(real), generator.scaler.normalize(generated)
    measures = {
        "frechet": frechet_distance(real_std, generated_std),
        "diversity": mean_pairwise_distance(generated_std) / max(mean_pairwise_distance(real_std), 1e-12),
        "conditional_diversity": conditional_diversity(real_std, generated_std, scores)}
    if probe is not None and bool(probe.fitted):
        measures["fidelity_MAE"] = float((probe(generated) - scores).abs().mean())
        measures["real_MAE"] = float((probe(real) - scores).abs().mean())
    return measures, generated
