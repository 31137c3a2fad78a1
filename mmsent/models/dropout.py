"""Stochastic regularisers: Bernoulli dropout with three mask schedules, Gaussian dropout
and Swapout.

Every module here is the identity (or, for Swapout, its expectation) in eval mode, so a
model trained with noise is evaluated deterministically; :func:`average_stochastic_passes`
evaluates a Swapout network by averaging sampled passes instead.

Encoders build their dropout layer with :func:`make_dropout` so that the kind of noise is
a configuration choice; :func:`resample_epoch_masks` (driven by
:class:`mmsent.callbacks.dropout.EpochDropoutCallback`) redraws the epoch-mode masks.
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
    """Validates a drop probability for noise that must keep some signal.

    Args:
        p (float): The probability of dropping a unit.
        name (str): The argument name, for the message.

    Returns:
        float: ``p`` as a float.

    Raises:
        ValueError: If ``p`` is not in ``[0, 1)``.
    """
    value = float(p)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {p!r}")
    return value


def _bernoulli_mask(shape: torch.Size, p: float, like: Tensor) -> Tensor:
    """Draws an inverted-dropout mask: ``0`` with probability ``p``, else ``1 / (1 - p)``.

    Args:
        shape (torch.Size): The mask shape.
        p (float): The drop probability, in ``[0, 1)``.
        like (Tensor): A tensor whose dtype and device the mask takes.

    Returns:
        Tensor: The scaled mask.
    """
    keep = 1.0 - p
    mask = torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(keep)
    return mask.div_(keep)


class BernoulliDropout(nn.Module):
    """Inverted Bernoulli dropout with a choice of how masks are shared.

    Kept units are scaled by ``1 / (1 - p)`` so the expected output equals the input and
    nothing needs rescaling at evaluation time.

    Modes:

    * ``"sample"``: an independent mask for every element of every sample (standard
      dropout, Srivastava et al. 2014).
    * ``"batch"``: one mask over the feature dimensions (all but the first), shared by
      every sample of the batch and redrawn at every forward pass.
    * ``"epoch"``: one mask over the feature dimensions, drawn lazily at the first
      forward pass after :meth:`resample` and kept until the next :meth:`resample`,
      which marks the start of an epoch. Under Lightning,
      :class:`mmsent.callbacks.EpochDropoutCallback` calls it at every training epoch
      start; in a plain loop, call :func:`resample_epoch_masks` there. A training
      forward pass before any :meth:`resample` raises, naming the callback: without a
      driver the layer would silently keep one mask for the whole run. The feature
      shape is fixed by the first pass of an epoch, so epoch mode suits fixed-size
      features (MLP layers, pooled encoder outputs) unless ``feature_ndim`` restricts
      the mask to the trailing dimensions.

    With ``feature_ndim=1`` a ``(batch, time, features)`` input gets one mask over the
    last dimension shared by every time step, the "locked" or variational dropout of
    Gal & Ghahramani (2016) for recurrent inputs; this also lets epoch mode accept
    sequences whose length changes between batches.

    Args:
        p (float): The probability of dropping a unit, in ``[0, 1)``.
        mode (BernoulliMode): ``"sample"``, ``"batch"`` or ``"epoch"``.
        feature_ndim (int | None): How many trailing dimensions the batch/epoch mask
            covers; ``None`` means all but the first. Ignored in sample mode.

    Raises:
        ValueError: If ``p`` is outside ``[0, 1)``, ``mode`` is unknown or
            ``feature_ndim < 1``.
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
        # A buffer so that ``model.to(device)`` moves it; not persistent because a mask
        # is training noise, not state worth checkpointing.
        self.register_buffer("mask", None, persistent=False)
        self.epochs_started = 0

    def forward(self, x: Tensor) -> Tensor:
        """Applies dropout in training mode.

        Args:
            x (Tensor): Input of shape ``(batch, *features)``.

        Returns:
            Tensor: ``x`` with dropped units zeroed and the rest scaled, or ``x`` itself
            in eval mode or when ``p == 0``.

        Raises:
            ValueError: If ``x`` has no more than ``feature_ndim`` dimensions, or in epoch
                mode if the feature shape differs from the shape of the current mask.
            RuntimeError: In epoch mode, if no epoch has been started by
                :meth:`resample`.
        """
        if not self.training or self.p == 0.0:
            return x
        if self.mode == "sample":
            return F.dropout(x, self.p, training=True)
        if self.mode == "batch":
            return x * _bernoulli_mask(self._feature_shape(x), self.p, like=x)
        return x * self._epoch_mask(x)

    def _feature_shape(self, x: Tensor) -> torch.Size:
        """Returns the shape of the dimensions a shared mask covers.

        Args:
            x (Tensor): Input of shape ``(batch, *features)``.

        Returns:
            torch.Size: ``x.shape[1:]``, or its last ``feature_ndim`` entries.

        Raises:
            ValueError: If ``x`` has no more than ``feature_ndim`` dimensions.
        """
        if self.feature_ndim is None:
            return x.shape[1:]
        if x.ndim <= self.feature_ndim:
            raise ValueError(f"feature_ndim={self.feature_ndim} needs inputs with more dimensions, "
                             f"got shape {tuple(x.shape)}")
        return x.shape[x.ndim - self.feature_ndim :]

    def _epoch_mask(self, x: Tensor) -> Tensor:
        """Returns the epoch mask, drawing it for ``x``'s feature shape if there is none.

        Args:
            x (Tensor): Input of shape ``(batch, *features)``.

        Returns:
            Tensor: The mask, in ``x``'s dtype and on its device.

        Raises:
            ValueError: If the feature shape differs from the mask's shape.
            RuntimeError: If no epoch has been started by :meth:`resample`.
        """
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
        """Starts an epoch: discards the current mask, and the next training forward pass
        draws a new one."""
        self.mask = None
        self.epochs_started += 1

    def extra_repr(self) -> str:
        """Returns the settings shown by ``repr``."""
        shared = "" if self.feature_ndim is None else f", feature_ndim={self.feature_ndim}"
        return f"p={self.p}, mode={self.mode!r}{shared}"


