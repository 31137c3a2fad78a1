"""Tests for the weight penalties."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml
from jsonargparse import ArgumentParser
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader

from mmsent.regularization import (
    PenaltyTerms,
    Regularizer,
    elastic_net_penalty,
    l1_penalty,
    l2_penalty,
    mahalanobis_penalty,
    row_covariance,
    soft_threshold_,
    tikhonov_penalty,
)
from mmsent.tasks.base import BaseTask
from mmsent.tasks.unimodal import UnimodalTask


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


def _rows(weight: torch.Tensor) -> list[torch.Tensor]:
    """The rows θ_i of a tensor along its last dimension, as float64 vectors."""
    return list(weight.detach().double().reshape(-1, weight.shape[-1]))


GAMMA = [[1.0, -1.0, 0.0], [0.5, 0.0, 2.0]]
SIGMA = [[2.0, 0.3, 0.0], [0.3, 1.0, -0.2], [0.0, -0.2, 0.5]]


def test_tikhonov_matrix_from_the_regularizer_matches_a_direct_computation() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 3), nn.Conv1d(2, 2, kernel_size=3))
    model[1].weight.requires_grad_(False)
    gamma = torch.tensor(GAMMA, dtype=torch.float64)
    weights = [model[0].weight, model[2].weight]
    expected = sum(float(gamma @ row @ (gamma @ row)) for w in weights for row in _rows(w))
    penalty = Regularizer(tikhonov=0.3, tikhonov_operator=GAMMA)(model)
    assert penalty.item() == pytest.approx(0.3 * expected, rel=1e-6)


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".safetensors"])
def test_tikhonov_matrix_from_a_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"gamma{suffix}"
    gamma = torch.tensor(GAMMA)
    if suffix == ".npy":
        np.save(path, gamma.numpy())
    elif suffix == ".pt":
        torch.save(gamma, path)
    else:
        save_file({"gamma": gamma}, path)
    w = torch.randn(5, 3, requires_grad=True)
    model = nn.Module()
    model.w = nn.Parameter(w.detach().clone())
    from_file = Regularizer(tikhonov=1.0, tikhonov_operator=str(path))(model)
    assert from_file.item() == pytest.approx(tikhonov_penalty([w], gamma).item(), rel=1e-6)


def test_matrix_files_are_read_without_running_code(tmp_path: Path) -> None:
    pickled = tmp_path / "gamma.pt"
    torch.save({"gamma": torch.eye(3), "note": Path("x")}, pickled)
    with pytest.raises(ValueError, match=r"regularizer.tikhonov_operator: cannot read"):
        Regularizer(tikhonov=1.0, tikhonov_operator=str(pickled))
    objects = tmp_path / "gamma.npy"
    np.save(objects, np.array([[1, None]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"cannot read matrix file"):
        Regularizer(tikhonov=1.0, tikhonov_operator=str(objects))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tikhonov_operator": "missing.npy"}, "does not exist"),
        ({"tikhonov_operator": "laplacian"}, "unknown Tikhonov operator"),
        ({"tikhonov_operator": [[1.0, 2.0], [3.0]]}, "list of equal rows"),
        ({"covariance": [[1.0, 2.0], [0.0, 1.0]]}, "symmetric"),
        ({"covariance": [[1.0, 2.0], [2.0, 1.0]]}, "positive definite"),
        ({"covariance": [[1.0, 0.0]]}, "square"),
        ({"covariance": "pooled"}, "covariance must be 'rows'"),
        ({"covariance_shrinkage": 0.0}, "covariance_shrinkage"),
        ({"groups": {"audio": PenaltyTerms(mahalanobis=-1.0)}}, r"groups\.audio\.mahalanobis"),
    ],
)
def test_bad_matrices_are_reported_with_their_key(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Regularizer(**kwargs)


def test_mahalanobis_with_a_given_covariance_matches_a_direct_computation() -> None:
    torch.manual_seed(0)
    weight = torch.randn(4, 3, requires_grad=True)
    sigma = torch.tensor(SIGMA, dtype=torch.float64)
    inverse = torch.linalg.inv(sigma)
    expected = sum(float(row @ inverse @ row) for row in _rows(weight))
    assert mahalanobis_penalty([weight], sigma).item() == pytest.approx(expected, rel=1e-6)
    mahalanobis_penalty([weight], sigma).backward()
    assert torch.allclose(weight.grad.double(), 2 * weight.detach().double() @ inverse, atol=1e-5)
    # Σ = I is the L2 penalty.
    eye = torch.eye(3, dtype=torch.float64)
    assert mahalanobis_penalty([weight], eye).item() == pytest.approx(l2_penalty([weight]).item())


def test_mahalanobis_with_the_rows_covariance_matches_a_direct_computation() -> None:
    torch.manual_seed(1)
    weight = torch.randn(2, 5, 3, requires_grad=True)
    rows = torch.stack(_rows(weight))
    second_moment = sum(torch.outer(r, r) for r in rows) / len(rows)
    shrunk = 0.7 * second_moment + 0.3 * torch.trace(second_moment) / 3 * torch.eye(3).double()
    assert torch.allclose(row_covariance(weight, 0.3), shrunk)
    inverse = torch.linalg.inv(shrunk)
    expected = sum(float(r @ inverse @ r) for r in rows)
    penalty = mahalanobis_penalty([weight], "rows", shrinkage=0.3)
    assert penalty.item() == pytest.approx(expected, rel=1e-6)
    # The covariance is a detached estimate: the gradient is 2 Σ⁻¹ θ per row.
    penalty.backward()
    expected_grad = (2 * rows @ inverse).reshape(weight.shape)
    assert torch.allclose(weight.grad.double(), expected_grad, atol=1e-5)


def test_mahalanobis_rows_of_zero_weights_is_zero() -> None:
    weight = torch.zeros(3, 4, requires_grad=True)
    penalty = mahalanobis_penalty([weight])
    penalty.backward()
    assert penalty.item() == 0.0 and torch.equal(weight.grad, torch.zeros(3, 4))


def _unimodal_task(regularizer: dict) -> UnimodalTask:
    """Builds a small audio task from a YAML config, as the CLI would."""
    config = {
        "model": {
            "modality": "audio",
            "input_dims": {"audio": 2},
            "encoder": {
                "class_path": "mmsent.models.audio.AcousticMLPEncoder",
                "init_args": {"hidden_dims": [3, 3], "out_dim": 3},
            },
            "regularizer": regularizer,
        }
    }
    parser = ArgumentParser()
    parser.add_class_arguments(UnimodalTask, "model", fail_untyped=False)
    torch.manual_seed(0)
    return parser.instantiate(parser.parse_string(yaml.safe_dump(config))).model


def test_penalties_per_group_from_yaml(tmp_path: Path) -> None:
    np.save(tmp_path / "gamma.npy", np.array(GAMMA))
    task = _unimodal_task({
        "l2": 0.1,
        "groups": {
            "audio": {
                "tikhonov": 0.2,
                "tikhonov_operator": str(tmp_path / "gamma.npy"),
                "parameters": ["net.4.weight", "net.8.weight"],
            },
            "head": {"mahalanobis": 0.3, "covariance": SIGMA},
            "video": {"l1": 1.0},
        },
    })
    regularizer = task.regularizer
    assert isinstance(regularizer, Regularizer)
    assert isinstance(regularizer.groups["head"], PenaltyTerms)
    net = task.encoder.net
    gamma = torch.tensor(GAMMA, dtype=torch.float64)
    inverse = torch.linalg.inv(torch.tensor(SIGMA, dtype=torch.float64))
    tikhonov = sum(
        float((gamma @ row).pow(2).sum()) for w in (net[4].weight, net[8].weight) for row in _rows(w)
    )
    mahalanobis = sum(float(row @ inverse @ row) for row in _rows(task.head.net[0].weight))
    # The first layer (2 x 2 statistics in, 3 out) is in no group's patterns: top-level L2.
    l2 = float(net[0].weight.detach().double().pow(2).sum())
    expected = 0.1 * l2 + 0.2 * tikhonov + 0.3 * mahalanobis
    assert regularizer(task).item() == pytest.approx(expected, rel=1e-5)


def test_unknown_groups_and_empty_patterns_are_reported_when_the_model_is_built() -> None:
    with pytest.raises(ValueError, match=r"unknown group 'fusion'; the model has \['audio', 'head'\]"):
        _unimodal_task({"groups": {"fusion": {"l2": 1.0}}})
    with pytest.raises(ValueError, match=r"groups.audio.parameters \['lstm.\*'\] select no"):
        _unimodal_task({"groups": {"audio": {"l2": 1.0, "parameters": ["lstm.*"]}}})


@pytest.mark.parametrize(("regularizer", "message"), [
    ({"tikhonov": 1.0, "tikhonov_operator": GAMMA},
     r"regularizer.tikhonov_operator has shape \(2, 3\) but parameter 'encoder.net.0.weight' of shape \(3, 4\)"),
    ({"mahalanobis": 1.0, "covariance": SIGMA},
     r"regularizer.covariance has shape \(3, 3\) but parameter 'encoder.net.0.weight' of shape \(3, 4\)"),
    ({"groups": {"head": {"tikhonov": 1.0, "tikhonov_operator": [[1.0, -1.0]]}}},
     r"regularizer.groups.head.tikhonov_operator has shape \(1, 2\) but parameter 'head.net.0.weight'"),
])
def test_a_matrix_that_does_not_fit_a_weight_is_reported_when_the_model_is_built(regularizer, message) -> None:
    with pytest.raises(ValueError, match=message):
        _unimodal_task(regularizer)


def test_matrices_that_fit_every_weight_they_reach_build() -> None:
    task = _unimodal_task({"groups": {"audio": {"tikhonov": 1.0, "tikhonov_operator": GAMMA,
                                                "parameters": ["net.4.weight", "net.8.weight"]},
                                      "head": {"mahalanobis": 1.0, "covariance": SIGMA}}})
    assert task.regularizer(task).item() > 0


def test_mahalanobis_penalty_rejects_a_covariance_that_is_not_symmetric_positive_definite() -> None:
    weight = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"covariance: a covariance must be symmetric, but max \|Σ - Σᵀ\| = 1"):
        mahalanobis_penalty([weight], torch.tensor([[2.0, 1.0], [0.0, 2.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="must be positive definite"):
        mahalanobis_penalty([weight], torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="must be a square matrix"):
        mahalanobis_penalty([weight], torch.ones(2, 3, dtype=torch.float64))


def test_soft_threshold() -> None:
    weight = torch.tensor([-0.3, -0.05, 0.0, 0.04, 0.2])
    soft_threshold_(weight, 0.1)
    assert torch.allclose(weight, torch.tensor([-0.2, 0.0, 0.0, 0.0, 0.1]))
    assert (weight[1:4] == 0).all()


def _sparse_regression() -> tuple[torch.Tensor, torch.Tensor]:
    """Eight features of which only the first two matter."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=generator)
    y = x[:, :2] @ torch.tensor([[1.5], [-2.0]]) + 0.1 * torch.randn(256, 1, generator=generator)
    return x, y


