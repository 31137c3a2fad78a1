"""What every generator shares: the embedding layout, score conditioning,
standardization and sampling."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from mmsent.errors import check_choice
from mmsent.models.config import HubMixin

SCORE_SCALE = 3.0
ScoreMode = Literal["train", "uniform"]


def concat_embeddings(embeddings: dict[str, Tensor], dims: dict[str, int]) -> Tensor:
    """Returns ``embeddings`` (``(B, D_m)`` per modality) concatenated in the order of the
    layout ``dims`` (modality -> embedding size): ``(B, sum(D_m))``."""
    return torch.cat([embeddings[m] for m in dims], dim=-1)


def split_embeddings(x: Tensor, dims: dict[str, int]) -> dict[str, Tensor]:
    """Returns ``x`` ``(B, sum(D_m))`` split by the layout ``dims`` into ``(B, D_m)`` per
    modality; inverts :func:`concat_embeddings`."""
    return dict(zip(dims, x.split(list(dims.values()), dim=-1), strict=True))


def draw_scores(labels: Tensor, count: int, mode: ScoreMode = "train",
                rng: torch.Generator | None = None) -> Tensor:
    """Scores to condition generated samples on.

    Args:
        labels: Real training scores ``(B,)``, which ``"train"`` resamples.
        count: How many scores.
        mode: ``"train"`` or ``"uniform"`` (in ``[-3, 3]``).
        rng: Random source.

    Returns:
        Shape ``(count,)``.
    """
    check_choice("score mode", mode, ScoreMode)
    if mode == "train":
        return labels[torch.randint(len(labels), (count,), generator=rng, device=labels.device)]
    return (torch.rand(count, generator=rng, device=labels.device) * 2 - 1) * SCORE_SCALE


def score_condition(scores: Tensor) -> Tensor:
    """Tensor: Scores ``(B,)`` scaled to ``[-1, 1]``, as the ``(B, 1)`` condition networks take."""
    return (scores / SCORE_SCALE).unsqueeze(-1)


class RunningStandardizer(nn.Module):
    """Per-dimension mean and standard deviation, accumulated over batches.

    Exact over everything seen (Chan et al.'s parallel update): fixed after one epoch of
    frozen embeddings.

    Args:
        dim: Vector size.
        eps: Floor of the standard deviation.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Adds a batch ``x`` ``(B, dim)`` to the statistics."""
        x = x.detach().double()
        if len(x) == 0:
            return
        batch_mean = x.mean(0)
        total = self.count + len(x)
        delta = batch_mean - self.mean
        self.m2 += ((x - batch_mean) ** 2).sum(0) + delta**2 * self.count * len(x) / total
        self.mean += delta * len(x) / total
        self.count.copy_(total)

    @property
    def std(self) -> Tensor:
        """Tensor: The standard deviation per dimension (ones before any update)."""
        if self.count == 0:
            return torch.ones_like(self.mean)
        return (self.m2 / self.count).sqrt().clamp(min=self.eps)

    def normalize(self, x: Tensor) -> Tensor:
        """Tensor: ``x`` standardized."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def denormalize(self, x: Tensor) -> Tensor:
        """Tensor: ``x`` back in the original scale."""
        return x * self.std.to(x.dtype) + self.mean.to(x.dtype)


class EmbeddingGenerator(nn.Module, HubMixin):
    """What every generator shares: standardization, conditioning and sampling.

    Subclasses implement ``_generate`` and, if they can, ``_reconstruct``.

    Args:
        data_dim: Size of the generated vectors.
    """

    adversarial: bool = False
    can_reconstruct: bool = True

    def __init__(self, data_dim: int) -> None:
        super().__init__()
        self.data_dim = data_dim
        self.scaler = RunningStandardizer(data_dim)

    def observe(self, x: Tensor) -> None:
        """Adds a training batch of real vectors ``x`` ``(B, data_dim)`` to the standardization
        statistics."""
        self.scaler.update(x)

    @torch.no_grad()
    def sample(self, scores: Tensor, rng: torch.Generator | None = None) -> Tensor:
        """Returns one generated vector per conditioning score of ``scores`` ``(N,)``, in
        ``[-3, 3]``: ``(N, data_dim)``, in the original scale; ``rng`` makes them reproducible."""
        return self.scaler.denormalize(self._generate(score_condition(scores), rng))

    @torch.no_grad()
    def reconstruct(self, x: Tensor, scores: Tensor) -> Tensor:
        """Encodes and decodes real vectors.

        Args:
            x: Shape ``(B, data_dim)``.
            scores: Their scores, shape ``(B,)``.

        Returns:
            The reconstructions, shape ``(B, data_dim)``, original scale.

        Raises:
            ValueError: If the generator has no encoder.
        """
        if not self.can_reconstruct:
            raise ValueError(f"{type(self).__name__} has no encoder, so it cannot reconstruct")
        return self.scaler.denormalize(self._reconstruct(self.scaler.normalize(x), score_condition(scores)))

    def _generate(self, cond: Tensor, rng: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def _reconstruct(self, x: Tensor, cond: Tensor) -> Tensor:
        raise NotImplementedError


def sample_embeddings(generator: EmbeddingGenerator, dims: dict[str, int], labels: Tensor,
                      ratio: float, mode: str = "train") -> tuple[dict[str, Tensor], Tensor]:
    """Generated embedding tuples to mix into a real batch.

    Args:
        generator: A trained generator over ``dims``.
        dims: The layout: modality -> embedding size.
        labels: The real batch's scores, shape ``(B,)``.
        ratio: Generated samples per real sample (at least one is drawn).
        mode: How scores are drawn, see :func:`draw_scores`.

    Returns:
        Embeddings ``(N, D_m)`` per modality and their scores, ``N = max(1, round(ratio * B))``.
    """
    scores = draw_scores(labels, max(1, round(ratio * len(labels))), mode)
    return split_embeddings(generator.sample(scores), dims), scores

