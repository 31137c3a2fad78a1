"""Second-order test telling a saddle point from a minimum.

At a critical point, all Hessian eigenvalues positive is a minimum and mixed signs (an
indefinite Hessian) a saddle, which gradient descent leaves only slowly; anything else, or
a gradient that is not small, gets the verdict "cannot tell" rather than a guess. The
Hessian is never formed: only Hessian-vector products by double backpropagation.
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


def _hessian_operator(loss_fn: LossFn, params: Sequence[Tensor]) -> tuple[Operator, Vector, float]:
    """Returns ``v -> Hv``, the detached gradient and the loss at the current parameters.

    The gradient graph is built once and reused by every product, which keeps the Hessian
    consistent when ``loss_fn`` is stochastic.
    """
    with torch.enable_grad():
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    gradient = [torch.zeros_like(p) if g is None else g.detach()
                for p, g in zip(params, grads, strict=True)]

    def apply(vector: Sequence[Tensor]) -> Vector:
        with torch.enable_grad():
            terms = [(g * v).sum() for g, v in zip(grads, vector, strict=True) if g is not None]
            directional = sum(terms) if terms else None
            # A loss linear in the parameters leaves a gradient with no graph: H = 0.
            if directional is None or not directional.requires_grad:
                return [torch.zeros_like(p) for p in params]
            products = torch.autograd.grad(
                directional, params, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if h is None else h.detach()
                for p, h in zip(params, products, strict=True)]

    return apply, gradient, float(loss.detach())


def hessian_vector_product(loss_fn: LossFn, params: Iterable[Tensor],
                           vector: Sequence[Tensor]) -> Vector:
    """Computes ``Hv`` by double backpropagation: ``H v = ∇(∇L · v)``.

    Args:
        loss_fn (LossFn): Returns the scalar loss at the current parameters.
        params (Iterable[Tensor]): The parameters, all requiring gradients.
        vector (Sequence[Tensor]): ``v``, shaped like ``params``.

    Returns:
        Vector: ``Hv``, shaped like ``params`` and detached from the graph.
    """
    return _hessian_operator(loss_fn, list(params))[0](vector)


def hessian_extremes(loss_fn: LossFn, params: Iterable[Tensor],
                     iterations: int = DEFAULT_ITERATIONS, rtol: float = DEFAULT_RTOL,
                     seed: int = 0) -> LanczosResult:
    """Estimates the extreme Hessian eigenvalues by Lanczos on Hessian-vector products.

    A negative ``lambda_min`` certifies negative curvature even before convergence (it is
    a Rayleigh quotient); a positive one is only an upper bound until ``converged_min``.

    Args:
        loss_fn (LossFn): Returns the scalar loss at the current parameters.
        params (Iterable[Tensor]): The parameters, all requiring gradients.
        iterations (int): The most Hessian-vector products.
        rtol (float): Tolerance on the Ritz residuals, relative to their Ritz values.
        seed (int): Seed of a private generator for the start vectors (global state untouched).

    Returns:
        LanczosResult: The extreme eigenvalue estimates and their residuals.

    Raises:
        ValueError: If ``params`` is empty or ``iterations < 1``.
    """
    params = checked_parameters(params, "hessian_extremes")
    operator, _, _ = _hessian_operator(loss_fn, params)
    return lanczos(operator, params, iterations, rtol, torch.Generator().manual_seed(seed))


def extreme_hessian_eigenvalues(loss_fn: LossFn, params: Iterable[Tensor],
                                iterations: int = DEFAULT_ITERATIONS, seed: int = 0,
                                rtol: float = DEFAULT_RTOL) -> tuple[float, float, Vector]:
    """Estimates the largest and smallest Hessian eigenvalues (see :func:`hessian_extremes`).

    Args:
        loss_fn (LossFn): Returns the scalar loss at the current parameters.
        params (Iterable[Tensor]): The parameters, all requiring gradients.
        iterations (int): The most Hessian-vector products.
        seed (int): Seed for the random starting vector.
        rtol (float): Convergence tolerance on the Ritz residuals.

    Returns:
        tuple[float, float, Vector]: ``(λ_max, λ_min, v_min)``, ``v_min`` a unit eigenvector.

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
        loss (float | None): The loss at the point.
    """

    verdict: str
    reason: str
    gradient_norm: float
    spectrum: LanczosResult
    loss: float | None = None

    @property
    def code(self) -> int:
        """int: The verdict as a number, from :data:`VERDICT_CODES`."""
        return VERDICT_CODES[self.verdict]


def first_order_gain(gradient_norm: float, spectrum: LanczosResult) -> float:
    """The loss decrease that one gradient step still guarantees, ``‖g‖² / (2 L)``.

    With ``L = max(|λ_max|, |λ_min|)``, a step ``-g / L`` lowers the local quadratic model
    by at least this much. Relative to the loss it measures the gradient in the loss's own
    units, independent of how the loss is scaled.

    Args:
        gradient_norm (float): ``‖g‖``.
        spectrum (LanczosResult): The extreme Hessian eigenvalue estimates.

    Returns:
        float: The gain; ``inf`` when no curvature was measured and ``g`` is not 0.
    """
    curvature = max(abs(spectrum.lambda_max), abs(spectrum.lambda_min))
    if curvature == 0.0:
        return 0.0 if gradient_norm == 0.0 else float("inf")
    return gradient_norm**2 / (2.0 * curvature)


def flat_curvature(spectrum: LanczosResult, curvature_tol: float = DEFAULT_CURVATURE_TOL,
                   curvature_rtol: float = 0.0) -> float:
    """The largest ``|eigenvalue|`` that counts as zero curvature.

    ``max(curvature_tol, spectrum.rounding, curvature_rtol · spectrum.scale)``. Float32
    products err by a few ``ε · scale``, so exactly flat directions (weight symmetries)
    show as small eigenvalues of either sign: ``curvature_rtol`` keeps them from reading
    as negative curvature.

    Args:
        spectrum (LanczosResult): The eigenvalue estimates.
        curvature_tol (float): An absolute floor.
        curvature_rtol (float): A floor relative to the spectrum's scale.

    Returns:
        float: The threshold.
    """
    return max(curvature_tol, spectrum.rounding, curvature_rtol * spectrum.scale)


def classify_critical_point(gradient_norm: float, spectrum: LanczosResult,
                            grad_tol: float = DEFAULT_GRAD_TOL,
                            curvature_tol: float = DEFAULT_CURVATURE_TOL, loss: float | None = None,
                            grad_rtol: float | None = None,
                            curvature_rtol: float = 0.0) -> tuple[str, str]:
    """Applies the second-derivative test, saying "cannot tell" when it cannot decide.

    Only critical points are judged: the gradient norm must be at most ``grad_tol``, or,
    with ``grad_rtol``, :func:`first_order_gain` at most ``grad_rtol · |loss|``. Then:

    * ``λ_min < 0 < λ_max`` (indefinite) is a **saddle**; both are Rayleigh quotients, so
      curvature of both signs has been seen and no convergence is needed.
    * ``λ_min > 0`` is a **minimum** only once it has converged and ``λ_min`` minus its
      Ritz residual is still positive; before that it is just an upper bound.
    * Otherwise it **cannot tell**: a zero eigenvalue leaves it to higher-order terms
      (``x⁴`` and ``-x⁴`` both have a zero Hessian at 0), and no positive curvature means
      a maximum or a degenerate point.

    Eigenvalues within :func:`flat_curvature` of 0 count as zero (rounding level).

    Args:
        gradient_norm (float): ``‖∇L‖`` at the point.
        spectrum (LanczosResult): The extreme Hessian eigenvalue estimates there.
        grad_tol (float): The largest gradient norm of a critical point (one minibatch's
            gradient is rarely this small).
        curvature_tol (float): Eigenvalues within this of 0 count as zero curvature.
        loss (float | None): The loss at the point, for ``grad_rtol``.
        grad_rtol (float | None): The largest :func:`first_order_gain` of a critical
            point, relative to ``|loss|``; None: the absolute ``grad_tol`` alone.
        curvature_rtol (float): Eigenvalues within this times the spectrum's scale count
            as zero too.

    Returns:
        tuple[str, str]: The verdict and the reason.
    """
    flat = flat_curvature(spectrum, curvature_tol, curvature_rtol)
    lambda_min, lambda_max = spectrum.lambda_min, spectrum.lambda_max
    if gradient_norm > grad_tol:
        if grad_rtol is None or loss is None:
            return CANNOT_TELL, (
                f"not a critical point: gradient norm {gradient_norm:.3g} > grad_tol {grad_tol:.3g}"
            )
        gain = first_order_gain(gradient_norm, spectrum)
        if gain > grad_rtol * abs(loss):
            return CANNOT_TELL, (f"not a critical point: a gradient step still gains {gain:.3g} > "
                                 f"grad_rtol {grad_rtol:.3g} x loss {loss:.3g}")
    if lambda_min < -flat and lambda_max > flat:
        return SADDLE, (
            f"indefinite Hessian: lambda_min {lambda_min:.3g} < 0 < lambda_max {lambda_max:.3g}")
    if lambda_min < -flat:
        return CANNOT_TELL, (
            f"no positive curvature found (lambda_max {lambda_max:.3g}): not a minimum; "
            "a maximum or a degenerate point")
    if not spectrum.converged_min:
        return CANNOT_TELL, (
            f"lambda_min {lambda_min:.3g} has not converged (Ritz residual "
            f"{spectrum.residual_min:.3g} > {spectrum.tolerance_min:.3g}): only an upper bound")
    if lambda_min - spectrum.residual_min > flat:
        return MINIMUM, f"positive definite Hessian: lambda_min {lambda_min:.3g} > 0"
    return CANNOT_TELL, (f"zero curvature (lambda_min {lambda_min:.3g} within {flat:.3g} of 0): "
                         "higher-order terms decide")


def diagnose_critical_point(loss_fn: LossFn, params: Iterable[Tensor],
                            iterations: int = DEFAULT_ITERATIONS, rtol: float = DEFAULT_RTOL,
                            grad_tol: float = DEFAULT_GRAD_TOL,
                            curvature_tol: float = DEFAULT_CURVATURE_TOL, seed: int = 0,
                            grad_rtol: float | None = None, start: Sequence[Tensor] | None = None,
                            curvature_rtol: float = 0.0,
                            deadline: float | None = None) -> CriticalPointDiagnosis:
    """Tells a minimum from a saddle at the current parameters, or says it cannot.

    One loss evaluation, up to ``iterations`` Hessian-vector products, then
    :func:`classify_critical_point`.

    Args:
        loss_fn (LossFn): Returns the scalar loss at the current parameters.
        params (Iterable[Tensor]): The parameters, all requiring gradients.
        iterations (int): The most Hessian-vector products.
        rtol (float): Tolerance on the Ritz residuals, relative to their Ritz values.
        grad_tol (float): The largest gradient norm of a critical point.
        curvature_tol (float): Eigenvalues within this of 0 count as zero curvature.
        seed (int): Seed of the private generator for the Lanczos start vector.
        grad_rtol (float | None): See :func:`classify_critical_point`.
        start (Sequence[Tensor] | None): The Lanczos start vector instead of a random
            one, e.g. the last check's ``eigenvector_min`` (a warm start).
        curvature_rtol (float): See :func:`flat_curvature`.
        deadline (float | None): No product is started after this
            ``time.perf_counter()`` value (see :func:`~mmsent.diagnostics.lanczos.lanczos`).

    Returns:
        CriticalPointDiagnosis: The verdict, its reason, the gradient norm, the loss and
        the eigenvalue estimates.

    Raises:
        ValueError: If ``params`` is empty or ``iterations < 1``.
    """
    params = checked_parameters(params, "diagnose_critical_point")
    operator, gradient, loss = _hessian_operator(loss_fn, params)
    spectrum = lanczos(operator, params, iterations, rtol, torch.Generator().manual_seed(seed), start, deadline)
    gradient_norm = norm(gradient)
    verdict, reason = classify_critical_point(gradient_norm, spectrum, grad_tol, curvature_tol, loss, grad_rtol,
                                              curvature_rtol)
    return CriticalPointDiagnosis(verdict, reason, gradient_norm, spectrum, loss)


def is_indefinite(lambda_max: float, lambda_min: float, tol: float = 1e-6) -> bool:
    """Tells whether the Hessian has curvature of both signs (a saddle at a critical point).

    Args:
        lambda_max (float): The largest eigenvalue.
        lambda_min (float): The smallest eigenvalue.
        tol (float): Eigenvalues within ``tol`` of 0 count as flat, not curved.

    Returns:
        bool: ``lambda_max > tol and lambda_min < -tol``.
    """
    return lambda_max > tol and lambda_min < -tol


def smooth_l1_surrogate(prediction: Tensor, target: Tensor, delta: float) -> Tensor:
    """The pseudo-Huber loss ``δ (√(1 + (r/δ)²) - 1)``, mean over the residuals ``r``.

    A smooth stand-in for the L1 loss in second-order checks (about ``|r| - δ`` for
    ``|r| ≫ δ``, ``r² / (2δ)`` near 0). The L1 loss is piecewise linear in the prediction:
    its Hessian lacks the Gauss-Newton part and its subgradient need not vanish at a
    minimum, so the second-derivative test does not apply to it.

    Args:
        prediction (Tensor): The predictions.
        target (Tensor): The targets, shaped like ``prediction``.
        delta (float): ``δ > 0``, the residual below which the loss is quadratic.

    Returns:
        Tensor: The mean loss, a 0-d tensor.
    """
    return (delta * (torch.sqrt(1.0 + ((prediction - target) / delta) ** 2) - 1.0)).mean()
