"""Masked pooling over a time axis, shared by the sequence encoders."""

from __future__ import annotations

import torch


def all_valid(x: torch.Tensor) -> torch.Tensor:
    """A mask that counts every position of a batch as valid.

    Args:
        x: Token ids ``(B, L)`` or vectors ``(B, L, D)``.

    Returns:
        True everywhere, shape ``(B, L)``.
    """
    return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Averages the valid steps of a sequence.

    Args:
        x: Sequence, shape ``(B, T, D)``.
        mask: True at valid steps, shape ``(B, T)``.

    Returns:
        Shape ``(B, D)``; all zeros for a sample with no valid step.
    """
    weights = mask.unsqueeze(-1).to(x.dtype)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def masked_mean_std(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Statistics pooling: the mean and standard deviation of the valid steps.

    Args:
        x: Sequence, shape ``(B, T, D)``.
        mask: True at valid steps, shape ``(B, T)``.

    Returns:
        Shape ``(B, 2 * D)``, mean then standard deviation.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean.unsqueeze(1)) ** 2, mask)
    return torch.cat([mean, var.clamp(min=1e-8).sqrt()], dim=-1)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over the valid steps.

    Args:
        x: Sequence, shape ``(B, T, D)``.
        mask: True at valid steps, shape ``(B, T)``.

    Returns:
        Shape ``(B, D)``; zeros for a sample with no valid step.
    """
    filled = x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
    return torch.where(torch.isfinite(filled), filled, torch.zeros_like(filled))
