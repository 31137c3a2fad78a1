"""Tests for the dropout variants and the epoch-mask callback."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import yaml
from jsonargparse import ArgumentParser
from torch import nn
from torch.utils.data import DataLoader

from mmsent.callbacks.dropout import EpochDropoutCallback
from mmsent.models.audio import AcousticMLPEncoder, ResidualBlock
from mmsent.models.dropout import (
    DROPOUT_KINDS,
    BernoulliDropout,
    GaussianDropout,
    Swapout,
    average_stochastic_passes,
    make_dropout,
    resample_epoch_masks,
)
from mmsent.models.pooling import masked_mean_std


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
    layer.resample()
    first = layer(torch.ones(4, 50))
    assert all(torch.equal(first[0], row) for row in first)
    assert torch.equal(layer(torch.ones(7, 50))[0], first[0])
    layer.resample()
    assert not torch.equal(layer(torch.ones(4, 50))[0], first[0])


def test_epoch_mode_rejects_new_feature_shape() -> None:
    layer = BernoulliDropout(0.5, "epoch")
    layer.resample()
    layer(torch.ones(4, 50))
    with pytest.raises(ValueError, match="feature shape"):
        layer(torch.ones(4, 51))
    layer.resample()
    assert layer(torch.ones(4, 51)).shape == (4, 51)


@pytest.mark.parametrize("mode", ["batch", "epoch"])
def test_feature_ndim_shares_mask_over_leading_dims(mode: str) -> None:
    layer = BernoulliDropout(0.5, mode, feature_ndim=1)
    layer.resample()
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
    layer.resample()
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


@pytest.mark.parametrize(
    "layer", [GaussianDropout(0.3), BernoulliDropout(0.3, "sample")], ids=["gaussian", "bernoulli"]
)
def test_noise_is_multiplicative_in_mean_and_variance(layer: nn.Module) -> None:
    # Both keep the mean and give Var = p / (1 - p) * x²: the noise scales with the
    # input, so a zero input stays exactly zero. Additive noise would have one variance.
    x = torch.tensor([-3.0, -1.2, -0.4, 0.0, 0.05, 0.7, 2.0, 5.0])
    draws = layer.train()(x.expand(50_000, -1).contiguous())
    variance = 0.3 / 0.7 * x**2
    standard_error = (variance / 50_000).sqrt()
    assert torch.all((draws.mean(0) - x).abs() <= 5 * standard_error + 1e-7)
    assert torch.allclose(draws.var(0), variance, rtol=0.05, atol=1e-7)


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
    resample_epoch_masks(model)
    model(torch.ones(2, 3))
    assert model[1].mask is not None
    assert resample_epoch_masks(model) == 2
    assert model[1].mask is None and model[3][0].mask is None


def test_epoch_dropout_callback_resamples_on_epoch_start() -> None:
    model = nn.Sequential(make_dropout("bernoulli_epoch", 0.5))
    resample_epoch_masks(model)
    model(torch.ones(2, 8))
    callback = EpochDropoutCallback()
    callback.on_train_epoch_start(trainer=None, pl_module=model)
    assert callback.last_count == 1
    assert model[0].mask is None


def test_epoch_mode_without_an_epoch_start_names_the_callback() -> None:
    with pytest.raises(RuntimeError, match="EpochDropoutCallback"):
        BernoulliDropout(0.5, "epoch").train()(torch.ones(2, 4))
    # Evaluation needs no mask.
    x = torch.ones(2, 4)
    assert BernoulliDropout(0.5, "epoch").eval()(x) is x


class _EpochMasked(pl.LightningModule):
    """A tiny regressor with an epoch-mode dropout layer that records its masks."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 32), BernoulliDropout(0.5, "epoch"), nn.Linear(32, 1))
        self.masks: list[tuple[int, torch.Tensor]] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.net(batch).pow(2).mean()
        self.masks.append((self.current_epoch, self.net[1].mask.clone()))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(torch.randn(16, 4), batch_size=4)


def _fit_three_epochs(model: pl.LightningModule, callbacks: list[pl.Callback]) -> None:
    pl.Trainer(
        max_epochs=3, callbacks=callbacks, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    ).fit(model)


def test_epoch_masks_in_a_trainer_run_are_fixed_within_and_redrawn_between_epochs() -> None:
    model = _EpochMasked()
    _fit_three_epochs(model, [EpochDropoutCallback()])
    by_epoch = {epoch: [m for e, m in model.masks if e == epoch] for epoch in range(3)}
    assert all(len(masks) == 4 for masks in by_epoch.values())
    for masks in by_epoch.values():
        assert all(torch.equal(masks[0], m) for m in masks[1:])
    firsts = [masks[0] for masks in by_epoch.values()]
    assert not torch.equal(firsts[0], firsts[1]) and not torch.equal(firsts[1], firsts[2])


