"""Second-order diagnostics for telling a saddle point from a minimum.

At a critical point the gradient vanishes and the Hessian decides: all eigenvalues
positive is a minimum, mixed signs (an indefinite Hessian) is a saddle, which gradient
descent leaves only slowly because the gradient is small along the escape direction.
Anything else, and any point whose gradient is not small, the test cannot decide:
:func:`diagnose_critical_point` then says so rather than guess.

The Hessian is never formed: everything is built on Hessian-vector products from double
backpropagation, so the cost is a few backward passes per product. Vectors and loss
closures are those of :mod:`mmsent.diagnostics.vectors`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mmsent.diagnostics.lanczos import (
    DEFAULT_ITERATIONS,
    DEFAULT_RTOL,
    LanczosResult,
    Operator,
    lanczos,
)
from mmsent.diagnostics.vectors import LossFn, Vector, checked_parameters, norm

MINIMUM, SADDLE, CANNOT_TELL = "minimum", "saddle", "cannot tell"
VERDICT_CODES: dict[str, int] = {CANNOT_TELL: 0, MINIMUM: 1, SADDLE: 2}
"""The number logged for each verdict (loggers take numbers, not text)."""
DEFAULT_GRAD_TOL = 1e-3
DEFAULT_CURVATURE_TOL = 1e-6


def _hessian_operator(loss_fn: LossFn, params: Sequence[Tensor]) -> tuple[Operator, Vector]:
    """Builds ``v -> Hv`` for the Hessian of ``loss_fn`` at the current parameters.

    The loss and its gradient graph are computed once and reused by every product, which
    also keeps the Hessian consistent when ``loss_fn`` is stochastic.

    Args:
        loss_fn (LossFn): Returns the scalar loss.
        params (Sequence[Tensor]): The parameters, all requiring gradients.

    Returns:
        tuple[Operator, Vector]: A function from a vector to its Hessian-vector product,
        and the (detached) gradient at the current parameters.
    """
    with torch.enable_grad():
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    gradient = [
        torch.zeros_like(p) if g is None else g.detach()
        for p, g in zip(params, grads, strict=True)
    ]

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

    return apply, gradient


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
    return _hessian_operator(loss_fn, list(params))[0](vector)


def hessian_extremes(
    loss_fn: LossFn,
    params: Iterable[Tensor],
    iterations: int = DEFAULT_ITERATIONS,
    rtol: float = DEFAULT_RTOL,
    seed: int = 0,
) -> LanczosResult:
    """Estimates the extreme Hessian eigenvalues by Lanczos on Hessian-vector products.

    See :func:`mmsent.diagnostics.lanczos.lanczos` for the method, its stopping rule and
    the convergence measure. A negative ``lambda_min`` is a certificate of negative
    curvature even before convergence (it is a Rayleigh quotient); a positive one is only
    an upper bound until ``converged_min``.

    Args:
        loss_fn (LossFn): Returns the scalar loss at the current parameters.
        params (Iterable[Tensor]): The parameters, all requiring gradients.
        iterations (int): The most Hessian-vector products.
        rtol (float): Convergence tolerance on the Ritz residuals, relative to their
            Ritz values.
        seed (int): Seed of the private generator for the random start (and restart)
            vectors; the global random state is not touched.

    Returns:
        LanczosResult: The extreme eigenvalue estimates and their residuals.

    Raises:
        ValueError: If ``params`` is empty or ``iterations < 1``.
    """
    params = checked_parameters(params, "hessian_extremes")
    operator, _ = _hessian_operator(loss_fn, params)
    return lanczos(operator, params, iterations, rtol, torch.Generator().manual_seed(seed))


def extreme_hessian_eigenvalues(
    loss_fn: LossFn,
    params: Iterable[Tensor],
    iterations: int = DEFAULT_ITERATIONS,
    seed: int = 0,
    rtol: float = DEFAULT_RTOL,
) -> tuple[float, float, Vector]:
    """Estimates the largest and smallest Hessian eigenvalues (see :func:`hessian_extremes`).

    Args:
        loss_fn (LossFn): Returns the scalar loss at the current parameters.
        params (Iterable[Tensor]): The parameters, all requiring gradients.
        iterations (int): The most Hessian-vector products.
        seed (int): Seed for the random starting vector.
        rtol (float): Convergence tolerance on the Ritz residuals.

    Returns:
        tuple[float, float, Vector]: ``(λ_max, λ_min, v_min)`` where ``v_min`` is a unit
        eigenvector estimate for ``λ_min``, shaped like ``params``.

    Raises:
        ValueError: If ``params`` is empty or ``iterations < 1``.
    """
    result = hessian_extremes(loss_fn, params, iterations, rtol, seed)
    return result.lambda_max, result.lambda_min, result.eigenvector_min


@dataclass
class CriticalPointDiagnosis:
    """The second-derivative test at the current parameters.

    Attributes:
        verdict (str): ``"minimum"``, ``"saddle"`` or ``"cannot tell"``.
        reason (str): Why, in words (the numbers that decided it).
        gradient_norm (float): ``‖∇L‖`` at the point.
        spectrum (LanczosResult): The extreme Hessian eigenvalue estimates.
    """

    verdict: str
    reason: str
    gradient_norm: float
    spectrum: LanczosResult

    @property
    def code(self) -> int:
        """int: The verdict as a number, from :data:`VERDICT_CODES`."""
        return VERDICT_CODES[self.verdict]


def classify_critical_point(
    gradient_norm: float,
    spectrum: LanczosResult,
    grad_tol: float = DEFAULT_GRAD_TOL,
    curvature_tol: float = DEFAULT_CURVATURE_TOL,
) -> tuple[str, str]:
    """Applies the second-derivative test, saying "cannot tell" when it cannot decide.

    The test speaks of critical points only: a point whose gradient norm exceeds
    ``grad_tol`` is neither a minimum nor a saddle. At a critical point:

    * ``λ_min < 0 < λ_max`` (an indefinite Hessian) is a **saddle**. Both Ritz values are
      Rayleigh quotients, so this needs no convergence: curvature of both signs has been
      seen along actual directions.
    * ``λ_min > 0`` (positive definite) is a **minimum**, but only once ``λ_min`` has
      converged and ``λ_min`` minus its Ritz residual is still positive: before that it is
      an upper bound, and a true negative eigenvalue may not have been found yet.
    * Otherwise it **cannot tell**: a zero eigenvalue leaves the decision to higher-order
      terms (``x⁴`` and ``-x⁴`` both have a zero Hessian at 0), and a Hessian without
      positive curvature (a maximum or a degenerate point) is neither case.

    An eigenvalue counts as zero within ``max(curvature_tol, spectrum.rounding)``: the
    Hessian-vector products are only accurate to rounding level relative to the largest
    eigenvalue, so a smaller curvature cannot be told from none.

    Args:
        gradient_norm (float): ``‖∇L‖`` at the point.
        spectrum (LanczosResult): The extreme Hessian eigenvalue estimates there.
        grad_tol (float): The largest gradient norm of a critical point. With minibatch
            losses the gradient of one batch is rarely this small; evaluate on a larger
            batch or raise the tolerance knowingly.
        curvature_tol (float): Eigenvalues within this of 0 count as zero curvature.

    Returns:
        tuple[str, str]: The verdict and the reason.
    """
    flat = max(curvature_tol, spectrum.rounding)
    lambda_min, lambda_max = spectrum.lambda_min, spectrum.lambda_max
    if gradient_norm > grad_tol:
        return CANNOT_TELL, (
            f"not a critical point: gradient norm {gradient_norm:.3g} > grad_tol {grad_tol:.3g}"
        )
    if lambda_min < -flat and lambda_max > flat:
        return SADDLE, (
            f"indefinite Hessian: lambda_min {lambda_min:.3g} < 0 < lambda_max {lambda_max:.3g}"
        )
    if lambda_min < -flat:
        return CANNOT_TELL, (
            f"no positive curvature found (lambda_max {lambda_max:.3g}): not a minimum; "
            "a maximum or a degenerate point"
        )
    if not spectrum.converged_min:
        return CANNOT_TELL, (
            f"lambda_min {lambda_min:.3g} has not converged (Ritz residual "
            f"{spectrum.residual_min:.3g} > {spectrum.tolerance_min:.3g}): only an upper bound"
        )
    if lambda_min - spectrum.residual_min > flat:
        return MINIMUM, f"positive definite Hessian: lambda_min {lambda_min:.3g} > 0"
    return CANNOT_TELL, (
        f"zero curvature (lambda_min {lambda_min:.3g} within {flat:.3g} of 0): "
        "higher-order terms decide"
    )


def diagnose_critical_point(
    loss_fn: LossFn,
    params: Iterable[Tensor],
    iterations: int = DEFAULT_ITERATIONS,
    rtol: float = DEFAULT_RTOL,
    grad_tol: float = DEFAULT_GRAD_TOL,
    curvature_tol: float = DEFAULT_CURVATURE_TOL,
    seed: int = 0,
) -> CriticalPointDiagnosis:
    """Tells a minimum from a saddle at the current parameters, or says it cannot.

    Computes the gradient norm and the extreme Hessian eigenvalues (one loss evaluation,
    then up to ``iterations`` Hessian-vector products) and applies
    :func:`classify_critical_point`.

    Args:
        loss_fn (LossFn): Returns the scalar loss at the current parameters.
        params (Iterable[Tensor]): The parameters, all requiring gradients.
        iterations (int): The most Hessian-vector products.
        rtol (float): Convergence tolerance on the Ritz residuals, relative to their
            Ritz values.
        grad_tol (float): The largest gradient norm of a critical point.
        curvature_tol (float): Eigenvalues within this of 0 count as zero curvature.
        seed (int): Seed of the private generator for the Lanczos start vector.

    Returns:
        CriticalPointDiagnosis: The verdict, its reason, the gradient norm and the
        eigenvalue estimates.

    Raises:
        ValueError: If ``params`` is empty or ``iterations < 1``.
    """
    params = checked_parameters(params, "diagnose_critical_point")
    operator, gradient = _hessian_operator(loss_fn, params)
    spectrum = lanczos(operator, params, iterations, rtol, torch.Generator().manual_seed(seed))
    gradient_norm = norm(gradient)
    verdict, reason = classify_critical_point(gradient_norm, spectrum, grad_tol, curvature_tol)
    return CriticalPointDiagnosis(verdict, reason, gradient_norm, spectrum)


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
