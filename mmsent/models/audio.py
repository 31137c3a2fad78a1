"""Acoustic encoder: statistics pooling over feature frames, then an MLP."""

from __future__ import annotations

import copy

import torch
from torch import nn

from mmsent.models.config import init_args
from mmsent.models.dropout import make_dropout
from mmsent.models.pooling import masked_mean_std


def mlp(in_dim: int, hidden_dims: list[int], out_dim: int, dropout: nn.Module | None) -> nn.Sequential:
    """A ReLU MLP with layer norm and optional dropout between layers.

    Args:
        in_dim (int): Input size.
        hidden_dims (list[int]): Sizes of the hidden layers.
        out_dim (int): Output size (no activation after the last layer).
        dropout (nn.Module | None): A copy is applied after every hidden activation;
            copies, so a stateful dropout (an epoch-level mask) holds one mask per layer.

    Returns:
        nn.Sequential: The network.
    """
    layers: list[nn.Module] = []
    for width in hidden_dims:
        layers += [nn.Linear(in_dim, width), nn.LayerNorm(width), nn.ReLU()]
        if dropout is not None:
            layers.append(copy.deepcopy(dropout))
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class AcousticMLPEncoder(nn.Module):
    """Frame features -> masked mean and std pooling -> MLP.

    Utterance-level features (one vector per clip, ``T == 1``) pass through the same
    path; their standard deviation is zero and carries nothing.

    Args:
        input_dim (int): Acoustic feature size per frame.
        hidden_dims (list[int]): MLP hidden sizes.
        out_dim (int): Size of the returned embedding.
        dropout (float): Dropout probability between layers.
        dropout_kind (str): A kind accepted by :func:`make_dropout`.
        input_norm (bool): Normalize the pooled statistics with a learned batch norm,
            so raw, unscaled features (openSMILE, COVAREP) need no preprocessing.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dims: list[int] | None = None,
        out_dim: int = 64,
        dropout: float = 0.2,
        dropout_kind: str = "bernoulli",
        input_norm: bool = True,
    ) -> None:
        super().__init__()
        self.config = init_args(locals())
        self.out_dim = out_dim
        self.norm = nn.BatchNorm1d(2 * input_dim) if input_norm else nn.Identity()
        hidden = [128, 128] if hidden_dims is None else list(hidden_dims)
        self.net = mlp(2 * input_dim, hidden, out_dim, make_dropout(dropout_kind, dropout))

    def forward(self, audio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encodes a padded batch.

        Args:
            audio (torch.Tensor): Frames, shape ``(B, T, D)``.
            mask (torch.Tensor): True at valid frames, shape ``(B, T)``.

        Returns:
            torch.Tensor: Shape ``(B, out_dim)``.
        """
        return self.net(self.norm(masked_mean_std(audio, mask)))
