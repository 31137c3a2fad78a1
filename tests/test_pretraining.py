"""Greedy layer-wise pretraining of the acoustic MLP, alone and as a callback in a fit."""

from __future__ import annotations

import pytest
import torch
from helpers import REPO

from mmsent.models import AcousticMLPEncoder
from mmsent.models.audio import greedy_layerwise_pretraining


def toy_inputs() -> torch.Tensor:
    """Inputs on a 4-dimensional nonlinear manifold in 16 dimensions."""
    rng = torch.Generator().manual_seed(0)
    factors = torch.randn(512, 4, generator=rng)
    mixing = torch.randn(4, 16, generator=rng)
    return torch.tanh(factors @ mixing) + 0.05 * torch.randn(512, 16, generator=rng)


def test_each_hidden_layer_learns_to_reconstruct_its_input():
    inputs = toy_inputs()
    torch.manual_seed(0)
    short = AcousticMLPEncoder(8, hidden_dims=[32, 16], out_dim=4, dropout=0.0).net
    long = AcousticMLPEncoder(8, hidden_dims=[32, 16], out_dim=4, dropout=0.0).net
    output_before = long[-1].weight.clone()
    first_before = long[0].weight.clone()
    short_errors = greedy_layerwise_pretraining(short, inputs, epochs=1, seed=0)
    long_errors = greedy_layerwise_pretraining(long, inputs, epochs=30, seed=0)
    assert len(long_errors) == 2
    assert long_errors[0] < 0.5 * short_errors[0]
    assert long_errors[0] < 0.2 * float(inputs.var(0).mean())
    assert not torch.equal(long[0].weight, first_before)
    assert torch.equal(long[-1].weight, output_before)  # the output layer is left to supervision
    assert long.training


def test_residual_networks_are_refused():
    residual = AcousticMLPEncoder(8, hidden_dims=[16, 16], residual=True).net
    with pytest.raises(ValueError, match="plain MLP"):
        greedy_layerwise_pretraining(residual, torch.randn(10, 16), epochs=1)


def test_callback_pretrains_the_audio_stage_before_fitting(tiny_data_args):
    from mmsent.cli import build_cli

    cli = build_cli(["fit", "-c", str(REPO / "pipelines/quickstart/base.yaml"),
                     "-c", str(REPO / "pipelines/quickstart/2_audio.yaml"), *tiny_data_args,
                     "--trainer.max_epochs=1", "--trainer.callbacks+=mmsent.callbacks.LayerwisePretraining",
                     "--trainer.callbacks.init_args.epochs=3"])
    (callback,) = [c for c in cli.trainer.callbacks if type(c).__name__ == "LayerwisePretraining"]
    assert callback.epochs == 3
    assert len(callback.errors) == 2 and all(e > 0 for e in callback.errors)
