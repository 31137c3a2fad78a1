"""The Lanczos method for the extreme eigenvalues of a symmetric operator.

Lanczos builds an orthonormal basis ``Q`` of the Krylov space ``{v, Av, A²v, ...}`` from a
random ``v``; the eigenvalues of ``T = QᵀAQ`` (a tridiagonal matrix, the Ritz values)
approach both ends of ``A``'s spectrum at once, far faster than power iteration. Every Ritz
value is a Rayleigh quotient of ``A``, so the smallest is an upper bound on ``λ_min`` and
the largest a lower bound on ``λ_max`` at every step, converged or not.

Three choices make it trustworthy on the ill-conditioned spectra of trained networks:

* **Full reorthogonalisation** (twice, against every basis vector) keeps ``Q`` orthonormal
  in finite precision; without it Lanczos produces spurious copies of converged
  eigenvalues.
* **Breakdown relative to the spectrum's scale.** The new basis vector is the residual
  ``r = Aq - (projections on Q)``; when ``‖r‖`` is at rounding level
  (:data:`ROUNDING_LEVEL` ``· ε`` times the spectrum's scale, estimated by the largest
  ``|Ritz value|``) the Krylov space is invariant. A threshold tied to ``‖Aq‖``, or far
  above ``ε``, stops as soon as a dominant eigenvalue is captured and never sees the
  small negative ones beside it.
* **Restart on breakdown** from a fresh random vector orthogonal to ``Q``, so an invariant
  subspace found early does not end the search: the rest of the space is still explored.

Convergence is measured, not assumed: the Ritz pair ``(θ, Qy)`` has the residual
``‖A Qy - θ Qy‖ = β |y_k|`` (``β`` the norm of the last ``r``, ``y_k`` the last coordinate
of ``y``), and some eigenvalue of ``A`` lies within that residual of ``θ``. The iteration
stops when both extreme pairs have residuals below ``rtol`` times their Ritz values (but
never right at a breakdown, where every residual vanishes), or when the budget of
products is spent. The tolerance is relative to each Ritz value: one relative to the
largest eigenvalue would accept a smallest Ritz value whose sign is still open. A
converged extreme Ritz value is taken as the extreme eigenvalue; Lanczos misses an
eigenvalue only if its eigenvector is (almost) orthogonal to the start, which a random
start makes unlikely but not impossible.
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
        rtol (float): A pair ``(θ, x)`` has converged when its residual is at most
            ``rtol · |θ|``.
        products (int): Operator applications used (the Krylov dimension).
        restarts (int): How often an invariant subspace was found and the search went
            on from a fresh random vector.
        exhausted (bool): Whether the basis spans the whole space (the result is then
            exact up to rounding).
        rounding (float): The rounding level of the products, ``ROUNDING_LEVEL · ε ·
            scale``: eigenvalues closer to 0 than this cannot be told from 0.
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
    """Assembles the symmetric tridiagonal matrix ``T`` in float64.

    Args:
        alphas (list[float]): The diagonal, ``k`` entries.
        betas (list[float]): The off-diagonal, ``k - 1`` entries (``0`` at restarts).

    Returns:
        Tensor: ``T`` of shape ``(k, k)``.
    """
    matrix = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas, dtype=torch.float64)
        matrix += torch.diag(off, 1) + torch.diag(off, -1)
    return matrix


def _ritz_residuals(coords: Tensor, beta: float, dropped: list[tuple[int, float]]) -> Tensor:
    """Computes ``‖A Qy - θ Qy‖`` for every Ritz pair from ``T``'s eigenvectors.

    ``AQ = QT + r e_kᵀ + Σ r_b e_bᵀ``, where ``r`` is the last remainder and each ``r_b``
    one dropped at a restart, all orthogonal to ``Q``; so the residual of ``Qy`` is the
    norm of ``(‖r‖ y_k, ‖r_b‖ y_b, ...)``.

    Args:
        coords (Tensor): ``T``'s eigenvectors as columns, shape ``(k, k)``.
        beta (float): ``‖r‖``.
        dropped (list[tuple[int, float]]): ``(b, ‖r_b‖)`` for each restart.

    Returns:
        Tensor: One residual per Ritz pair, in the order of ``T``'s eigenvalues.
    """
    squares = (beta * coords[-1]).pow(2)
    for index, remainder in dropped:
        squares = squares + (remainder * coords[index]).pow(2)
    return squares.sqrt()


def _orthogonalise(vector: Vector, basis: list[Vector]) -> Vector:
    """Removes ``vector``'s components along an orthonormal basis, twice.

    One Gram-Schmidt pass leaves components of rounding size times the vector's
    original length, which matter when the projection removed most of it; a second
    pass brings them to rounding level ("twice is enough").

    Args:
        vector (Vector): The vector to orthogonalise.
        basis (list[Vector]): Orthonormal vectors.

    Returns:
        Vector: The orthogonalised vector.
    """
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
        operator (Operator): ``v -> Av`` for a symmetric ``A``, on vectors shaped like
            ``like``.
        like (Sequence[Tensor]): Tensors that fix the vectors' shapes, dtype and device.
        iterations (int): The most operator applications (Krylov dimension); capped at
            the dimension of the space.
        rtol (float): Stop once both extreme Ritz residuals are at most ``rtol`` times
            their Ritz values.
        generator (torch.Generator | None): The source of the random start and restart
            vectors; a generator seeded with 0 when ``None``. The global random state
            is never used.
        start (Sequence[Tensor] | None): A starting vector instead of a random one
            (normalised here); restarts are still random.
        deadline (float | None): A ``time.perf_counter()`` value after which no further
            product is started (at least one always is); the result then reports
            whatever has converged by then.

    Returns:
        LanczosResult: The extreme Ritz values, their residuals and the Ritz vector of
        the smallest.

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
