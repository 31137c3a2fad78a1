"""Acoustic encoder: statistics pooling over feature frames, then an MLP."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable

import torch
from torch import nn

from mmsent.models.config import HubMixin
from mmsent.models.dropout import (
    Swapout,
    average_stochastic_passes,
    make_dropout,
    resample_epoch_masks,
)
from mmsent.models.pooling import all_valid, masked_mean_std


def mlp(in_dim: int, hidden_dims: list[int], out_dim: int, dropout: nn.Module | None) -> nn.Sequential:
    """A ReLU MLP with layer norm and optional dropout between layers.

    Args:
        in_dim: Input size.
        hidden_dims: Sizes of the hidden layers.
        out_dim: Output size (no activation after the last layer).
        dropout: Copied after every hidden activation, so an epoch mask is per layer.

    Returns:
        The network.
    """
    layers: list[nn.Module] = []
    for width in hidden_dims:
        layers += [nn.Linear(in_dim, width), nn.LayerNorm(width), nn.ReLU()]
        if dropout is not None:
            layers.append(copy.deepcopy(dropout))
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """``y = x + F(x)``, the identity shortcut of a ResNet block.

    Args:
        block: ``F``; its output has the shape of its input.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Adds the block's output to its input."""
        return x + self.block(x)


def residual_mlp(in_dim: int, hidden_dims: list[int], out_dim: int, dropout: nn.Module | None,
                 swapout: tuple[float, float] | None = None) -> nn.Sequential:
    """A ReLU MLP whose hidden layers after the first are residual blocks.

    Each hidden layer ``F`` after the first becomes ``x + F(x)``, or with ``swapout`` a
    :class:`~mmsent.models.dropout.Swapout` unit.

    Args:
        in_dim: Input size.
        hidden_dims: Sizes of the hidden layers, all equal.
        out_dim: Output size (no activation after the last layer).
        dropout: Copied after every hidden activation.
        swapout: ``(p_skip, p_residual)`` of every block; None for plain residual blocks.

    Returns:
        The network.

    Raises:
        ValueError: If the hidden sizes differ or there is none.
    """
    if not hidden_dims or len(set(hidden_dims)) != 1:
        raise ValueError(f"residual blocks need equal hidden sizes, got hidden_dims={hidden_dims}")
    width = hidden_dims[0]
    layers: list[nn.Module] = [nn.Linear(in_dim, width), nn.LayerNorm(width), nn.ReLU()]
    if dropout is not None:
        layers.append(copy.deepcopy(dropout))
    for _ in hidden_dims[1:]:
        block = nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width), nn.ReLU())
        if dropout is not None:
            block.append(copy.deepcopy(dropout))
        layers.append(ResidualBlock(block) if swapout is None else Swapout(block, *swapout))
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def greedy_layerwise_pretraining(network: nn.Sequential, inputs: torch.Tensor, epochs: int, lr: float = 1e-3,
                                 batch_size: int = 64, seed: int = 0) -> list[float]:
    """Pretrains an :func:`mlp`'s hidden layers one at a time as autoencoders.

    Bengio et al. (2007): each hidden layer and a linear decoder learn to reconstruct the
    layer's input (MSE), the output of the layers below; the output layer is left to
    supervised training.

    Args:
        network: An MLP built by :func:`mlp`.
        inputs: The first layer's training inputs, ``(N, in_dim)``.
        epochs: Passes over ``inputs`` per layer.
        lr: Adam's learning rate.
        batch_size: Batch size.
        seed: Seed of the private generator that orders the batches.

    Returns:
        Per hidden layer, the reconstruction error of its last epoch.

    Raises:
        ValueError: If ``network`` is not a plain MLP (residual blocks, Swapout).
    """
    starts = [i for i, layer in enumerate(network) if isinstance(layer, nn.Linear)]
    if any(isinstance(layer, (ResidualBlock, Swapout)) for layer in network):
        raise ValueError("greedy layer-wise pretraining needs a plain MLP (residual=False)")
    rng = torch.Generator().manual_seed(seed)
    errors, hidden = [], inputs.detach()
    was_training = network.training
    for start, end in itertools.pairwise(starts):
        layer = network[start:end].train()
        decoder = nn.Linear(layer[0].out_features, layer[0].in_features)
        optimizer = torch.optim.Adam([*layer.parameters(), *decoder.parameters()], lr)
        for _ in range(epochs):
            resample_epoch_masks(layer)
            total = 0.0
            for batch in torch.randperm(len(hidden), generator=rng).split(batch_size):
                loss = nn.functional.mse_loss(decoder(layer(hidden[batch])), hidden[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch)
        errors.append(total / len(hidden))
        with torch.no_grad():
            hidden = layer.eval()(hidden)
    network.train(was_training)
    return errors


class AcousticMLPEncoder(nn.Module, HubMixin):
    """Frame features -> masked mean and std pooling -> MLP.

    Utterance-level features (``T == 1``) take the same path, with a zero std.

    Args:
        input_dim: Acoustic feature size per frame.
        hidden_dims: MLP hidden sizes.
        out_dim: Size of the returned embedding.
        dropout: Dropout probability between layers.
        dropout_kind: A kind accepted by :func:`make_dropout`.
        input_norm: Batch-normalize the pooled statistics, so raw features need no scaling.
        residual: Residual hidden layers (:func:`residual_mlp`).
        swapout: ``(p_skip, p_residual)``: Swapout units instead (needs ``residual``).
        swapout_samples: In eval mode, average this many sampled passes
            (:func:`~mmsent.models.dropout.average_stochastic_passes`); 0: the expectation.

    Raises:
        ValueError: If ``swapout`` is set without ``residual``, or ``swapout_samples``
            without ``swapout`` or below 0.
    """

    def __init__(self, input_dim: int, hidden_dims: list[int] | None = None, out_dim: int = 64,
                 dropout: float = 0.2, dropout_kind: str = "bernoulli", input_norm: bool = True,
                 residual: bool = False, swapout: tuple[float, float] | None = None,
                 swapout_samples: int = 0) -> None:
        super().__init__()
        if swapout is not None and not residual:
            raise ValueError("AcousticMLPEncoder: swapout needs residual=True")
        if swapout_samples < 0 or (swapout_samples and swapout is None):
            raise ValueError("AcousticMLPEncoder: swapout_samples must be 0, or > 0 with swapout, "
                             f"got {swapout_samples!r}")
        self.out_dim = out_dim
        self.swapout_samples = swapout_samples
        self.norm = nn.BatchNorm1d(2 * input_dim) if input_norm else nn.Identity()
        hidden = [128, 128] if hidden_dims is None else list(hidden_dims)
        noise = make_dropout(dropout_kind, dropout)
        if residual:
            self.net = residual_mlp(2 * input_dim, hidden, out_dim, noise, swapout)
        else:
            self.net = mlp(2 * input_dim, hidden, out_dim, noise)

    @torch.no_grad()
    def pooled_inputs(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Returns the MLP's inputs ``(N, 2 * input_dim)`` for ``batches`` of ``(audio, mask)``
        pairs, as :meth:`forward` takes them: pooled statistics, standardized over all of them.

        Standardizing stands in for the input batch norm's training-time batch statistics.
        """
        pooled = torch.cat([masked_mean_std(audio, mask) for audio, mask in batches])
        if isinstance(self.norm, nn.Identity):
            return pooled
        return (pooled - pooled.mean(0)) / pooled.std(0).clamp(min=1e-5)

    def forward(self, audio: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Returns the embedding ``(B, out_dim)`` of frames ``audio`` ``(B, T, D)``; ``mask``
        ``(B, T)`` is True at valid frames, None when all are valid."""
        pooled = self.norm(masked_mean_std(audio, all_valid(audio) if mask is None else mask))
        if self.training or not self.swapout_samples:
            return self.net(pooled)
        return average_stochastic_passes(self.net, pooled, self.swapout_samples)
