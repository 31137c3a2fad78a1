"""Tests for the dropout variants and the epoch-mask callback."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmsent.callbacks.dropout import EpochDropoutCallback
from mmsent.models.dropout import (
    DROPOUT_KINDS,
    BernoulliDropout,
    GaussianDropout,
    Swapout,
    make_dropout,
    resample_epoch_masks,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _mean_over_draws(layer: nn.Module, x: torch.Tensor, draws: int = 4000) -> torch.Tensor:
    """Averages the layer's output over many independent draws of its noise."""
    layer.train()
    total = torch.zeros_like(x)
    for _ in range(draws):
        if isinstance(layer, BernoulliDropout):
            layer.resample()
        total += layer(x)
    return total / draws


@pytest.mark.parametrize(
    "layer",
    [
        BernoulliDropout(0.3, "sample"),
        BernoulliDropout(0.3, "batch"),
        BernoulliDropout(0.3, "epoch"),
        GaussianDropout(0.3),
    ],
    ids=["sample", "batch", "epoch", "gaussian"],
)
def test_expected_value_is_preserved(layer: nn.Module) -> None:
    x = torch.linspace(-2.0, 2.0, 12).reshape(3, 4)
    assert torch.allclose(_mean_over_draws(layer, x), x, atol=0.1)


def test_inverted_scaling() -> None:
    x = torch.ones(64, 100)
    y = BernoulliDropout(0.25)(x)
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1.0 / 0.75))
    assert 0.15 < (y == 0).float().mean().item() < 0.35


def test_sample_mode_draws_independent_masks_per_sample() -> None:
    y = BernoulliDropout(0.5, "sample")(torch.ones(8, 50))
    assert not all(torch.equal(y[0], row) for row in y[1:])


def test_batch_mode_shares_mask_across_batch_and_redraws() -> None:
    layer = BernoulliDropout(0.5, "batch")
    x = torch.ones(8, 3, 20)
    first, second = layer(x), layer(x)
    assert all(torch.equal(first[0], row) for row in first)
    assert not torch.equal(first, second)


def test_epoch_mode_keeps_mask_until_resample() -> None:
    layer = BernoulliDropout(0.5, "epoch")
    first = layer(torch.ones(4, 50))
    assert all(torch.equal(first[0], row) for row in first)
    assert torch.equal(layer(torch.ones(7, 50))[0], first[0])
    layer.resample()
    assert not torch.equal(layer(torch.ones(4, 50))[0], first[0])


def test_epoch_mode_rejects_new_feature_shape() -> None:
    layer = BernoulliDropout(0.5, "epoch")
    layer(torch.ones(4, 50))
    with pytest.raises(ValueError, match="feature shape"):
        layer(torch.ones(4, 51))
    layer.resample()
    assert layer(torch.ones(4, 51)).shape == (4, 51)


@pytest.mark.parametrize("mode", ["batch", "epoch"])
def test_feature_ndim_shares_mask_over_leading_dims(mode: str) -> None:
    layer = BernoulliDropout(0.5, mode, feature_ndim=1)
    short, long = layer(torch.ones(3, 4, 40)), layer(torch.ones(2, 9, 40))
    assert all(torch.equal(short[0, 0], row) for row in short.reshape(-1, 40))
    assert all(torch.equal(long[0, 0], row) for row in long.reshape(-1, 40))
    assert torch.equal(short[0, 0], long[0, 0]) == (mode == "epoch")


def test_feature_ndim_needs_a_leading_dim() -> None:
    with pytest.raises(ValueError, match="feature_ndim"):
        BernoulliDropout(0.5, "batch", feature_ndim=2)(torch.ones(3, 4))
    with pytest.raises(ValueError, match="feature_ndim"):
        BernoulliDropout(0.5, "batch", feature_ndim=0)


def test_epoch_mask_is_not_saved_in_state_dict() -> None:
    layer = BernoulliDropout(0.5, "epoch")
    layer(torch.ones(2, 5))
    assert "mask" not in layer.state_dict()


@pytest.mark.parametrize(
    "layer",
    [BernoulliDropout(0.5, mode) for mode in ("sample", "batch", "epoch")] + [GaussianDropout(0.5)],
)
def test_identity_in_eval_mode(layer: nn.Module) -> None:
    x = torch.randn(5, 6)
    assert layer.eval()(x) is x


