"""Weight penalties: scalar tensors in the autograd graph, added to the loss.

Operators and covariances act on the last dimension: a weight ``W (out, in)`` is ``out``
rows ``θ_i ∈ R^in`` (a kernel ``(out, in, k)`` is ``out · in`` rows of length ``k``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

TIKHONOV_OPERATORS: tuple[str, ...] = ("difference", "identity")


def _zero(params: list[Tensor]) -> Tensor:
    """A 0-d zero in the first parameter's dtype and device (float32 CPU if none)."""
    if not params:
        return torch.zeros(())
    return torch.zeros((), dtype=params[0].dtype, device=params[0].device)


def _sum(terms: list[Tensor], params: list[Tensor]) -> Tensor:
    """Sums scalar terms; a zero on the parameters' device when there are none."""
    return sum(terms, _zero(params))


def l1_penalty(params: Iterable[Tensor]) -> Tensor:
    """Sum of absolute values, ``Σ |w|`` (a Laplace prior).

    Its subgradient ``sign(w)`` makes weights that should be 0 oscillate around 0 by about
    ``lr · λ``, never exactly 0; exact zeros come from the proximal step
    :func:`soft_threshold_` (``l1_proximal`` in :class:`~mmsent.regularization.Regularizer`).

    Args:
        params (Iterable[Tensor]): The tensors to penalise.

    Returns:
        Tensor: The penalty as a 0-d tensor.
    """
    params = list(params)
    return _sum([w.abs().sum() for w in params], params)


def l2_penalty(params: Iterable[Tensor]) -> Tensor:
    """Sum of squares, ``Σ w²`` (a Gaussian prior), with no ``1/2``: the gradient is ``2w``.

    Args:
        params (Iterable[Tensor]): The tensors to penalise.

    Returns:
        Tensor: The penalty as a 0-d tensor.
    """
    params = list(params)
    return _sum([w.pow(2).sum() for w in params], params)


def elastic_net_penalty(params: Iterable[Tensor], l1_ratio: float = 0.5) -> Tensor:
    """Elastic net, ``l1_ratio * Σ |w| + (1 - l1_ratio) * Σ w²`` (no ``1/2``, unlike scikit-learn).

    Args:
        params (Iterable[Tensor]): The tensors to penalise.
        l1_ratio (float): The share of the L1 term, in ``[0, 1]``.

    Returns:
        Tensor: The penalty as a 0-d tensor.

    Raises:
        ValueError: If ``l1_ratio`` is outside ``[0, 1]``.
    """
    if not 0.0 <= l1_ratio <= 1.0:
        raise ValueError(f"l1_ratio must be in [0, 1], got {l1_ratio!r}")
    params = list(params)
    return l1_ratio * l1_penalty(params) + (1.0 - l1_ratio) * l2_penalty(params)


def _apply_operator(w: Tensor, operator: str | Tensor) -> Tensor:
    """``Γw`` along the last dimension; ``operator`` is a name or a ``(k, n)`` matrix."""
    if isinstance(operator, Tensor):
        if operator.ndim != 2 or operator.shape[1] != w.shape[-1]:
            raise ValueError(
                f"Tikhonov operator of shape {tuple(operator.shape)} cannot act on the last "
                f"dimension of a parameter of shape {tuple(w.shape)}")
        return w @ operator.to(dtype=w.dtype, device=w.device).T
    if operator == "difference":
        return w[..., 1:] - w[..., :-1]
    if operator == "identity":
        return w
    raise ValueError(f"unknown Tikhonov operator {operator!r}; valid: {TIKHONOV_OPERATORS}")


def tikhonov_penalty(params: Iterable[Tensor], operator: str | Tensor = "difference") -> Tensor:
    """Tikhonov penalty ``Σ ||Γw||²`` with ``Γ`` acting on the last dimension of each tensor.

    The default first difference ``(Γw)_i = w_{i+1} - w_i`` is a smoothness prior: it makes
    neighbouring weights similar instead of small. ``Γ = I`` gives :func:`l2_penalty`.

    Args:
        params (Iterable[Tensor]): The tensors to penalise, each at least 1-D.
        operator (str | Tensor): ``"difference"``, ``"identity"`` or a ``(k, n)`` matrix,
            ``n`` being every tensor's last dimension.

    Returns:
        Tensor: The penalty as a 0-d tensor.

    Raises:
        ValueError: If the operator name is unknown or the matrix does not fit a tensor.
    """
    params = list(params)
    return _sum([_apply_operator(w, operator).pow(2).sum() for w in params], params)


def row_covariance(weight: Tensor, shrinkage: float = 0.1) -> Tensor:
    """Estimates the covariance of a tensor's rows about zero, shrunk towards the identity.

    ``Σ = (1 - α) S + α (tr S / n) I`` with ``S = (1/m) Σ θ_i θ_iᵀ`` over the ``m`` rows
    (Ledoit & Wolf 2004, fixed ``α``); the identity share keeps ``Σ`` invertible with
    fewer rows than columns. Detached: the prior is estimated, not trained through.

    Args:
        weight (Tensor): A tensor of shape ``(..., n)``.
        shrinkage (float): ``α``, in ``(0, 1]``.

    Returns:
        Tensor: ``Σ`` of shape ``(n, n)``, float64, on ``weight``'s device; all zeros if
        every row is zero.

    Raises:
        ValueError: If ``shrinkage`` is outside ``(0, 1]``.
    """
    if not 0.0 < shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in (0, 1], got {shrinkage!r}")
    rows = weight.detach().reshape(-1, weight.shape[-1]).double()
    second_moment = rows.T @ rows / rows.shape[0]
    scale = torch.trace(second_moment) / rows.shape[1]
    identity = torch.eye(rows.shape[1], dtype=rows.dtype, device=rows.device)
    return (1.0 - shrinkage) * second_moment + shrinkage * scale * identity


