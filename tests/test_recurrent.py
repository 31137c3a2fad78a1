"""The padded LSTM path against PyTorch's packed sequences."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mmsent.models.recurrent import lstm_over_lengths


def packed_reference(lstm, x, lengths):
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, (h, _) = lstm(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out, h


@pytest.mark.parametrize("layers, bidirectional, proj_size", [(1, True, 0), (2, True, 0), (1, False, 0), (2, True, 4)])
def test_outputs_final_states_and_gradients_match_packed_sequences(layers, bidirectional, proj_size):
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(6, 8, num_layers=layers, bidirectional=bidirectional, batch_first=True,
                         proj_size=proj_size).eval()
    x = torch.randn(5, 7, 6, requires_grad=True)
    lengths = torch.tensor([7, 1, 4, 6, 2])
    expected, expected_h = packed_reference(lstm, x, lengths)
    out, h = lstm_over_lengths(lstm, x, lengths)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(h, expected_h, atol=1e-6, rtol=1e-5)
    weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    inputs = [x, *lstm.parameters()]
    grads = torch.autograd.grad((out * weights).sum() + h.square().sum(), inputs)
    expected_grads = torch.autograd.grad((expected * weights).sum() + expected_h.square().sum(), inputs)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-4)


def test_padding_never_reaches_the_outputs():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 4, bidirectional=True, batch_first=True)
    x = torch.randn(2, 5, 3)
    lengths = torch.tensor([3, 5])
    noisy = x.clone()
    noisy[0, 3:] = 100.0
    out, h = lstm_over_lengths(lstm, x, lengths)
    noisy_out, noisy_h = lstm_over_lengths(lstm, noisy, lengths)
    torch.testing.assert_close(noisy_out, out)
    torch.testing.assert_close(noisy_h, h)
    assert out[0, 3:].abs().sum() == 0
