"""Tests for the weight penalties."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmsent.regularization import (
    Regularizer,
    elastic_net_penalty,
    l1_penalty,
    l2_penalty,
    tikhonov_penalty,
)


@pytest.fixture
def params() -> list[torch.Tensor]:
    return [
        torch.tensor([[1.0, -2.0], [3.0, 0.5]], requires_grad=True),
        torch.tensor([-1.0, 4.0, 2.0], requires_grad=True),
    ]


def test_l1_penalty(params: list[torch.Tensor]) -> None:
    assert l1_penalty(params).item() == pytest.approx(6.5 + 7.0)


def test_l2_penalty(params: list[torch.Tensor]) -> None:
    assert l2_penalty(params).item() == pytest.approx(14.25 + 21.0)


def test_elastic_net_penalty(params: list[torch.Tensor]) -> None:
    expected = 0.3 * 13.5 + 0.7 * 35.25
    assert elastic_net_penalty(params, l1_ratio=0.3).item() == pytest.approx(expected)
    assert elastic_net_penalty(params, 1.0).item() == pytest.approx(l1_penalty(params).item())
    assert elastic_net_penalty(params, 0.0).item() == pytest.approx(l2_penalty(params).item())


def test_elastic_net_rejects_bad_ratio(params: list[torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="l1_ratio"):
        elastic_net_penalty(params, 1.5)


def test_tikhonov_difference_penalty(params: list[torch.Tensor]) -> None:
    # Rows [1, -2] and [3, 0.5] give differences -3 and -2.5; [-1, 4, 2] gives 5 and -2.
    expected = 9.0 + 6.25 + 25.0 + 4.0
    assert tikhonov_penalty(params).item() == pytest.approx(expected)


def test_tikhonov_with_identity_is_l2(params: list[torch.Tensor]) -> None:
    l2 = l2_penalty(params).item()
    assert tikhonov_penalty(params, "identity").item() == pytest.approx(l2)
    weight = params[0]
    assert tikhonov_penalty([weight], torch.eye(2)).item() == pytest.approx(14.25)


def test_tikhonov_with_matrix_operator() -> None:
    w = torch.tensor([[1.0, 2.0, 3.0]])
    gamma = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
    assert tikhonov_penalty([w], gamma).item() == pytest.approx(4.0 + 16.0)


def test_tikhonov_rejects_bad_operators(params: list[torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="cannot act"):
        tikhonov_penalty(params, torch.eye(5))
    with pytest.raises(ValueError, match="unknown Tikhonov operator"):
        tikhonov_penalty(params, "laplacian")


@pytest.mark.parametrize(
    ("penalty", "expected_grad"),
    [
        (l1_penalty, lambda w: torch.sign(w)),
        (l2_penalty, lambda w: 2 * w),
    ],
)
def test_gradients_flow(params, penalty, expected_grad) -> None:
    penalty(params).backward()
    for w in params:
        assert torch.allclose(w.grad, expected_grad(w.detach()))


def test_tikhonov_gradient_flows() -> None:
    w = torch.tensor([1.0, 3.0, 2.0], requires_grad=True)
    tikhonov_penalty([w]).backward()
    # d/dw of (w1 - w0)² + (w2 - w1)² = [-2(w1-w0), 2(w1-w0) - 2(w2-w1), 2(w2-w1)].
    assert torch.allclose(w.grad, torch.tensor([-4.0, 6.0, -2.0]))


def test_empty_params_give_zero() -> None:
    for penalty in (l1_penalty, l2_penalty, tikhonov_penalty):
        assert penalty([]).item() == 0.0


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Conv1d(4, 2, kernel_size=3))


def test_regularizer_penalises_weight_matrices_and_kernels_only() -> None:
    model = _model()
    weights = [model[0].weight, model[2].weight]
    assert Regularizer.penalised_parameters(model) == weights
    expected = 0.1 * l1_penalty(weights) + 0.01 * l2_penalty(weights)
    assert torch.allclose(Regularizer(l1=0.1, l2=0.01)(model), expected)


def test_regularizer_sums_every_weighted_penalty() -> None:
    model = _model()
    weights = Regularizer.penalised_parameters(model)
    reg = Regularizer(l1=0.1, l2=0.2, elastic=0.3, l1_ratio=0.25, tikhonov=0.4)
    expected = (
        0.1 * l1_penalty(weights)
        + 0.2 * l2_penalty(weights)
        + 0.3 * elastic_net_penalty(weights, 0.25)
        + 0.4 * tikhonov_penalty(weights)
    )
    assert torch.allclose(reg(model), expected)


def test_regularizer_skips_frozen_parameters() -> None:
    model = _model()
    model[0].weight.requires_grad_(False)
    assert Regularizer(l2=1.0)(model).item() == pytest.approx(l2_penalty([model[2].weight]).item())


def test_regularizer_gradient_reaches_weights_not_biases() -> None:
    model = _model()
    Regularizer(l2=0.5)(model).backward()
    assert torch.allclose(model[0].weight.grad, model[0].weight.detach())
    assert model[0].bias.grad is None and model[1].weight.grad is None


def test_inactive_regularizer_returns_constant_zero() -> None:
    penalty = Regularizer()(_model())
    assert penalty.item() == 0.0
    assert not penalty.requires_grad and penalty.grad_fn is None


def test_l2_penalty_matches_sgd_weight_decay() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    lam, lr = 0.05, 0.1
    penalised, decayed = nn.Linear(3, 1, bias=False), nn.Linear(3, 1, bias=False)
    decayed.load_state_dict(penalised.state_dict())
    for model, loss_extra, decay in ((penalised, True, 0.0), (decayed, False, 2 * lam)):
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=decay)
        for _ in range(5):
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            if loss_extra:
                loss = loss + Regularizer(l2=lam)(model)
            loss.backward()
            optimizer.step()
    assert torch.allclose(penalised.weight, decayed.weight, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [{"l2": -1.0}, {"l1_ratio": 2.0}, {"tikhonov_operator": "laplacian"}],
)
def test_regularizer_validates_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Regularizer(**kwargs)
