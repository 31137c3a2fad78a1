"""Parameter-space vectors (lists of tensors shaped like the parameters) and their
arithmetic.

The diagnostics work on vectors with one tensor per parameter, so that a model's
parameters never have to be flattened into (and copied out of) one long vector. They
evaluate the loss through a :data:`LossFn`: a zero-argument callable returning the scalar
loss at the current value of the parameters, so the same closure can be re-evaluated after
the parameters move.
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

    The draw happens on the CPU with ``generator`` alone, so a seed gives the same
    direction on every device and the global random state is left untouched (a
    diagnostic run during training must not change the training's own random draws).

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
