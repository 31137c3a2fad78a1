"""The loss along random directions: if one at distance ``radius`` descends, the point is
not a minimum at that scale, whatever the Hessian says."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mmsent.diagnostics.vectors import LossFn, Vector, checked_parameters, random_unit_vector, scale


@dataclass
class ProbeResult:
    """The loss around the current parameters along random directions.

    Attributes:
        base_loss (float): The loss at the current parameters.
        losses (list[float]): The loss at ``params + radius * d`` for each direction ``d``.
        best_delta (float): The lowest ``loss - base_loss``; negative when a direction descends.
        best_direction (Vector): The unit direction that reached ``best_delta``.
        radius (float): The step length used.
    """

    base_loss: float
    losses: list[float]
    best_delta: float
    best_direction: Vector
    radius: float


@torch.no_grad()
def _loss_after_step(loss_fn: LossFn, params: Sequence[Tensor], step: Sequence[Tensor]) -> float:
    """Evaluates the loss at ``params + step`` and moves the parameters back exactly."""
    # Copying the saved values back is bit-exact, unlike subtracting the step again.
    saved = [p.detach().clone() for p in params]
    try:
        for p, s in zip(params, step, strict=True):
            p.add_(s)
        return float(loss_fn())
    finally:
        for p, original in zip(params, saved, strict=True):
            p.copy_(original)


def probe_neighbourhood(loss_fn: LossFn, params: Iterable[Tensor], radius: float = 1e-2,
                        num_directions: int = 8, seed: int = 0) -> ProbeResult:
    """Evaluates the loss at ``num_directions`` random points at distance ``radius``.

    The parameters are restored bit-exactly, also when ``loss_fn`` raises. Use eval mode,
    lest dropout or batch-norm statistics add noise or change.

    Args:
        loss_fn (LossFn): Returns the scalar loss at the current parameters.
        params (Iterable[Tensor]): The parameters to perturb.
        radius (float): The step length.
        num_directions (int): How many random unit directions to try.
        seed (int): Seed for the directions.

    Returns:
        ProbeResult: The base loss, the loss along each direction and the best direction.

    Raises:
        ValueError: If ``params`` is empty or ``num_directions < 1``.
    """
    params = checked_parameters(params, "probe_neighbourhood")
    if num_directions < 1:
        raise ValueError(f"num_directions must be >= 1, got {num_directions}")
    with torch.no_grad():
        base_loss = float(loss_fn())
    generator = torch.Generator().manual_seed(seed)
    directions = [random_unit_vector(params, generator) for _ in range(num_directions)]
    losses = [_loss_after_step(loss_fn, params, scale(radius, d)) for d in directions]
    best = min(range(num_directions), key=losses.__getitem__)
    return ProbeResult(base_loss=base_loss, losses=losses, best_delta=losses[best] - base_loss,
                       best_direction=directions[best], radius=radius)