class GaussianDropout(nn.Module):
    """Multiplicative Gaussian noise ``x * e`` with ``e ~ N(1, p / (1 - p))``.

    Srivastava et al. (2014) show this matches the mean and variance of inverted Bernoulli
    dropout with drop probability ``p`` while keeping every unit active.

    Args:
        p (float): The equivalent drop probability, in ``[0, 1)``.

    Raises:
        ValueError: If ``p`` is outside ``[0, 1)``.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = _check_drop_probability(p)
        self.std = math.sqrt(self.p / (1.0 - self.p))

    def forward(self, x: Tensor) -> Tensor:
        """Multiplies by Gaussian noise in training mode.

        Args:
            x (Tensor): Input of any shape.

        Returns:
            Tensor: The noisy input, or ``x`` itself in eval mode or when ``p == 0``.
        """
        if not self.training or self.p == 0.0:
            return x
        return x * (1.0 + self.std * torch.randn_like(x))

    def extra_repr(self) -> str:
        """Returns the settings shown by ``repr``."""
        return f"p={self.p}"


class Swapout(nn.Module):
    """Swapout (Singh et al. 2016): ``y = Θ1 ⊙ x + Θ2 ⊙ F(x)``.

    ``Θ1`` and ``Θ2`` are independent per-element Bernoulli masks that keep a unit with
    probability ``1 - p_skip`` and ``1 - p_residual``. Masks are not rescaled; in eval mode
    the layer returns the expectation ``(1 - p_skip) x + (1 - p_residual) F(x)``, unless
    :func:`average_stochastic_passes` is running, which samples masks in eval mode too.

    The masks span a family of architectures, per unit and per sample:

    * ``p_skip = p_residual = 0``: a ResNet block, ``x + F(x)``.
    * ``p_skip = 1, p_residual = 0``: a plain feed-forward layer, ``F(x)``.
    * ``p_skip = 0, p_residual = 1``: the identity (the block is skipped).
    * ``p_skip = 1, p_residual = p``: dropout on ``F(x)`` without rescaling.
    * ``p_skip = 0, p_residual = p``: a per-unit version of stochastic depth.

    Args:
        block (nn.Module): The residual function ``F``; its output must have the shape of
            its input.
        p_skip (float): Probability of dropping a unit of the skip path ``x``, in ``[0, 1]``.
        p_residual (float): Probability of dropping a unit of ``F(x)``, in ``[0, 1]``.

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
        # Set only while average_stochastic_passes runs: masks are then sampled in eval
        # mode, from this private generator.
        self.inference_generator: torch.Generator | None = None

    def forward(self, x: Tensor) -> Tensor:
        """Combines the skip and residual paths.

        Args:
            x (Tensor): Input of any shape accepted by ``block``.

        Returns:
            Tensor: The masked sum in training mode (and under
            :func:`average_stochastic_passes`), its expectation otherwise.

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

    Singh et al. (2016) infer with Swapout by averaging the outputs of ``samples``
    forward passes, each with freshly drawn masks in every Swapout layer, rather than by
    replacing every layer with its expectation: downstream nonlinearities make the two
    differ; the average estimates the ensemble's mean output, whose error need not be lower.
    Every other module keeps its mode (dropout stays off in eval mode). The masks come
    from a private generator seeded with ``seed``, so the result is reproducible and the
    global random state, which training draws from, is left alone.

    Args:
        network (nn.Module): The network, normally in eval mode.
        x (Tensor): Its input.
        samples (int): How many passes to average, ``>= 1``.
        seed (int): Seed of the masks' generator.

    Returns:
        Tensor: The mean output.

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
        kind (str): One of :data:`DROPOUT_KINDS`: ``"bernoulli"`` (per-sample masks),
            ``"bernoulli_batch"``, ``"bernoulli_epoch"``, ``"gaussian"`` or ``"none"``.
        p (float): The drop probability, in ``[0, 1)``; ignored for ``"none"``.
        feature_ndim (int | None): For the batch and epoch kinds, how many trailing
            dimensions one mask covers (``1`` for ``(batch, time, features)`` sequences);
            see :class:`BernoulliDropout`.

    Returns:
        nn.Module: The layer (``nn.Identity`` for ``"none"``).

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
    """Redraws the masks of every epoch-mode :class:`BernoulliDropout` in ``module``.

    Args:
        module (nn.Module): The model to search, itself included.

    Returns:
        int: How many epoch-mode layers were reset.
    """
    count = 0
    for layer in module.modules():
        if isinstance(layer, BernoulliDropout) and layer.mode == "epoch":
            layer.resample()
            count += 1
    return count
