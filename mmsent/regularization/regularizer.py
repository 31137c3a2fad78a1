"""The configurable weight penalty of a task: which penalties, on which weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import torch
from torch import Tensor, nn

from mmsent.data.schema import MODALITIES
from mmsent.regularization.matrices import MATRIX_SUFFIXES, load_covariance, load_matrix
from mmsent.regularization.penalties import (
    TIKHONOV_OPERATORS,
    _sum,
    _zero,
    elastic_net_penalty,
    l1_penalty,
    l2_penalty,
    mahalanobis_penalty,
    soft_threshold_,
    tikhonov_penalty,
)

Matrix = str | list[list[float]]


@dataclass(frozen=True)
class PenaltyTerms:
    """The weights of the penalties on one set of weight matrices and kernels.

    Args:
        l1 (float): Weight of :func:`~mmsent.regularization.l1_penalty`.
        l2 (float): Weight of :func:`~mmsent.regularization.l2_penalty`.
        elastic (float): Weight of :func:`~mmsent.regularization.elastic_net_penalty`.
        l1_ratio (float): The elastic net's L1 share, in ``[0, 1]``.
        l1_proximal (bool): Apply the L1 parts as a soft-threshold step after each
            optimizer step instead of in the loss, so small weights become exactly 0.
        tikhonov (float): Weight of :func:`~mmsent.regularization.tikhonov_penalty`,
            ``Σ ‖Γθ‖²`` over the rows ``θ``.
        tikhonov_operator (str | list[list[float]]): ``Γ``: ``"difference"``,
            ``"identity"``, an inline ``(k, n)`` matrix or a ``.npy``/``.pt``/``.pth``/
            ``.safetensors`` file holding one.
        mahalanobis (float): Weight of
            :func:`~mmsent.regularization.mahalanobis_penalty`, ``Σ θᵀ Σ⁻¹ θ`` over the rows.
        covariance (str | list[list[float]]): ``Σ``: ``"rows"`` (estimated from each
            tensor's rows), an inline ``(n, n)`` matrix or a file as for ``tikhonov_operator``.
        covariance_shrinkage (float): The identity share of the ``"rows"`` estimate, in ``(0, 1]``.
        parameters (list[str] | None): ``fnmatch`` patterns on parameter names narrowing
            the weights these terms apply to (None: all).
    """

    l1: float = 0.0
    l2: float = 0.0
    elastic: float = 0.0
    l1_ratio: float = 0.5
    l1_proximal: bool = False
    tikhonov: float = 0.0
    tikhonov_operator: Matrix = "difference"
    mahalanobis: float = 0.0
    covariance: Matrix = "rows"
    covariance_shrinkage: float = 0.1
    parameters: list[str] | None = None

    @property
    def active(self) -> bool:
        """bool: Whether any penalty has a non-zero weight."""
        return any((self.l1, self.l2, self.elastic, self.tikhonov, self.mahalanobis))

    @property
    def proximal_strength(self) -> float:
        """float: The L1 weight applied by the soft-threshold step (0 without it)."""
        return self.l1 + self.elastic * self.l1_ratio if self.l1_proximal else 0.0

    def matches(self, name: str) -> bool:
        """Tells whether a parameter name passes the ``parameters`` patterns."""
        return self.parameters is None or any(fnmatch(name, p) for p in self.parameters)


def _resolve(terms: PenaltyTerms, key: str) -> tuple[str | Tensor, str | Tensor]:
    """Validates one set of terms; returns its Tikhonov operator and covariance (name or matrix)."""
    for name in ("l1", "l2", "elastic", "tikhonov", "mahalanobis"):
        if getattr(terms, name) < 0:
            raise ValueError(f"{key}.{name} must be >= 0, got {getattr(terms, name)!r}")
    if not 0.0 <= terms.l1_ratio <= 1.0:
        raise ValueError(f"{key}.l1_ratio must be in [0, 1], got {terms.l1_ratio!r}")
    if not 0.0 < terms.covariance_shrinkage <= 1.0:
        shrinkage = terms.covariance_shrinkage
        raise ValueError(f"{key}.covariance_shrinkage must be in (0, 1], got {shrinkage!r}")
    operator: str | Tensor = terms.tikhonov_operator
    if not (isinstance(operator, str) and operator in TIKHONOV_OPERATORS):
        if isinstance(operator, str) and Path(operator).suffix not in MATRIX_SUFFIXES:
            raise ValueError(
                f"unknown Tikhonov operator {operator!r} in {key}.tikhonov_operator; valid: "
                f"{TIKHONOV_OPERATORS}, an inline matrix or a {MATRIX_SUFFIXES} file")
        operator = load_matrix(operator, f"{key}.tikhonov_operator")
    covariance: str | Tensor = terms.covariance
    if covariance != "rows":
        if isinstance(covariance, str) and Path(covariance).suffix not in MATRIX_SUFFIXES:
            raise ValueError(
                f"{key}.covariance must be 'rows', an inline matrix or a {MATRIX_SUFFIXES} "
                f"file, got {covariance!r}")
        covariance = load_covariance(covariance, f"{key}.covariance")
    return operator, covariance


@dataclass(frozen=True)
class Regularizer(PenaltyTerms):
    """A weighted sum of weight penalties over a model's weight matrices and kernels.

    ``Regularizer(l2=1e-4)(model)`` returns ``1e-4 * Σ w²`` over the trainable parameters
    with at least two dimensions. Biases and norm scales are left out: penalising them
    mostly causes underfitting (Goodfellow et al., *Deep Learning*, §7.1). Frozen
    parameters are left out too. ``Γ`` and ``Σ`` write the same family (``Σ⁻¹ = ΓᵀΓ``).

    ``groups`` maps a part of the model as the task names it (``text``, ``audio``,
    ``video``, ``fusion``, ``head``; ``model`` for a plain module) to terms that replace the
    top-level ones for its weights; a modality the model lacks may be named.

    A stage config (``model.init_args.regularizer``)::

        regularizer:
          l2: 1.0e-4                       # every weight outside the groups below
          groups:
            audio:
              tikhonov: 1.0e-3
              tikhonov_operator: gamma.npy # a (k, 128) matrix Γ
              parameters: ["net.4.weight"] # the weights with 128 inputs
            head:
              mahalanobis: 1.0e-3
              covariance: [[2.0, 0.5], [0.5, 1.0]]
            text:
              l1: 1.0e-5
              l1_proximal: true            # exact zeros, see proximal_step

    For SGD, ``l2=λ`` equals ``weight_decay=2λ``; with Adam both are divided by the gradient
    scale, so AdamW's decoupled decay is the usual choice there. ``weight_decay`` also
    reaches biases, this class only weight matrices and kernels.

    Args:
        groups (dict[str, PenaltyTerms] | None): Terms per part of the model.
        **terms: The top-level :class:`PenaltyTerms`.

    Raises:
        ValueError: If a weight is negative, a ratio is out of range or a matrix is
            unknown, unreadable or not a valid operator or covariance, naming the key.
    """

    groups: dict[str, PenaltyTerms] | None = None
    _matrices: dict[str | None, tuple[str | Tensor, str | Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        matrices = {None: _resolve(self, "regularizer")}
        for name, terms in (self.groups or {}).items():
            matrices[name] = _resolve(terms, f"regularizer.groups.{name}")
        object.__setattr__(self, "_matrices", matrices)

    @property
    def active(self) -> bool:
        """bool: Whether any penalty, top-level or in a group, has a non-zero weight."""
        return super().active or any(t.active for t in (self.groups or {}).values())

    def _terms(self, group: str | None) -> PenaltyTerms:
        """Returns the terms of a group, or the top-level ones for ``None``."""
        return self if group is None else self.groups[group]

    @staticmethod
    def penalised_parameters(module: nn.Module) -> list[Tensor]:
        """Selects the trainable weight matrices and kernels of ``module``.

        Args:
            module (nn.Module): The model.

        Returns:
            list[Tensor]: Its trainable parameters with at least two dimensions.
        """
        return [p for p in module.parameters() if p.requires_grad and p.ndim >= 2]

    def assignments(self, module: nn.Module) -> list[tuple[str | None, list[Tensor]]]:
        """Splits the penalised weights of ``module`` among the groups.

        Args:
            module (nn.Module): The model; its ``parameter_parts()`` names the groups' parts.

        Returns:
            list[tuple[str | None, list[Tensor]]]: ``(group, weights)`` pairs, top-level first.

        Raises:
            ValueError: If a group names no part of the model (and no modality), or its
                ``parameters`` patterns select no weight.
        """
        if not self.groups and self.parameters is None:
            return [(None, self.penalised_parameters(module))]
        parts_of = getattr(module, "parameter_parts", None)
        parts = parts_of() if callable(parts_of) else {"model": module}
        claimed: set[int] = set()
        grouped: list[tuple[str | None, list[Tensor]]] = []
        for group, terms in (self.groups or {}).items():
            if group not in parts:
                if group in MODALITIES:
                    continue
                raise ValueError(
                    f"regularizer.groups: unknown group {group!r}; the model has {sorted(parts)}")
            named = [(n, p) for n, p in parts[group].named_parameters()
                     if p.requires_grad and p.ndim >= 2]
            selected = [p for n, p in named if terms.matches(n) and id(p) not in claimed]
            if not selected and terms.parameters is not None:
                raise ValueError(
                    f"regularizer.groups.{group}.parameters {terms.parameters} select no "
                    f"weight matrix of {group!r}; it has {[n for n, _ in named]}")
            claimed.update(id(p) for p in selected)
            grouped.append((group, selected))
        rest = [p for n, p in module.named_parameters()
                if p.requires_grad and p.ndim >= 2 and id(p) not in claimed and self.matches(n)]
        return [(None, rest), *grouped]

    def check_fits(self, module: nn.Module) -> None:
        """Checks before any data that every ``Γ`` and ``Σ`` fits the weights it applies to.

        Args:
            module (nn.Module): The model, as for :meth:`assignments`.

        Raises:
            ValueError: Naming the key, the parameter and both shapes, on a misfit; as
                :meth:`assignments` for unknown groups or patterns selecting nothing.
        """
        if not self.active:
            return
        names = {id(p): n for n, p in module.named_parameters()}
        for group, params in self.assignments(module):
            terms = self._terms(group)
            operator, covariance = self._matrices[group]
            key = "regularizer" if group is None else f"regularizer.groups.{group}"
            checks = [("tikhonov_operator", operator, terms.tikhonov, 1),
                      ("covariance", covariance, terms.mahalanobis, 0)]
            for field_name, matrix, weight, axis in checks:
                if not weight or not isinstance(matrix, Tensor):
                    continue
                for p in params:
                    if matrix.shape[axis] != p.shape[-1]:
                        raise ValueError(
                            f"{key}.{field_name} has shape {tuple(matrix.shape)} but parameter "
                            f"{names[id(p)]!r} of shape {tuple(p.shape)} has last dimension "
                            f"{p.shape[-1]}; narrow it with {key}.parameters or fit the matrix")

    def _loss_terms(self, group: str | None, params: list[Tensor]) -> list[Tensor]:
        """The weighted penalties of one group (None: top level), proximal L1 parts left out."""
        terms = self._terms(group)
        operator, covariance = self._matrices[group]
        out = []
        if terms.l1 and not terms.l1_proximal:
            out.append(terms.l1 * l1_penalty(params))
        if terms.l2:
            out.append(terms.l2 * l2_penalty(params))
        if terms.elastic and terms.l1_proximal:
            out.append(terms.elastic * (1.0 - terms.l1_ratio) * l2_penalty(params))
        elif terms.elastic:
            out.append(terms.elastic * elastic_net_penalty(params, terms.l1_ratio))
        if terms.tikhonov:
            out.append(terms.tikhonov * tikhonov_penalty(params, operator))
        if terms.mahalanobis:
            shrinkage = terms.covariance_shrinkage
            out.append(terms.mahalanobis * mahalanobis_penalty(params, covariance, shrinkage))
        return out

    def __call__(self, module: nn.Module) -> Tensor:
        """Computes the weighted penalty for ``module``.

        Args:
            module (nn.Module): The model whose weights are penalised.

        Returns:
            Tensor: A 0-d tensor; a constant zero (with no graph) when every weight is 0.
        """
        if not self.active:
            return _zero(self.penalised_parameters(module))
        assigned = self.assignments(module)
        terms = [t for group, params in assigned if params for t in self._loss_terms(group, params)]
        return _sum(terms, [p for _, params in assigned for p in params])

    @property
    def proximal(self) -> bool:
        """bool: Whether any L1 part is applied by :meth:`proximal_step`."""
        groups = (self.groups or {}).values()
        return any(t.proximal_strength > 0 for t in (self, *groups))

    def proximal_step(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Soft-thresholds the weights whose L1 terms are proximal, after an optimizer step.

        Each becomes ``sign(w) · max(|w| - lr · λ, 0)`` with its group's current ``lr``:
        ISTA, exact for plain SGD and the usual approximation for other optimizers.

        Args:
            module (nn.Module): The model.
            optimizer (torch.optim.Optimizer): The optimizer that just stepped.
        """
        if not self.proximal:
            return
        optimizer = getattr(optimizer, "optimizer", optimizer)
        rates = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
        for group, params in self.assignments(module):
            strength = self._terms(group).proximal_strength
            for p in params:
                if strength and id(p) in rates:
                    soft_threshold_(p, rates[id(p)] * strength)
