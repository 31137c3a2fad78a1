"""Stochastic regularisers: Bernoulli dropout with three mask schedules, Gaussian dropout
and Swapout.

In eval mode every module is the identity (Swapout: its expectation), so evaluation is
deterministic. Encoders build their layer with :func:`make_dropout`, so the noise is a
configuration choice.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mmsent.errors import check_choice

BernoulliMode = Literal["sample", "batch", "epoch"]
DROPOUT_KINDS: tuple[str, ...] = ("bernoulli", "bernoulli_batch", "bernoulli_epoch", "gaussian",
                                  "none")


def _check_drop_probability(p: float, name: str = "p") -> float:
    """Returns ``p`` as a float; raises ValueError unless it is in ``[0, 1)``."""
    value = float(p)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {p!r}")
    return value


def _bernoulli_mask(shape: torch.Size, p: float, like: Tensor) -> Tensor:
    """Draws an inverted-dropout mask (``0`` with probability ``p``, else ``1 / (1 - p)``)."""
    keep = 1.0 - p
    mask = torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(keep)
    return mask.div_(keep)


class BernoulliDropout(nn.Module):
    """Inverted Bernoulli dropout with a choice of how masks are shared.

    Kept units are scaled by ``1 / (1 - p)``, so nothing is rescaled at evaluation.

    * ``"sample"``: an independent mask per element (Srivastava et al. 2014).
    * ``"batch"``: one mask over the feature dimensions, shared by the batch, redrawn
      at every forward pass.
    * ``"epoch"``: one mask kept from the first pass after :meth:`resample` until the
      next, which :class:`mmsent.callbacks.EpochDropoutCallback` (or
      :func:`resample_epoch_masks` in a plain loop) calls at every epoch start. Training
      before any :meth:`resample` raises: the layer would silently keep one mask forever.

    ``feature_ndim=1`` on ``(batch, time, features)`` shares one mask over time, the
    locked (variational) dropout of Gal & Ghahramani (2016); it also lets epoch mode take
    sequences whose length varies.

    Args:
        p: The probability of dropping a unit, in ``[0, 1)``.
        mode: ``"sample"``, ``"batch"`` or ``"epoch"``.
        feature_ndim: Trailing dimensions the batch/epoch mask covers; None: all but the first.

    Raises:
        ValueError: If ``p`` is outside ``[0, 1)``, ``mode`` is unknown or ``feature_ndim < 1``.
    """

    mask: Tensor | None

    def __init__(self, p: float, mode: BernoulliMode = "sample", feature_ndim: int | None = None) -> None:
        super().__init__()
        check_choice("mode", mode, BernoulliMode)
        if feature_ndim is not None and feature_ndim < 1:
            raise ValueError(f"feature_ndim must be >= 1 or None, got {feature_ndim!r}")
        self.p = _check_drop_probability(p)
        self.mode = mode
        self.feature_ndim = feature_ndim
        # A buffer so ``.to(device)`` moves it; not persistent: noise is not state.
        self.register_buffer("mask", None, persistent=False)
        self.epochs_started = 0

    def forward(self, x: Tensor) -> Tensor:
        """Applies dropout in training mode.

        Args:
            x: Input of shape ``(batch, *features)``.

        Returns:
            The masked and scaled input; ``x`` itself in eval mode or when ``p == 0``.

        Raises:
            ValueError: If ``x`` has too few dimensions, or (epoch mode) its feature
                shape differs from the current mask's.
            RuntimeError: In epoch mode, if :meth:`resample` was never called.
        """
        if not self.training or self.p == 0.0:
            return x
        if self.mode == "sample":
            return F.dropout(x, self.p, training=True)
        if self.mode == "batch":
            return x * _bernoulli_mask(self._feature_shape(x), self.p, like=x)
        return x * self._epoch_mask(x)

    def _feature_shape(self, x: Tensor) -> torch.Size:
        """Returns the shape a shared mask covers: ``x.shape[1:]`` or its last ``feature_ndim``."""
        if self.feature_ndim is None:
            return x.shape[1:]
        if x.ndim <= self.feature_ndim:
            raise ValueError(f"feature_ndim={self.feature_ndim} needs inputs with more dimensions, "
                             f"got shape {tuple(x.shape)}")
        return x.shape[x.ndim - self.feature_ndim :]

    def _epoch_mask(self, x: Tensor) -> Tensor:
        """Returns the epoch mask, drawing it for ``x``'s feature shape if there is none."""
        if not self.epochs_started:
            raise RuntimeError(
                "BernoulliDropout(mode='epoch') was never told that an epoch started, so it "
                "would keep one mask for the whole run: add "
                "mmsent.callbacks.EpochDropoutCallback to the trainer's callbacks "
                "(--trainer.callbacks+=mmsent.callbacks.EpochDropoutCallback), or call "
                "mmsent.models.dropout.resample_epoch_masks(model) at every epoch start")
        features = self._feature_shape(x)
        if self.mask is None:
            self.mask = _bernoulli_mask(features, self.p, like=x)
        elif self.mask.shape != features:
            raise ValueError(
                f"epoch-mode dropout holds a mask for feature shape {tuple(self.mask.shape)} "
                f"but got input of shape {tuple(x.shape)}; call resample() before "
                "changing the feature shape")
        return self.mask.to(dtype=x.dtype, device=x.device)

    def resample(self) -> None:
        """Starts an epoch: the next training forward pass draws a new mask."""
        self.mask = None
        self.epochs_started += 1

    def extra_repr(self) -> str:
        """Returns the settings shown by ``repr``."""
        shared = "" if self.feature_ndim is None else f", feature_ndim={self.feature_ndim}"
        return f"p={self.p}, mode={self.mode!r}{shared}"


