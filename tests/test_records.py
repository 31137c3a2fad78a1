"""What each network records of its constructor arguments, and building it again from that."""

import inspect
import json

import pytest
import torch

from mmsent.models import (
    AcousticMLPEncoder,
    BiGAN,
    ConcatFusion,
    ConditionalAutoencoder,
    ConditionalGAN,
    ConditionalVAE,
    FrameCNNEncoder,
    LowRankFusion,
    RegressionHead,
    TensorFusion,
    TextLSTMEncoder,
    TransformerTextEncoder,
    TransformerTopEncoder,
    Visual3DCNNEncoder,
    VisualSequenceEncoder,
)
from mmsent.models.config import build_module, module_config
from mmsent.models.fusion import GatedResidualFusion
from mmsent.models.generative import EmbeddingCycleGAN, EmbeddingGenerator
from mmsent.models.registry import REGISTRY

BERT = {"model_type": "bert", "vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 16}
DIMS = {"text": 4, "audio": 3, "video": 2}  # not alphabetical: fusion concatenates in this order
INFLATION = ("inflate_from", "inflate_kernels")

# Per network: positional and keyword arguments (tuples among them), and the arguments
# left out of its record.
CASES = [
    pytest.param(AcousticMLPEncoder, (8, [4, 4]), {"residual": True, "swapout": (0.1, 0.2)}, (), id="audio"),
    pytest.param(TextLSTMEncoder, (50, "tokens", 8), {"out_dim": 4, "padding_idx": 1}, (), id="text"),
    pytest.param(TransformerTextEncoder, (40, None, BERT), {"out_dim": 4, "freeze_embeddings": True}, (),
                 id="transformer-text"),
    pytest.param(TransformerTopEncoder, (16,), {"model": None, "from_layer": 1, "architecture": BERT}, (),
                 id="transformer-top"),
    pytest.param(Visual3DCNNEncoder, (3, "c3d", (4, 8, 8)),
                 {"out_dim": 5, "inflate_kernels": ["w"], "temporal_padding": "replicate"}, INFLATION, id="c3d"),
    pytest.param(FrameCNNEncoder, (), {"widths": (4, 8), "global_pool": "avg"}, (), id="frames"),
    pytest.param(ConcatFusion, (DIMS, 8), {"dropout": 0.0}, (), id="concat"),
    pytest.param(TensorFusion, (DIMS,), {"proj_dim": 2, "out_dim": 3}, (), id="tensor"),
    pytest.param(LowRankFusion, (DIMS, 2), {}, (), id="low-rank"),
    pytest.param(GatedResidualFusion, (), {"input_dims": DIMS, "primary": "text"}, (), id="gated"),
    pytest.param(RegressionHead, (5,), {"hidden_dim": 3}, (), id="head"),
    pytest.param(EmbeddingGenerator, (4,), {}, (), id="generator"),
    pytest.param(ConditionalAutoencoder, (6, 3, [8]), {"prior_momentum": 0.1}, (), id="autoencoder"),
    pytest.param(ConditionalVAE, (6,), {"latent_dim": 2, "hidden_dims": (4,), "beta": 2.0}, (), id="vae"),
    pytest.param(ConditionalGAN, (6, 4, [8], [4], "hinge", True, 0.0), {}, (), id="gan"),
    pytest.param(BiGAN, (6,), {"hidden_dims": [8], "loss": "bce"}, (), id="bigan"),
    pytest.param(EmbeddingCycleGAN, (3, 2, "audio", "text"), {"hidden_dims": (8,), "paired_weight": 1.0}, (),
                 id="cycle"),
]


def every_argument(module_class: type, args: tuple, kwargs: dict, left_out: tuple) -> dict:
    """Each constructor argument in the signature's order, given or default, tuples as lists."""
    parameters = inspect.signature(module_class).parameters
    given = {**dict(zip(parameters, args)), **kwargs}
    values = {name: given.get(name, parameter.default) for name, parameter in parameters.items()
              if name not in left_out}
    return {name: list(value) if isinstance(value, tuple) else value for name, value in values.items()}


@pytest.mark.parametrize(("module_class", "args", "kwargs", "left_out"), CASES)
def test_each_network_records_every_constructor_argument_in_order(module_class, args, kwargs, left_out):
    torch.manual_seed(0)
    config = module_class(*args, **kwargs).config
    assert list(config.items()) == list(every_argument(module_class, args, kwargs, left_out).items())


@pytest.mark.parametrize(("module_class", "args", "kwargs", "left_out"), CASES)
def test_each_network_is_built_again_from_its_record_read_back_from_json(module_class, args, kwargs, left_out):
    torch.manual_seed(0)
    module = module_class(*args, **kwargs)
    record = json.loads(json.dumps(module_config(module)))
    rebuilt = build_module(record)
    assert type(rebuilt) is module_class
    assert json.dumps(rebuilt.config) == json.dumps(module.config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in module.state_dict().items()}


def test_every_mmsent_network_is_among_the_cases():
    networks = {cls for path, cls in REGISTRY.items() if path.startswith("mmsent.models.")}
    assert networks - {case.values[0] for case in CASES} == {VisualSequenceEncoder}


def test_the_sequence_encoder_records_as_the_text_encoder_does_less_the_input_kind_it_fixes():
    encoder = VisualSequenceEncoder(6, 8, out_dim=4, num_layers=2)
    assert list(encoder.config.items()) == list({
        "input_dim": 6, "embed_dim": 8, "hidden_dim": 64, "num_layers": 2, "bidirectional": True, "dropout": 0.2,
        "dropout_kind": "bernoulli", "pooling": "mean", "out_dim": 4, "pretrained_embeddings": None,
        "freeze_embeddings": False, "padding_idx": 0}.items())
    rebuilt = build_module(json.loads(json.dumps(module_config(encoder))))
    assert type(rebuilt) is VisualSequenceEncoder and rebuilt.config == encoder.config
    assert rebuilt.input_kind == "vectors"


def test_the_record_is_read_only():
    with pytest.raises(AttributeError):
        RegressionHead(5).config = {"in_dim": 6}


def test_a_value_the_record_cannot_hold_is_refused_rather_than_recorded_as_the_default():
    import numpy as np

    from mmsent.errors import ConfigError

    encoder = AcousticMLPEncoder(5, out_dim=np.int64(4))
    with pytest.raises(ConfigError, match="AcousticMLPEncoder: out_dim cannot be recorded"):
        module_config(encoder)
    assert AcousticMLPEncoder(5, out_dim=4).config["out_dim"] == 4
