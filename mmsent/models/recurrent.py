"""An LSTM over a padded batch, each sequence read only up to its own length."""

from __future__ import annotations

import torch
from torch import nn


def lstm_over_lengths(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs a batch-first ``nn.LSTM`` as over a packed sequence, without packing.

    Same results as packing: each direction reads a sequence within its length, later
    outputs are zeros. On CPU a packed sequence leaves the fused LSTM kernel for a much
    slower step-by-step loop; here the backward direction runs the fused kernel over
    each sequence reversed within its length.

    Args:
        lstm: A ``batch_first`` LSTM.
        x: Input ``(B, T, D)``, real steps first in each row.
        lengths: Real steps per row, ``(B,)``, each at least 1.

    Returns:
        Outputs ``(B, T, directions * H)`` and final hidden states
        ``(num_layers * directions, B, H)``, in ``nn.LSTM``'s order.
    """
    batch, steps = x.shape[:2]
    lengths = lengths.to(x.device)
    positions = torch.arange(steps, device=x.device)
    real = positions < lengths[:, None]
    # Reverses each row's real steps in place and leaves its padding where it is.
    reverse = torch.where(real, lengths[:, None] - 1 - positions, positions)
    last = lengths - 1
    rows = torch.arange(batch, device=x.device)
    names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if lstm.bias else [])
    names += ["weight_hr"] if lstm.proj_size else []
    state = x.new_zeros(1, batch, lstm.proj_size or lstm.hidden_size), x.new_zeros(1, batch, lstm.hidden_size)
    layer_input, finals = x, []
    for layer in range(lstm.num_layers):
        outputs = []
        for backward in ([False, True] if lstm.bidirectional else [False]):
            suffix = f"_l{layer}" + ("_reverse" if backward else "")
            weights = [getattr(lstm, name + suffix) for name in names]
            sequence = _reorder(layer_input, reverse) if backward else layer_input
            output, _, _ = torch.lstm(sequence, state, weights, lstm.bias, 1, 0.0, lstm.training, False, True)
            finals.append(output[rows, last])
            outputs.append(_reorder(output, reverse) if backward else output)
        layer_input = torch.cat(outputs, dim=-1)
        if lstm.training and lstm.dropout and layer < lstm.num_layers - 1:
            layer_input = nn.functional.dropout(layer_input, lstm.dropout, training=True)
    return layer_input * real.unsqueeze(-1).to(layer_input.dtype), torch.stack(finals)


def _reorder(sequence: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    return sequence.gather(1, order.unsqueeze(-1).expand_as(sequence))