class GaussianDropout(nn.Module):
    """Multiplicative Gaussian noise ``x * e`` with ``e ~ N(1, p / (1 - p))``.

    It matches the mean and variance of Bernoulli dropout with drop probability ``p``
    while keeping every unit active (Srivastava et al. 2014).

    Args:
        p: The equivalent drop probability, in ``[0, 1)``.

    Raises:
        ValueError: If ``p`` is outside ``[0, 1)``.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = _check_drop_probability(p)
        self.std = math.sqrt(self.p / (1.0 - self.p))

    def forward(self, x: Tensor) -> Tensor:
        """Returns ``x`` (any shape) times Gaussian noise in training mode; ``x`` itself in eval
        mode or when ``p == 0``."""
        if not self.training or self.p == 0.0:
            return x
        return x * (1.0 + self.std * torch.randn_like(x))

    def extra_repr(self) -> str:
        """Returns the settings shown by ``repr``."""
        return f"p={self.p}"


class Swapout(nn.Module):
    """Swapout (Singh et al. 2016): ``y = Θ1 ⊙ x + Θ2 ⊙ F(x)``.

    ``Θ1``, ``Θ2`` are unscaled per-element Bernoulli masks keeping a unit with probability
    ``1 - p_skip`` and ``1 - p_residual``. Eval mode returns the expectation, unless
    :func:`average_stochastic_passes` samples masks. ``p_skip = p_residual = 0`` is a ResNet
    block, ``p_skip = 1, p_residual = 0`` a plain layer, ``p_skip = 0, p_residual = 1`` the
    identity, ``p_skip = 0, p_residual = p`` per-unit stochastic depth.

    Args:
        block: The residual function ``F``; it must keep the shape of its input.
        p_skip: Probability of dropping a unit of the skip path ``x``, in ``[0, 1]``.
        p_residual: Probability of dropping a unit of ``F(x)``, in ``[0, 1]``.

    Raises:
        ValueError: If a probability is outside ``[0, 1]``.
    """

    def __init__(self, block: nn.Module, p_skip: float = 0.5, p_residual: float = 0.5) -> None:
        super().__init__()
        for name, value in (("p_skip", p_skip), ("p_residual", p_residual)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        self.block = block
        self.p_skip = float(p_skip)
        self.p_residual = float(p_residual)
        # Set only while average_stochastic_passes samples masks in eval mode.
        self.inference_generator: torch.Generator | None = None

    def forward(self, x: Tensor) -> Tensor:
        """Combines the skip and residual paths.

        Args:
            x: Input of any shape ``block`` accepts.

        Returns:
            The masked sum in training (or sampled) mode, its expectation otherwise.

        Raises:
            ValueError: If ``block`` changes the shape of its input.
        """
        residual = self.block(x)
        if residual.shape != x.shape:
            raise ValueError(f"Swapout needs a block that keeps the shape, got {tuple(x.shape)} -> "
                             f"{tuple(residual.shape)}")
        keep_skip, keep_residual = 1.0 - self.p_skip, 1.0 - self.p_residual
        generator = None if self.training else self.inference_generator
        if not self.training and generator is None:
            return keep_skip * x + keep_residual * residual
        theta1 = torch.empty_like(x).bernoulli_(keep_skip, generator=generator)
        theta2 = torch.empty_like(residual).bernoulli_(keep_residual, generator=generator)
        return theta1 * x + theta2 * residual

    def extra_repr(self) -> str:
        """Returns the settings shown by ``repr``."""
        return f"p_skip={self.p_skip}, p_residual={self.p_residual}"


def average_stochastic_passes(network: nn.Module, x: Tensor, samples: int, seed: int = 0) -> Tensor:
    """Evaluates a network with Swapout layers by averaging sampled passes.

    Singh et al. (2016) average sampled passes rather than use each layer's expectation,
    which nonlinearities make differ. Other modules keep their mode. The masks come from a
    private generator seeded with ``seed``: reproducible, and the global RNG is left alone.

    Args:
        network: The network, normally in eval mode.
        x: Its input.
        samples: How many passes to average, ``>= 1``.
        seed: Seed of the masks' generator.

    Returns:
        The mean output.

    Raises:
        ValueError: If ``samples < 1``.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples!r}")
    layers = [m for m in network.modules() if isinstance(m, Swapout)]
    generator = torch.Generator(device=x.device).manual_seed(seed)
    for layer in layers:
        layer.inference_generator = generator
    try:
        total = network(x)
        for _ in range(samples - 1):
            total = total + network(x)
    finally:
        for layer in layers:
            layer.inference_generator = None
    return total / samples


