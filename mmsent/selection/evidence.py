"""The evidence a modality must show to stay in a fused model.

A weak modality can lower the validation error by chance and raise it on new speakers, so it
stays only if its mean gain is significant under a bootstrap over whole videos (clips of one
video share a speaker) *and* at least ``min_gain`` of the MAE without it (on a large split a
negligible gain can be significant).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mmsent.data.schema import ID_SEPARATOR


@dataclass(frozen=True)
class GainTest:
    """The validation evidence for one modality, given the others in use.

    Attributes:
        modality: The modality tested.
        others: The modalities in use beside it.
        gain: Mean over clips of MAE without it minus MAE with it.
        relative_gain: ``gain`` over the MAE without it.
        p_value: One-sided bootstrap p-value of ``gain <= 0``.
        groups: Number of independent groups (videos) resampled.
    """

    modality: str
    others: tuple[str, ...]
    gain: float
    relative_gain: float
    p_value: float
    groups: int

    def passes(self, alpha: float, min_gain: float) -> bool:
        """Whether the modality earns its place: significant at ``alpha`` and at least ``min_gain``.

        Args:
            alpha: Significance level.
            min_gain: Smallest relative gain worth a modality.

        Returns:
            Whether both hold.
        """
        return self.p_value < alpha and self.relative_gain >= min_gain


def video_groups(ids: Sequence[str]) -> list[str]:
    """The video of each clip id (``"<video_id>$_$<clip_id>"``); the id itself otherwise."""
    return [clip.split(ID_SEPARATOR, 1)[0] for clip in ids]


def bootstrap_p_value(gain: torch.Tensor, groups: Sequence[str], samples: int = 10000,
                      seed: int = 0) -> float:
    """One-sided p-value that the mean gain is not above zero, resampling whole groups.

    Args:
        gain: Per-sample gain, shape ``(N,)``.
        groups: The group of each sample (e.g. its video).
        samples: Bootstrap resamples.
        seed: Seed of the resampling, so a decision can be repeated exactly.

    Returns:
        ``(1 + #{resampled mean <= 0}) / (1 + samples)``.

    Raises:
        ValueError: If ``gain`` is empty or ``groups`` does not match it in length.
    """
    if gain.numel() == 0:
        raise ValueError("no validation samples to test a modality's gain on")
    if len(groups) != gain.numel():
        raise ValueError(f"{len(groups)} group names for {gain.numel()} gains")
    position = {name: i for i, name in enumerate(sorted(set(groups)))}
    index = torch.tensor([position[g] for g in groups])
    sums = torch.zeros(len(position), dtype=torch.float64).index_add_(0, index, gain.double())
    counts = torch.bincount(index, minlength=len(position)).double()
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(len(position), (samples, len(position)), generator=generator)
    means = sums[draws].sum(1) / counts[draws].sum(1)
    return (1 + int((means <= 0).sum())) / (1 + samples)


def measure_gain(modality: str, others: Sequence[str], errors: Callable[[frozenset[str]], torch.Tensor],
                 groups: Sequence[str], samples: int = 10000, seed: int = 0) -> GainTest:
    """Tests one modality's gain on top of the others.

    Args:
        modality: The modality tested.
        others: The modalities in use beside it.
        errors: Per-sample absolute error of the model using exactly the given modalities.
        groups: The group of each sample.
        samples: Bootstrap resamples.
        seed: Seed of the resampling.

    Returns:
        The gain and its p-value.
    """
    without = errors(frozenset(others))
    gain = without - errors(frozenset(others) | {modality})
    mae_without = float(without.mean())
    relative = float(gain.mean()) / mae_without if mae_without > 0 else 0.0
    return GainTest(modality, tuple(others), float(gain.mean()), relative,
                    bootstrap_p_value(gain, groups, samples, seed), len(set(groups)))


def select_modalities(modalities: Sequence[str], errors: Callable[[frozenset[str]], torch.Tensor],
                      groups: Sequence[str], alpha: float = 0.05, samples: int = 10000,
                      seed: int = 0, min_gain: float = 0.005) -> tuple[list[str], list[GainTest]]:
    """Backward elimination: drops the weakest failing modality until every one left passes.

    The weakest is the least significant; one modality is always kept, whatever its evidence.

    Args:
        modalities: The candidates, in the model's order.
        errors: Per-sample absolute error of the model using exactly the given modalities.
        groups: The group of each sample.
        alpha: Significance level; a modality stays if its p-value is below it.
        samples: Bootstrap resamples.
        seed: Seed of the resampling.
        min_gain: Smallest relative MAE gain worth a modality (0.005: 0.5 %).

    Returns:
        The modalities kept, and every test made, in order (the last round's describe the kept).

    Raises:
        ValueError: If ``alpha`` is not in (0, 1), ``min_gain`` is negative or there is no
            candidate.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if min_gain < 0:
        raise ValueError(f"min_gain must be >= 0, got {min_gain}")
    if not modalities:
        raise ValueError("no modality to select from")
    kept = list(modalities)
    history: list[GainTest] = []
    while len(kept) > 1:
        tests = [measure_gain(m, [o for o in kept if o != m], errors, groups, samples, seed) for m in kept]
        history.extend(tests)
        weakest = max(tests, key=lambda t: (not t.passes(alpha, min_gain), t.p_value, -t.gain))
        if weakest.passes(alpha, min_gain):
            break
        kept.remove(weakest.modality)
    return kept, history
