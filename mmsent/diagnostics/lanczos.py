"""The Lanczos method for the extreme eigenvalues of a symmetric operator.

Lanczos builds an orthonormal basis ``Q`` of the Krylov space ``{v, Av, A²v, ...}``; the
eigenvalues of the tridiagonal ``T = QᵀAQ`` (the Ritz values) approach both ends of the
spectrum at once. Each is a Rayleigh quotient, so the smallest is always an upper bound
on ``λ_min`` and the largest a lower bound on ``λ_max``, converged or not.

For the ill-conditioned spectra of trained networks: full reorthogonalisation (twice)
prevents spurious copies of converged eigenvalues; breakdown is declared when ``‖r‖`` is
at rounding level relative to the spectrum's scale (a higher threshold stops once a
dominant eigenvalue is captured and misses small negative ones); and a breakdown restarts
from a fresh random vector orthogonal to ``Q``.

Convergence is measured: the Ritz pair ``(θ, Qy)`` has residual ``β |y_k|``, and some
eigenvalue lies within it of ``θ``. The iteration stops when both extreme residuals are
below ``rtol`` times their own Ritz values (a tolerance relative to ``λ_max`` would accept
a ``λ_min`` whose sign is still open), or when the product budget is spent. An
eigenvalue whose eigenvector is almost orthogonal to the start can still be missed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mmsent.diagnostics.vectors import Vector, axpy, dot, norm, random_unit_vector, scale

Operator = Callable[[Sequence[Tensor]], Vector]

DEFAULT_ITERATIONS = 100
DEFAULT_RTOL = 1e-3
ROUNDING_LEVEL = 1.0
"""A product ``Av`` with a unit ``v`` is trusted to ``ROUNDING_LEVEL · ε · ‖A‖``."""


@dataclass
class LanczosResult:
    """The extreme Ritz pairs of a Lanczos run and how far they have converged.

    Attributes:
        lambda_max (float): The largest Ritz value, a lower bound on ``λ_max``.
        lambda_min (float): The smallest Ritz value, an upper bound on ``λ_min``.
        residual_max (float): ``‖Ax - θx‖`` of the largest Ritz pair.
        residual_min (float): ``‖Ax - θx‖`` of the smallest Ritz pair.
        eigenvector_min (Vector): The unit Ritz vector of ``lambda_min``.
        eigenvector_max (Vector | None): The unit Ritz vector of ``lambda_max``.
        scale (float): The largest ``|Ritz value|``, an estimate of ``‖A‖``.
        rtol (float): A pair ``(θ, x)`` has converged when its residual is at most ``rtol · |θ|``.
        products (int): Operator applications used (the Krylov dimension).
        restarts (int): Restarts from a fresh random vector after an invariant subspace.
        exhausted (bool): Whether the basis spans the whole space (exact up to rounding).
        rounding (float): ``ROUNDING_LEVEL · ε · scale``: eigenvalues closer to 0 than this
            cannot be told from 0.
    """

    lambda_max: float
    lambda_min: float
    residual_max: float
    residual_min: float
    eigenvector_min: Vector
    scale: float
    rtol: float
    products: int
    restarts: int
    exhausted: bool
    rounding: float
    eigenvector_max: Vector | None = None

    @property
    def tolerance_min(self) -> float:
        """float: The residual below which ``lambda_min`` counts as converged."""
        return self.rtol * abs(self.lambda_min)

    @property
    def converged_min(self) -> bool:
        """bool: Whether ``lambda_min`` is a converged eigenvalue estimate."""
        return self.exhausted or self.residual_min <= self.tolerance_min

    @property
    def converged_max(self) -> bool:
        """bool: Whether ``lambda_max`` is a converged eigenvalue estimate."""
        return self.exhausted or self.residual_max <= self.rtol * abs(self.lambda_max)

    @property
    def converged(self) -> bool:
        """bool: Whether both extreme estimates have converged."""
        return self.converged_min and self.converged_max


def _tridiagonal(alphas: list[float], betas: list[float]) -> Tensor:
    """The symmetric tridiagonal ``T`` in float64 (off-diagonal 0 at restarts)."""
    matrix = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas, dtype=torch.float64)
        matrix += torch.diag(off, 1) + torch.diag(off, -1)
    return matrix


def _ritz_residuals(coords: Tensor, beta: float, dropped: list[tuple[int, float]]) -> Tensor:
    """``‖A Qy - θ Qy‖`` for every Ritz pair, in the order of ``T``'s eigenvalues.

    ``AQ = QT + r e_kᵀ + Σ r_b e_bᵀ`` with ``r_b`` each remainder dropped at a restart
    (``dropped`` holds ``(b, ‖r_b‖)``), so the residual is ``‖(β y_k, ‖r_b‖ y_b, ...)‖``.
    """
    squares = (beta * coords[-1]).pow(2)
    for index, remainder in dropped:
        squares = squares + (remainder * coords[index]).pow(2)
    return squares.sqrt()


def _orthogonalise(vector: Vector, basis: list[Vector]) -> Vector:
    """Removes ``vector``'s components along an orthonormal basis; twice is enough."""
    for _ in range(2):
        for u in basis:
            vector = axpy(-dot(vector, u), u, vector)
    return vector


