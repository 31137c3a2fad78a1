"""Weight penalties: each takes an iterable of parameter tensors and returns a scalar
tensor that stays in the autograd graph, so ``loss + penalty`` trains the weights towards
the prior the penalty encodes.

Operators and covariances act on the last dimension of a tensor: a weight matrix
``W (out, in)`` is read as ``out`` rows ``θ_i ∈ R^in``, one per output unit (a
convolution kernel ``(out, in, k)`` as ``out · in`` rows of length ``k``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

TIKHONOV_OPERATORS: tuple[str, ...] = ("difference", "identity")


def _zero(params: list[Tensor]) -> Tensor:
    """Returns a scalar zero on the device and in the dtype of the first parameter.

    Args:
        params (list[Tensor]): The parameters, possibly empty.

    Returns:
        Tensor: ``0`` as a 0-d tensor (float32 on the CPU when ``params`` is empty).
    """
    if not params:
        return torch.zeros(())
    return torch.zeros((), dtype=params[0].dtype, device=params[0].device)


def _sum(terms: list[Tensor], params: list[Tensor]) -> Tensor:
    """Adds scalar terms, returning a zero tensor when there are none.

    Args:
        terms (list[Tensor]): Scalar tensors.
        params (list[Tensor]): The parameters the terms came from, for the zero's device.

    Returns:
        Tensor: The sum as a 0-d tensor.
    """
    return sum(terms, _zero(params))


def l1_penalty(params: Iterable[Tensor]) -> Tensor:
    """Sum of absolute values, ``Σ |w|`` (a Laplace prior).

    Added to the loss, its gradient is the subgradient ``sign(w)``: (stochastic) gradient
    descent then moves every weight by ``lr · λ`` towards 0 at each step and past it, so
    weights that should be 0 oscillate around it with a size of about ``lr · λ`` and are
    never exactly 0. The exact zeros of the lasso come from the proximal step instead,
    :func:`soft_threshold_` after each optimizer step (``l1_proximal`` in
    :class:`~mmsent.regularization.Regularizer`).

    Args:
        params (Iterable[Tensor]): The tensors to penalise.

    Returns:
        Tensor: The penalty as a 0-d tensor.
    """
    params = list(params)
    return _sum([w.abs().sum() for w in params], params)


def l2_penalty(params: Iterable[Tensor]) -> Tensor:
    """Sum of squares, ``Σ w²`` (a Gaussian prior; shrinks weights towards 0).

    There is no factor ``1/2``: the gradient is ``2w``.

    Args:
        params (Iterable[Tensor]): The tensors to penalise.

    Returns:
        Tensor: The penalty as a 0-d tensor.
    """
    params = list(params)
    return _sum([w.pow(2).sum() for w in params], params)


def elastic_net_penalty(params: Iterable[Tensor], l1_ratio: float = 0.5) -> Tensor:
    """Elastic net, ``l1_ratio * Σ |w| + (1 - l1_ratio) * Σ w²``.

    Unlike scikit-learn's ``ElasticNet`` the squared term has no factor ``1/2``, matching
    :func:`l2_penalty`.

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
    """Computes ``Γw`` along the last dimension of ``w``.

    Args:
        w (Tensor): A parameter of shape ``(..., n)``.
        operator (str | Tensor): ``"difference"``, ``"identity"`` or a matrix ``(k, n)``.

    Returns:
        Tensor: ``Γw`` of shape ``(..., k)``.

    Raises:
        ValueError: If the operator name is unknown or the matrix does not fit ``w``.
    """
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

    The default ``Γ`` is the first-difference operator, ``(Γw)_i = w_{i+1} - w_i``: a
    smoothness prior that makes neighbouring weights along the last dimension (input
    features of a linear layer, the width of a convolution kernel) similar instead of
    small. ``Γ = I`` (``"identity"`` or ``torch.eye(n)``) gives :func:`l2_penalty`.

    Args:
        params (Iterable[Tensor]): The tensors to penalise, each with at least one
            dimension.
        operator (str | Tensor): ``"difference"``, ``"identity"`` or a matrix of shape
            ``(k, n)`` where ``n`` is the size of every tensor's last dimension.

    Returns:
        Tensor: The penalty as a 0-d tensor.

    Raises:
        ValueError: If the operator name is unknown or the matrix does not fit a tensor.
    """
    params = list(params)
    return _sum([_apply_operator(w, operator).pow(2).sum() for w in params], params)


def row_covariance(weight: Tensor, shrinkage: float = 0.1) -> Tensor:
    """Estimates the covariance of a tensor's rows about zero, shrunk towards a multiple
    of the identity.

    With the rows ``θ_i`` (last dimension, ``m`` of them) as samples of a zero-mean prior,
    ``S = (1/m) Σ θ_i θ_iᵀ`` is their second moment; the estimate is
    ``Σ = (1 - α) S + α (tr S / n) I``, the shrinkage of Ledoit & Wolf (2004) with a fixed
    ``α``. ``S`` alone is singular when there are fewer rows than columns; the identity
    share makes ``Σ`` invertible. The result is detached: the prior is estimated from the
    weights, not trained through.

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
    """Computes ``Σ_i θ_iᵀ Σ⁻¹ θ_i`` over the rows of ``weight`` through a Cholesky factor.

    Args:
        weight (Tensor): A tensor of shape ``(..., n)``.
        covariance (Tensor): ``Σ``, symmetric positive definite, ``(n, n)``.

    Returns:
        Tensor: The penalty as a 0-d tensor in ``weight``'s dtype.

    Raises:
        ValueError: If ``Σ`` does not fit the last dimension of ``weight``.
    """
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

    A Cholesky factorisation reads only one triangle, so without this check an
    asymmetric ``Σ`` would be taken silently as the symmetric matrix of its lower half.

    Args:
        matrix (Tensor): The candidate ``Σ``.
        key (str): Its name (a config key or argument), for messages.

    Returns:
        Tensor: ``matrix``, unchanged.

    Raises:
        ValueError: If it is not a square 2-D matrix, not symmetric (to a relative
            1e-6) or not positive definite.
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

    This is the negative log-density of a Gaussian prior ``N(0, Σ)`` on each row (up to a
    factor 2 and a constant): directions in which ``Σ`` is small are penalised hard,
    directions in which it is large hardly at all. ``Σ = I`` gives :func:`l2_penalty`;
    ``Σ = (ΓᵀΓ)⁻¹`` gives :func:`tikhonov_penalty` with ``Γ``.

    With ``covariance="rows"`` each tensor gets its own ``Σ``, :func:`row_covariance` of
    its current rows (detached, recomputed at every call): an empirical-Bayes prior that
    shrinks each row towards the directions the rows already share and penalises the
    directions they hardly use. A tensor whose rows are all zero contributes 0.

    Args:
        params (Iterable[Tensor]): The tensors to penalise, each with at least one
            dimension.
        covariance (str | Tensor): ``"rows"`` or ``Σ`` of shape ``(n, n)``, symmetric
            positive definite, where ``n`` is every tensor's last dimension.
        shrinkage (float): The identity share of the ``"rows"`` estimate, in ``(0, 1]``.

    Returns:
        Tensor: The penalty as a 0-d tensor.

    Raises:
        ValueError: If ``covariance`` is another string, does not fit a tensor, or is
            not symmetric positive definite.
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
    """The proximal step of ``threshold · Σ |w|``, in place:
    ``w ← sign(w) · max(|w| - threshold, 0)``.

    Applied after a gradient step on the rest of the loss with ``threshold = lr · λ``,
    this is proximal gradient descent on ``loss + λ Σ |w|`` (ISTA): every weight whose
    magnitude is below the threshold becomes exactly 0, which a subgradient step on the
    penalty never achieves.

    Args:
        weight (Tensor): The tensor to shrink, modified in place.
        threshold (float): The shrinkage, ``>= 0``.

    Returns:
        Tensor: ``weight``.
    """
    magnitude = (weight.abs() - threshold).clamp_(min=0.0)
    return weight.copy_(weight.sign() * magnitude)