def test_subgradient_l1_leaves_small_weights_while_the_proximal_step_zeroes_them() -> None:
    x, y = _sparse_regression()
    results = {}
    for proximal in (False, True):
        torch.manual_seed(0)
        model = nn.Linear(8, 1)
        regularizer = Regularizer(l1=0.05, l1_proximal=proximal)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(300):
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y) + regularizer(model)
            loss.backward()
            optimizer.step()
            regularizer.proximal_step(model, optimizer)
        results[proximal] = model.weight.detach()[0]
    subgradient, proximal = results[False], results[True]
    # Subgradient steps overshoot 0 by up to lr * l1 and never land on it.
    assert (subgradient[2:] != 0).all() and subgradient[2:].abs().max() < 0.05 * 0.05 * 2
    assert (proximal[2:] == 0).all()
    assert proximal[:2].abs().min() > 1.0


class _LinearTask(BaseTask):
    """The smallest BaseTask: a linear score of eight features."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        torch.manual_seed(0)
        self.linear = nn.Linear(8, 1)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.linear(batch["x"]).squeeze(-1)


def test_the_task_applies_the_proximal_step_after_each_optimizer_step() -> None:
    x, y = _sparse_regression()
    # Full batches: minibatch noise larger than lr * l1 would move zeroed weights again.
    batches = [{"x": x, "label": y[:, 0]}] * 300

    def train(proximal: bool) -> torch.Tensor:
        task = _LinearTask(
            loss="mse",
            optimizer=lambda params: torch.optim.SGD(params, lr=0.05),
            regularizer=Regularizer(l1=0.05, l1_proximal=proximal),
        )
        pl.Trainer(
            max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, accelerator="cpu",
        ).fit(task, DataLoader(batches, batch_size=None))
        return task.linear.weight.detach()[0]

    assert (train(proximal=True)[2:] == 0).all()
    assert (train(proximal=False)[2:] != 0).all()