@pytest.mark.parametrize("layer", [BernoulliDropout(0.0, "batch"), GaussianDropout(0.0)])
def test_identity_when_p_is_zero(layer: nn.Module) -> None:
    x = torch.randn(5, 6)
    assert torch.equal(layer.train()(x), x)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_invalid_probability_raises(p: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        BernoulliDropout(p)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        GaussianDropout(p)


def test_invalid_mode_raises() -> None:
    with pytest.raises(ValueError, match="mode"):
        BernoulliDropout(0.1, mode="layer")


def test_gaussian_noise_variance() -> None:
    p = 0.2
    y = GaussianDropout(p)(torch.ones(200_000))
    assert y.var().item() == pytest.approx(p / (1 - p), rel=0.05)


class _Double(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * x


@pytest.mark.parametrize(
    ("p_skip", "p_residual", "expected"),
    [(0.0, 0.0, 3.0), (1.0, 0.0, 2.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0)],
    ids=["resnet", "feedforward", "skip", "zero"],
)
def test_swapout_limits(p_skip: float, p_residual: float, expected: float) -> None:
    layer = Swapout(_Double(), p_skip, p_residual)
    x = torch.randn(4, 5)
    for mode in (True, False):
        assert torch.allclose(layer.train(mode)(x), expected * x)


def test_swapout_expectation_matches_eval_output() -> None:
    layer = Swapout(_Double(), p_skip=0.3, p_residual=0.6)
    x = torch.linspace(-1.0, 1.0, 10).reshape(2, 5)
    expected = layer.eval()(x)
    assert torch.allclose(expected, 0.7 * x + 0.4 * 2.0 * x)
    assert torch.allclose(_mean_over_draws(layer, x), expected, atol=0.05)


def test_swapout_masks_units_independently() -> None:
    layer = Swapout(_Double(), p_skip=0.5, p_residual=0.5).train()
    values = set(layer(torch.ones(64, 64)).unique().tolist())
    assert values == {0.0, 1.0, 2.0, 3.0}


def test_swapout_rejects_shape_changing_block() -> None:
    with pytest.raises(ValueError, match="keeps the shape"):
        Swapout(nn.Linear(4, 3))(torch.ones(2, 4))


def test_swapout_validates_probabilities() -> None:
    with pytest.raises(ValueError, match="p_residual"):
        Swapout(_Double(), 0.5, 1.5)


@pytest.mark.parametrize(
    ("kind", "cls", "mode"),
    [
        ("bernoulli", BernoulliDropout, "sample"),
        ("bernoulli_batch", BernoulliDropout, "batch"),
        ("bernoulli_epoch", BernoulliDropout, "epoch"),
        ("gaussian", GaussianDropout, None),
        ("none", nn.Identity, None),
    ],
)
def test_make_dropout(kind: str, cls: type, mode: str | None) -> None:
    layer = make_dropout(kind, 0.2)
    assert isinstance(layer, cls)
    if mode is not None:
        assert layer.mode == mode and layer.p == 0.2
        assert make_dropout(kind, 0.2, feature_ndim=1).feature_ndim == 1


def test_make_dropout_unknown_kind_lists_valid_kinds() -> None:
    with pytest.raises(ValueError) as info:
        make_dropout("spatial", 0.2)
    assert all(kind in str(info.value) for kind in DROPOUT_KINDS)


def test_resample_epoch_masks_counts_and_resets_only_epoch_layers() -> None:
    model = nn.Sequential(
        nn.Linear(3, 3),
        make_dropout("bernoulli_epoch", 0.5),
        make_dropout("bernoulli_batch", 0.5),
        nn.Sequential(make_dropout("bernoulli_epoch", 0.5)),
    )
    model(torch.ones(2, 3))
    assert model[1].mask is not None
    assert resample_epoch_masks(model) == 2
    assert model[1].mask is None and model[3][0].mask is None


def test_epoch_dropout_callback_resamples_on_epoch_start() -> None:
    model = nn.Sequential(make_dropout("bernoulli_epoch", 0.5))
    model(torch.ones(2, 8))
    callback = EpochDropoutCallback()
    callback.on_train_epoch_start(trainer=None, pl_module=model)
    assert callback.last_count == 1
    assert model[0].mask is None