def _mahalanobis(weight: Tensor, covariance: Tensor) -> Tensor:
    """``Σ_i θ_iᵀ Σ⁻¹ θ_i`` over the rows of ``weight``, through a Cholesky factor."""
    n = weight.shape[-1]
    if covariance.shape != (n, n):
        raise ValueError(f"a covariance of shape {tuple(covariance.shape)} cannot act on the last "
                         f"dimension of a parameter of shape {tuple(weight.shape)}")
    rows = weight.reshape(-1, n)
    factor = torch.linalg.cholesky(covariance.to(device=weight.device, dtype=torch.float64))
    # Σ⁻¹ = L⁻ᵀ L⁻¹, so θᵀ Σ⁻¹ θ = ‖L⁻¹ θ‖²: a triangular solve instead of an inverse.
    whitened = torch.linalg.solve_triangular(factor.to(weight.dtype), rows.T, upper=False)
    return whitened.pow(2).sum()


def check_covariance(matrix: Tensor, key: str = "covariance") -> Tensor:
    """Checks that a matrix is a covariance: square, symmetric, positive definite.

    Cholesky reads one triangle only: an asymmetric ``Σ`` would pass silently otherwise.

    Args:
        matrix (Tensor): The candidate ``Σ``.
        key (str): Its name (a config key or argument), for messages.

    Returns:
        Tensor: ``matrix``, unchanged.

    Raises:
        ValueError: If it is not square, symmetric (to a relative 1e-6) and positive definite.
    """
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{key}: a covariance must be a square matrix, got shape {tuple(matrix.shape)}")
    if not torch.allclose(matrix, matrix.T, rtol=1e-6, atol=1e-12):
        gap = float((matrix - matrix.T).abs().max())
        raise ValueError(f"{key}: a covariance must be symmetric, but max |Σ - Σᵀ| = {gap:.3g}")
    if torch.linalg.cholesky_ex(matrix.to(torch.float64)).info != 0:
        raise ValueError(f"{key}: a covariance must be positive definite")
    return matrix


def mahalanobis_penalty(params: Iterable[Tensor], covariance: str | Tensor = "rows",
                        shrinkage: float = 0.1) -> Tensor:
    """Mahalanobis penalty ``Σ_i θ_iᵀ Σ⁻¹ θ_i`` over the rows ``θ_i`` of every tensor.

    The negative log-density of a Gaussian prior ``N(0, Σ)`` per row (up to 2 and a
    constant): directions where ``Σ`` is small are penalised hard. ``Σ = I`` gives
    :func:`l2_penalty`, ``Σ = (ΓᵀΓ)⁻¹`` :func:`tikhonov_penalty`. With ``"rows"`` each
    tensor gets :func:`row_covariance` of its current rows (empirical Bayes: directions the
    rows hardly use are penalised); all-zero rows contribute 0.

    Args:
        params (Iterable[Tensor]): The tensors to penalise, each at least 1-D.
        covariance (str | Tensor): ``"rows"`` or a symmetric positive definite ``(n, n)``
            ``Σ``, ``n`` being every tensor's last dimension.
        shrinkage (float): The identity share of the ``"rows"`` estimate, in ``(0, 1]``.

    Returns:
        Tensor: The penalty as a 0-d tensor.

    Raises:
        ValueError: If ``covariance`` is another string, misfits, or is no valid covariance.
    """
    params = list(params)
    if isinstance(covariance, str) and covariance != "rows":
        raise ValueError(f"covariance must be 'rows' or a matrix, got {covariance!r}")
    if isinstance(covariance, Tensor):
        check_covariance(covariance)
    terms = []
    for w in params:
        sigma = row_covariance(w, shrinkage) if isinstance(covariance, str) else covariance
        terms.append(_mahalanobis(w, sigma) if bool(sigma.any()) else (w * 0.0).sum())
    return _sum(terms, params)


@torch.no_grad()
def soft_threshold_(weight: Tensor, threshold: float) -> Tensor:
    """The proximal step of ``threshold · Σ |w|`` in place: ``w ← sign(w) max(|w| - threshold, 0)``.

    After a gradient step with ``threshold = lr · λ`` this is ISTA on ``loss + λ Σ |w|``:
    weights below the threshold become exactly 0.

    Args:
        weight (Tensor): The tensor to shrink, modified in place.
        threshold (float): The shrinkage, ``>= 0``.

    Returns:
        Tensor: ``weight``.
    """
    magnitude = (weight.abs() - threshold).clamp_(min=0.0)
    return weight.copy_(weight.sign() * magnitude)