def make_dropout(kind: str, p: float, feature_ndim: int | None = None) -> nn.Module:
    """Builds a dropout layer by name.

    Args:
        kind: One of :data:`DROPOUT_KINDS`.
        p: The drop probability, in ``[0, 1)``; ignored for ``"none"``.
        feature_ndim: For the batch and epoch kinds, see :class:`BernoulliDropout`.

    Returns:
        The layer (``nn.Identity`` for ``"none"``).

    Raises:
        ValueError: If ``kind`` is unknown or ``p`` is outside ``[0, 1)``.
    """
    if kind == "none":
        return nn.Identity()
    if kind == "gaussian":
        return GaussianDropout(p)
    modes = {"bernoulli": "sample", "bernoulli_batch": "batch", "bernoulli_epoch": "epoch"}
    if kind not in modes:
        raise ValueError(f"unknown dropout kind {kind!r}; valid kinds: {', '.join(DROPOUT_KINDS)}")
    return BernoulliDropout(p, mode=modes[kind], feature_ndim=feature_ndim)


def resample_epoch_masks(module: nn.Module) -> int:
    """Redraws the masks of every epoch-mode :class:`BernoulliDropout` in ``module``, itself
    included; returns how many layers were reset."""
    count = 0
    for layer in module.modules():
        if isinstance(layer, BernoulliDropout) and layer.mode == "epoch":
            layer.resample()
            count += 1
    return count