def test_epoch_masks_in_a_trainer_run_without_the_callback_fail_loudly() -> None:
    with pytest.raises(RuntimeError, match="EpochDropoutCallback"):
        _fit_three_epochs(_EpochMasked(), [])


def test_acoustic_encoder_defaults_build_the_plain_mlp() -> None:
    encoder = AcousticMLPEncoder(5, hidden_dims=[8, 8], out_dim=3)
    names = [name for name, _ in encoder.named_parameters()]
    assert names == [
        "norm.weight", "norm.bias", "net.0.weight", "net.0.bias", "net.1.weight", "net.1.bias",
        "net.4.weight", "net.4.bias", "net.5.weight", "net.5.bias", "net.8.weight", "net.8.bias",
    ]
    assert not any(isinstance(m, ResidualBlock | Swapout) for m in encoder.modules())


def test_residual_encoder_adds_the_block_to_its_input() -> None:
    encoder = AcousticMLPEncoder(5, hidden_dims=[8, 8, 8], out_dim=3, dropout=0.0, residual=True)
    blocks = [m for m in encoder.net if isinstance(m, ResidualBlock)]
    assert len(blocks) == 2
    x = torch.randn(4, 8)
    assert torch.allclose(blocks[0](x), x + blocks[0].block(x))
    with pytest.raises(ValueError, match="equal hidden sizes"):
        AcousticMLPEncoder(5, hidden_dims=[8, 4], residual=True)
    with pytest.raises(ValueError, match="swapout needs residual"):
        AcousticMLPEncoder(5, swapout=(0.1, 0.1))
    with pytest.raises(ValueError, match="swapout_samples"):
        AcousticMLPEncoder(5, residual=True, swapout_samples=4)


def test_swapout_encoder_from_yaml() -> None:
    from mmsent.tasks.unimodal import UnimodalTask

    config = {"model": {
        "modality": "audio", "input_dims": {"audio": 3},
        "encoder": {"class_path": "mmsent.models.audio.AcousticMLPEncoder", "init_args": {
            "hidden_dims": [8, 8, 8], "out_dim": 4, "residual": True,
            "swapout": [0.2, 0.5], "swapout_samples": 16,
        }},
    }}
    parser = ArgumentParser()
    parser.add_class_arguments(UnimodalTask, "model", fail_untyped=False)
    task = parser.instantiate(parser.parse_string(yaml.safe_dump(config))).model
    units = [m for m in task.encoder.modules() if isinstance(m, Swapout)]
    assert [(u.p_skip, u.p_residual) for u in units] == [(0.2, 0.5), (0.2, 0.5)]
    assert task.encoder.swapout_samples == 16


def _swapout_encoder(samples: int) -> AcousticMLPEncoder:
    torch.manual_seed(0)
    encoder = AcousticMLPEncoder(
        3, hidden_dims=[16, 16, 16], out_dim=4, dropout=0.0, residual=True,
        swapout=(0.3, 0.4), swapout_samples=samples,
    )
    return encoder.eval()


def test_swapout_inference_by_expectation_and_by_averaged_passes() -> None:
    audio, mask = torch.randn(6, 5, 3), torch.ones(6, 5, dtype=torch.bool)
    expectation = _swapout_encoder(0)(audio, mask)
    assert torch.equal(expectation, _swapout_encoder(0)(audio, mask))
    state = torch.get_rng_state()
    averaged = _swapout_encoder(64)(audio, mask)
    # A private generator: reproducible, and the training's random draws are untouched.
    assert torch.equal(averaged, _swapout_encoder(64)(audio, mask))
    assert torch.equal(torch.get_rng_state(), state)
    # Nonlinearities after the Swapout units make the two modes differ, but not by much.
    gap = (averaged - expectation).abs().mean() / expectation.abs().mean()
    assert 0 < gap < 0.5
    # Averaging one pass per sample is one sampled network, not the expectation.
    encoder = _swapout_encoder(0)
    pooled = encoder.norm(masked_mean_std(audio, mask))
    one = average_stochastic_passes(encoder.net, pooled, samples=1, seed=3)
    assert not torch.allclose(one, encoder.net(pooled))


def test_average_stochastic_passes_validates_samples() -> None:
    with pytest.raises(ValueError, match="samples"):
        average_stochastic_passes(nn.Identity(), torch.ones(1), samples=0)
