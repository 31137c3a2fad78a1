"""Second-order diagnostics for telling a saddle point from a minimum.

At a critical point the gradient vanishes and the Hessian decides: all eigenvalues
positive is a minimum, mixed signs (an indefinite Hessian) is a saddle, which gradient
descent leaves only slowly because the gradient is small along the escape direction.
The Hessian is never formed: everything is built on Hessian-vector products from double
backpropagation, so the cost is a few backward passes per product.

Parameter-space vectors are lists of tensors shaped like the parameters they belong to.
``loss_fn`` is a zero-argument callable returning the scalar loss at the current value of
the parameters, so the same closure can be re-evaluated after the parameters move.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

LossFn = Callable[[], Tensor]
Vector = list[Tensor]
HessianOperator = Callable[[Sequence[Tensor]], Vector]


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    """Returns the inner product of two parameter-space vectors."""
    return float(sum((x * y).sum() for x, y in zip(a, b, strict=True)))


def _norm(a: Sequence[Tensor]) -> float:
    """Returns the Euclidean norm of a parameter-space vector."""
    return math.sqrt(_dot(a, a))


def _axpy(alpha: float, x: Sequence[Tensor], y: Sequence[Tensor]) -> Vector:
    """Returns ``alpha * x + y``."""
    return [alpha * xi + yi for xi, yi in zip(x, y, strict=True)]


def _scale(alpha: float, x: Sequence[Tensor]) -> Vector:
    """Returns ``alpha * x``."""
    return [alpha * xi for xi in x]


def _random_unit_vector(params: Sequence[Tensor], generator: torch.Generator) -> Vector:
    """Draws a direction uniformly on the unit sphere of parameter space.

    The draw happens on the CPU so that a seed gives the same direction on every device.

    Args:
        params (Sequence[Tensor]): The parameters that fix shapes, dtypes and devices.
        generator (torch.Generator): A seeded CPU generator.

    Returns:
        Vector: A vector of norm 1.
    """
    vector = [
        torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.device, p.dtype)
        for p in params
    ]
    return _scale(1.0 / _norm(vector), vector)


def _hessian_operator(loss_fn: LossFn, params: Sequence[Tensor]) -> HessianOperator:
    """Builds ``v -> Hv`` for the Hessian of ``loss_fn`` at the current parameters.

    The loss and its gradient graph are computed once and reused by every product, which
    also keeps the Hessian consistent when ``loss_fn`` is stochastic.

    Args:
        loss_fn (LossFn): Returns the scalar loss.
        params (Sequence[Tensor]): The parameters, all requiring gradients.

    Returns:
        HessianOperator: A function from a vector to its Hessian-vector product.
    """
    with torch.enable_grad():
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)

    def apply(vector: Sequence[Tensor]) -> Vector:
        with torch.enable_grad():
            terms = [(g * v).sum() for g, v in zip(grads, vector, strict=True) if g is not None]
            directional = sum(terms) if terms else None
            # A loss linear in the parameters leaves a gradient with no graph: H = 0.
            if directional is None or not directional.requires_grad:
                return [torch.zeros_like(p) for p in params]
            products = torch.autograd.grad(
                directional, params, retain_graph=True, allow_unused=True
            )
        return [
            torch.zeros_like(p) if h is None else h.detach()
            for p, h in zip(params, products, strict=True)
        ]

    return apply


def hessian_vector_product(
    loss_fn: LossFn, params: Iterable[Tensor], vector: Sequence[Tensor]
) -> Vector:
    """Computes ``Hv`` by double backpropagation: ``H v = ∇(∇L · v)``.

    Args:
        loss_fn (LossFn): Returns the scalar loss at the current parameters.
        params (Iterable[Tensor]): The parameters, all requiring gradients.
        vector (Sequence[Tensor]): ``v``, shaped like ``params``.

    Returns:
        Vector: ``Hv``, shaped like ``params`` and detached from the graph.
    """
    return _hessian_operator(loss_fn, list(params))(vector)


def _lanczos(
    hessian: HessianOperator, start: Vector, iterations: int
) -> tuple[Tensor, list[Vector]]:
    """Runs Lanczos with full reorthogonalisation.

    Args:
        hessian (HessianOperator): ``v -> Hv``.
        start (Vector): A unit starting vector.
        iterations (int): The most Krylov vectors to build.

    Returns:
        tuple[Tensor, list[Vector]]: The tridiagonal matrix ``T`` (float64) and the
        orthonormal basis whose coordinates it is expressed in.
    """
    basis: list[Vector] = []
    alphas: list[float] = []
    betas: list[float] = []
    vector = start
    rel_tol = math.sqrt(torch.finfo(start[0].dtype).eps)
    while True:
        basis.append(vector)
        w = hessian(vector)
        alphas.append(_dot(w, vector))
        if len(basis) == iterations:
            break
        scale = _norm(w)
        # Full reorthogonalisation (run twice) against every basis vector keeps the basis
        # orthonormal in finite precision; without it Lanczos produces ghost eigenvalues.
        for _ in range(2):
            for u in basis:
                w = _axpy(-_dot(w, u), u, w)
        beta = _norm(w)
        if beta <= rel_tol * scale or beta == 0.0:
            # The Krylov space is invariant under H: T's eigenvalues are exact.
            break
        betas.append(beta)
        vector = _scale(1.0 / beta, w)
    size = len(alphas)
    tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if size > 1:
        off = torch.tensor(betas[: size - 1], dtype=torch.float64)
        tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
    return tridiagonal, basis


def extreme_hessian_eigenvalues(
    loss_fn: LossFn, params: Iterable[Tensor], iterations: int = 20, seed: int = 0
) -> tuple[float, float, Vector]:
    """Estimates the largest and smallest Hessian eigenvalues with the Lanczos method.

    Lanczos builds an orthonormal basis of the Krylov space ``{v, Hv, H²v, ...}`` from a
    random ``v``; the eigenvalues of ``H`` restricted to that space (Ritz values) converge
    to both ends of the spectrum at once, much faster than power iteration and without
    its trouble when ``λ_max ≈ -λ_min``. Ritz values are Rayleigh quotients, so
    ``λ_min < 0`` is a certificate of negative curvature even before convergence. When
    there are no more parameters than ``iterations`` the result is exact.

    Memory: the basis holds up to ``iterations`` copies of the parameters.

    Args:
        loss_fn (LossFn): Returns the scalar loss at the current parameters.
        params (Iterable[Tensor]): The parameters, all requiring gradients.
        iterations (int): The number of Hessian-vector products (Krylov dimension).
        seed (int): Seed for the random starting vector.

    Returns:
        tuple[float, float, Vector]: ``(λ_max, λ_min, v_min)`` where ``v_min`` is a unit
        eigenvector estimate for ``λ_min``, shaped like ``params``.

    Raises:
        ValueError: If ``params`` is empty or ``iterations < 1``.
    """
    params = list(params)
    if not params:
        raise ValueError("extreme_hessian_eigenvalues needs at least one parameter")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    size = sum(p.numel() for p in params)
    generator = torch.Generator().manual_seed(seed)
    start = _random_unit_vector(params, generator)
    hessian = _hessian_operator(loss_fn, params)
    tridiagonal, basis = _lanczos(hessian, start, min(iterations, size))
    values, vectors = torch.linalg.eigh(tridiagonal)
    coords = vectors[:, 0].tolist()
    eigenvector = [torch.zeros_like(p) for p in params]
    for weight, basis_vector in zip(coords, basis, strict=False):
        eigenvector = _axpy(weight, basis_vector, eigenvector)
    eigenvector = _scale(1.0 / _norm(eigenvector), eigenvector)
    return float(values[-1]), float(values[0]), eigenvector


def is_indefinite(lambda_max: float, lambda_min: float, tol: float = 1e-6) -> bool:
    """Tells whether the Hessian has curvature of both signs (a saddle, if at a critical
    point).

    Args:
        lambda_max (float): The largest eigenvalue.
        lambda_min (float): The smallest eigenvalue.
        tol (float): Eigenvalues within ``tol`` of 0 count as flat, not curved.

    Returns:
        bool: ``lambda_max > tol and lambda_min < -tol``.
    """
    return lambda_max > tol and lambda_min < -tol


@dataclass
class ProbeResult:
    """The loss around the current parameters along random directions.

    Attributes:
        base_loss (float): The loss at the current parameters.
        losses (list[float]): The loss at ``params + radius * d`` for each direction ``d``.
        best_delta (float): The lowest ``loss - base_loss``; negative when a direction
            descends.
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
    """Evaluates the loss at ``params + step`` and moves the parameters back exactly.

    Args:
        loss_fn (LossFn): Returns the scalar loss at the current parameters.
        params (Sequence[Tensor]): The parameters, modified in place and restored.
        step (Sequence[Tensor]): The displacement.

    Returns:
        float: The loss at the displaced point.
    """
    # Copying the saved values back is bit-exact, unlike subtracting the step again.
    saved = [p.detach().clone() for p in params]
    try:
        for p, s in zip(params, step, strict=True):
            p.add_(s)
        return float(loss_fn())
    finally:
        for p, original in zip(params, saved, strict=True):
            p.copy_(original)


def probe_neighbourhood(
    loss_fn: LossFn,
    params: Iterable[Tensor],
    radius: float = 1e-2,
    num_directions: int = 8,
    seed: int = 0,
) -> ProbeResult:
    """Evaluates the loss at ``num_directions`` random points at distance ``radius``.

    The parameters are restored bit-exactly afterwards, also when ``loss_fn`` raises.
    Put the model in eval mode first if dropout or batch-norm statistics would otherwise
    add noise to (or be changed by) the evaluations.

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
    params = list(params)
    if not params:
        raise ValueError("probe_neighbourhood needs at least one parameter")
    if num_directions < 1:
        raise ValueError(f"num_directions must be >= 1, got {num_directions}")
    with torch.no_grad():
        base_loss = float(loss_fn())
    generator = torch.Generator().manual_seed(seed)
    directions = [_random_unit_vector(params, generator) for _ in range(num_directions)]
    losses = [_loss_after_step(loss_fn, params, _scale(radius, d)) for d in directions]
    best = min(range(num_directions), key=losses.__getitem__)
    return ProbeResult(
        base_loss=base_loss,
        losses=losses,
        best_delta=losses[best] - base_loss,
        best_direction=directions[best],
        radius=radius,
    )