def lanczos(operator: Operator, like: Sequence[Tensor], iterations: int = DEFAULT_ITERATIONS,
            rtol: float = DEFAULT_RTOL, generator: torch.Generator | None = None,
            start: Sequence[Tensor] | None = None, deadline: float | None = None) -> LanczosResult:
    """Estimates the extreme eigenvalues of a symmetric operator by Lanczos.

    Memory: the basis holds up to ``iterations`` vectors shaped like ``like``.

    Args:
        operator (Operator): ``v -> Av`` for a symmetric ``A``.
        like (Sequence[Tensor]): Tensors that fix the vectors' shapes, dtype and device.
        iterations (int): The most operator applications, capped at the space's dimension.
        rtol (float): Stop once both extreme Ritz residuals are at most ``rtol`` times
            their Ritz values.
        generator (torch.Generator | None): Source of the random vectors (None: seed 0);
            the global random state is never used.
        start (Sequence[Tensor] | None): A start vector instead of a random one.
        deadline (float | None): A ``time.perf_counter()`` value after which no further
            product is started (at least one always is).

    Returns:
        LanczosResult: The extreme Ritz pairs and their residuals.

    Raises:
        ValueError: If ``like`` is empty, ``iterations < 1``, ``rtol < 0`` or the
            operator returns non-finite values.
    """
    if not like:
        raise ValueError("lanczos needs at least one tensor to shape its vectors")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if rtol < 0:
        raise ValueError(f"rtol must be >= 0, got {rtol}")
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    size = sum(t.numel() for t in like)
    budget = min(iterations, size)
    eps = torch.finfo(like[0].dtype).eps
    basis: list[Vector] = []
    alphas: list[float] = []
    betas: list[float] = []
    # (last index of a block, the remainder's norm) for each restart: that remainder is
    # dropped from T, so it still counts in the Ritz residuals.
    dropped: list[tuple[int, float]] = []
    if start is None:
        vector = random_unit_vector(like, generator)
    else:
        vector = scale(1.0 / norm(start), start)
    while True:
        basis.append(vector)
        residual = operator(vector)
        alphas.append(dot(residual, vector))
        residual = _orthogonalise(residual, basis)
        beta = norm(residual)
        if not math.isfinite(alphas[-1] + beta):
            raise ValueError(
                f"lanczos: the operator returned non-finite values at product {len(basis)}")
        values, coords = torch.linalg.eigh(_tridiagonal(alphas, betas))
        spectrum_scale = float(values.abs().max())
        ritz_residuals = _ritz_residuals(coords, beta, dropped)
        rounding = ROUNDING_LEVEL * eps * spectrum_scale
        if len(basis) == budget or (deadline is not None and time.perf_counter() >= deadline):
            break
        if beta <= rounding:
            # The Krylov space is invariant, so every Ritz pair has converged, but only
            # to eigenvalues that the start vector reached: go on from a fresh direction.
            dropped.append((len(basis) - 1, beta))
            betas.append(0.0)
            fresh = _orthogonalise(random_unit_vector(like, generator), basis)
            vector = scale(1.0 / norm(fresh), fresh)
        elif all(ritz_residuals[i] <= rtol * abs(float(values[i])) for i in (0, -1)):
            break
        else:
            betas.append(beta)
            vector = scale(1.0 / beta, residual)
    eigenvector, eigenvector_max = [torch.zeros_like(t) for t in like], [torch.zeros_like(t) for t in like]
    for low, high, basis_vector in zip(coords[:, 0].tolist(), coords[:, -1].tolist(), basis, strict=True):
        eigenvector = axpy(low, basis_vector, eigenvector)
        eigenvector_max = axpy(high, basis_vector, eigenvector_max)
    return LanczosResult(lambda_max=float(values[-1]), lambda_min=float(values[0]),
                         residual_max=float(ritz_residuals[-1]),
                         residual_min=float(ritz_residuals[0]),
                         eigenvector_min=scale(1.0 / norm(eigenvector), eigenvector),
                         scale=spectrum_scale, rtol=rtol, products=len(basis),
                         restarts=len(dropped), exhausted=len(basis) == size, rounding=rounding,
                         eigenvector_max=scale(1.0 / norm(eigenvector_max), eigenvector_max))
