"""Compiling a task's networks from the config (mmsent.callbacks.CompileParts)."""

import pytest
import torch

from mmsent.callbacks import CompileParts
from mmsent.cli import build_cli

AUDIO = ["-c", "pipelines/quickstart/2_audio.yaml"]
SHORT = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]


def test_named_parts_are_compiled_and_train_as_before(tiny_data_args):
    graphs = []

    def recording_backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    torch._dynamo.reset()
    runs = {}
    for compiled in (False, True):
        cli = build_cli([*AUDIO, *tiny_data_args, *SHORT], run=False)
        if compiled:
            cli.trainer.callbacks.append(CompileParts(parts=["audio"], backend=recording_backend))
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        runs[compiled] = {k: v.clone() for k, v in cli.model.state_dict().items()}
    assert graphs, "the audio encoder's forward must go through torch.compile"
    assert runs[True].keys() == runs[False].keys(), "compiling must keep the parameter names"
    for key in runs[False]:
        torch.testing.assert_close(runs[True][key], runs[False][key])


def test_an_unknown_part_is_named(tiny_data_args):
    cli = build_cli([*AUDIO, *tiny_data_args, *SHORT], run=False)
    cli.trainer.callbacks.append(CompileParts(parts=["vidoe"]))
    with pytest.raises(ValueError, match=r"vidoe.*\['audio', 'head'\]"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
