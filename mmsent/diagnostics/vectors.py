"""Parameter-space vectors (one tensor per parameter, never flattened) and their arithmetic.

A :data:`LossFn` is a zero-argument callable returning the loss at the parameters' current
value, so it can be re-evaluated after they move.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

Vector = list[Tensor]
LossFn = Callable[[], Tensor]


def dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    """Returns the inner product of two parameter-space vectors."""
    return float(sum((x * y).sum() for x, y in zip(a, b, strict=True)))


def norm(a: Sequence[Tensor]) -> float:
    """Returns the Euclidean norm of a parameter-space vector."""
    return math.sqrt(dot(a, a))


def axpy(alpha: float, x: Sequence[Tensor], y: Sequence[Tensor]) -> Vector:
    """Returns ``alpha * x + y``."""
    return [alpha * xi + yi for xi, yi in zip(x, y, strict=True)]


def scale(alpha: float, x: Sequence[Tensor]) -> Vector:
    """Returns ``alpha * x``."""
    return [alpha * xi for xi in x]


def random_unit_vector(like: Sequence[Tensor], generator: torch.Generator) -> Vector:
    """Draws a direction uniformly on the unit sphere of parameter space.

    Drawn on the CPU from ``generator`` alone: the same on every device, and the global
    random state (the training's draws) untouched.

    Args:
        like (Sequence[Tensor]): Tensors that fix shapes, dtypes and devices.
        generator (torch.Generator): A seeded CPU generator.

    Returns:
        Vector: A vector of norm 1.
    """
    vector = [torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.device, p.dtype)
              for p in like]
    return scale(1.0 / norm(vector), vector)


def checked_parameters(params: Iterable[Tensor], caller: str) -> list[Tensor]:
    """Returns ``params`` as a list, refusing an empty one.

    Args:
        params (Iterable[Tensor]): The parameters.
        caller (str): The function asking, for the message.

    Returns:
        list[Tensor]: The parameters.

    Raises:
        ValueError: If there is no parameter, naming ``caller``.
    """
    params = list(params)
    if not params:
        raise ValueError(f"{caller} needs at least one parameter")
    return params
