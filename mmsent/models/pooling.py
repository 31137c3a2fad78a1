"""Masked pooling over a time axis, shared by the sequence encoders."""

from __future__ import annotations

import torch


def all_valid(x: torch.Tensor) -> torch.Tensor:
    """Returns a mask ``(B, L)`` that counts every position of ``x`` valid: token ids ``(B, L)``
    or vectors ``(B, L, D)``."""
    return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Returns the mean ``(B, D)`` of the steps of ``x`` ``(B, T, D)`` that ``mask`` ``(B, T)``
    marks valid; all zeros for a sample with no valid step."""
    weights = mask.unsqueeze(-1).to(x.dtype)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def masked_mean_std(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Returns the statistics pooling ``(B, 2 * D)`` of ``x`` ``(B, T, D)`` over the steps
    ``mask`` ``(B, T)`` marks valid: their mean, then their standard deviation."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean.unsqueeze(1)) ** 2, mask)
    return torch.cat([mean, var.clamp(min=1e-8).sqrt()], dim=-1)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Returns the max ``(B, D)`` over the steps of ``x`` ``(B, T, D)`` that ``mask`` ``(B, T)``
    marks valid; zeros for a sample with no valid step."""
    filled = x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
    return torch.where(torch.isfinite(filled), filled, torch.zeros_like(filled))
