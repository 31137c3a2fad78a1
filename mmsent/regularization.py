"""Weight penalties added to the training loss.

The free functions take an iterable of parameter tensors and return a scalar tensor that
stays in the autograd graph, so ``loss + penalty`` trains the weights towards the prior.
:class:`Regularizer` combines them with weights and picks the parameters of a module
that should be penalised.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

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
    total = _zero(params)
    for term in terms:
        total = total + term
    return total


def l1_penalty(params: Iterable[Tensor]) -> Tensor:
    """Sum of absolute values, ``Σ |w|`` (a Laplace prior; drives weights to exactly 0).

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
                f"dimension of a parameter of shape {tuple(w.shape)}"
            )
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


@dataclass(frozen=True)
class Regularizer:
    """A weighted sum of weight penalties over a module's weight matrices and kernels.

    ``Regularizer(l2=1e-4)(model)`` returns ``1e-4 * Σ w²`` over the trainable parameters
    with at least two dimensions (linear and recurrent weight matrices, convolution
    kernels, embeddings). Biases and normalisation scales/shifts are one-dimensional and
    left out: each controls a single unit rather than the interaction between an input and
    a unit, so it does not add to the model's sensitivity to its input and needs little
    data to fit, and penalising it mostly causes underfitting (Goodfellow et al., *Deep
    Learning*, §7.1); pulling a norm layer's scale towards 0 also fights the normalisation
    itself. Frozen parameters are left out too, since a penalty on weights that cannot
    move only shifts the reported loss.

    An L2 penalty in the loss and an optimiser's ``weight_decay`` are the same thing for
    plain SGD (with or without momentum): the penalty ``λ Σ w²`` adds ``2λw`` to the
    gradient, which is what ``SGD(weight_decay=2λ)`` adds. They differ for adaptive
    optimisers. With Adam, both the penalty gradient and Adam's own ``weight_decay`` are
    divided by the running gradient scale, so weights with large gradients are barely
    decayed; AdamW instead decouples the decay and shrinks every weight by
    ``lr * weight_decay`` each step, which is the usual choice there. Note also that
    ``weight_decay`` applies to every parameter in its group (biases included) unless the
    groups are split, whereas this class only penalises weight matrices and kernels.

    Args:
        l1 (float): Weight of :func:`l1_penalty`.
        l2 (float): Weight of :func:`l2_penalty`.
        elastic (float): Weight of :func:`elastic_net_penalty`.
        l1_ratio (float): The elastic net's L1 share, in ``[0, 1]``.
        tikhonov (float): Weight of :func:`tikhonov_penalty`.
        tikhonov_operator (str): ``"difference"`` or ``"identity"``.

    Raises:
        ValueError: If a weight is negative, ``l1_ratio`` is outside ``[0, 1]`` or the
            operator is unknown.
    """

    l1: float = 0.0
    l2: float = 0.0
    elastic: float = 0.0
    l1_ratio: float = 0.5
    tikhonov: float = 0.0
    tikhonov_operator: str = "difference"

    def __post_init__(self) -> None:
        for name in ("l1", "l2", "elastic", "tikhonov"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.l1_ratio <= 1.0:
            raise ValueError(f"l1_ratio must be in [0, 1], got {self.l1_ratio!r}")
        if self.tikhonov_operator not in TIKHONOV_OPERATORS:
            operator = self.tikhonov_operator
            raise ValueError(f"unknown Tikhonov operator {operator!r}; valid: {TIKHONOV_OPERATORS}")

    @property
    def active(self) -> bool:
        """bool: Whether any penalty has a non-zero weight."""
        return any((self.l1, self.l2, self.elastic, self.tikhonov))

    @staticmethod
    def penalised_parameters(module: nn.Module) -> list[Tensor]:
        """Selects the trainable weight matrices and kernels of ``module``.

        Args:
            module (nn.Module): The model.

        Returns:
            list[Tensor]: Its trainable parameters with at least two dimensions.
        """
        return [p for p in module.parameters() if p.requires_grad and p.ndim >= 2]

    def __call__(self, module: nn.Module) -> Tensor:
        """Computes the weighted penalty for ``module``.

        Args:
            module (nn.Module): The model whose weights are penalised.

        Returns:
            Tensor: A 0-d tensor; a constant zero (with no graph) when every weight is 0.
        """
        params = self.penalised_parameters(module)
        if not self.active:
            return _zero(params)
        terms = []
        if self.l1:
            terms.append(self.l1 * l1_penalty(params))
        if self.l2:
            terms.append(self.l2 * l2_penalty(params))
        if self.elastic:
            terms.append(self.elastic * elastic_net_penalty(params, self.l1_ratio))
        if self.tikhonov:
            terms.append(self.tikhonov * tikhonov_penalty(params, self.tikhonov_operator))
        return _sum(terms, params)
