"""Text from a pretrained language model: MiniLM word pieces into an embedding table
initialized from MiniLM, and the LSTM over MiniLM's frozen, cached token states."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import yaml

from mmsent.cli import build_cli
from mmsent.data import RawClipSource
from mmsent.data.cache import cache_key, prepare
from mmsent.data.lm_features import LMTokenStates
from mmsent.main import main
from mmsent.pretrained import model_signature, resolve_model_path

MINILM_VOCAB, MINILM_DIM = 30522, 384


def text_stage_config(path, encoder_args: dict) -> str:
    """A text-only stage config; the data options come from the test's arguments."""
    config = {
        "data": {"source": {"init_args": {"modalities": ["text"]}}},
        "model": {"class_path": "mmsent.tasks.UnimodalTask",
                  "init_args": {"modality": "text",
                                "encoder": {"class_path": "mmsent.models.TextLSTMEncoder",
                                            "init_args": {"embed_dim": 32, "hidden_dim": 16,
                                                          "out_dim": 16, **encoder_args}}}},
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoModel, AutoTokenizer

    path = resolve_model_path("minilm")
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def test_minilm_word_pieces_feed_an_embedding_table_from_minilm(tiny_data_args, tmp_path, minilm):
    tokenizer, model = minilm
    config = text_stage_config(tmp_path / "text.yaml", {"pretrained_embeddings": "minilm"})
    args = [*tiny_data_args, "-c", config, "--data.source.init_args.tokenizer=minilm"]
    cli = build_cli(args, run=False)
    assert cli.datamodule.spec.text_kind == "tokens" and cli.datamodule.input_dims["text"] == MINILM_VOCAB
    embedding = cli.model.encoder.embed.weight
    assert embedding.shape == (MINILM_VOCAB, MINILM_DIM)
    assert torch.equal(embedding, model.get_input_embeddings().weight)
    batch = next(iter(cli.datamodule.train_dataloader()))
    ids = batch["text"][0][batch["text_mask"][0]].tolist()
    assert ids == tokenizer(batch["transcript"][0])["input_ids"]
    main(["fit", *args, "--trainer.fast_dev_run=1"])


def test_text_features_are_minilm_token_states(tiny_raw, tiny_cache, minilm):
    tokenizer, model = minilm
    source = RawClipSource(str(tiny_raw), modalities=["text"], text_features="minilm")
    data = prepare(source, tiny_cache)
    assert data.spec.text_kind == "vectors" and data.spec.input_dims == {"text": MINILM_DIM}
    row = data.splits["valid"][0]
    with torch.no_grad():
        expected = model(**tokenizer(row["transcript"], return_tensors="pt")).last_hidden_state[0]
    np.testing.assert_allclose(np.asarray(row["text"]), expected.numpy(), atol=1e-4)


def test_text_states_are_computed_once_and_follow_the_settings(tiny_raw, tmp_path, monkeypatch):
    def source(**options):
        return RawClipSource(str(tiny_raw), modalities=["text"], **options)

    first = prepare(source(text_features="minilm"), tmp_path)
    monkeypatch.setattr(LMTokenStates, "encode", lambda *a: pytest.fail("states must come from the cache"))
    again = prepare(source(text_features="minilm"), tmp_path)
    assert again.path == first.path
    settings = ({}, {"text_features": "minilm"}, {"text_features": "minilm", "max_text_length": 8})
    keys = {cache_key(source(**options), "mask") for options in settings}
    assert first.path.name in keys and len(keys) == 3


def test_cached_states_reach_worker_processes(tiny_raw, tmp_path):
    source = RawClipSource(str(tiny_raw), modalities=["text"], text_features="minilm")
    records, _ = source.open(tmp_path)
    clone = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(clone.load(records[3]).example["text"],
                                  source.load(records[3]).example["text"])
    assert clone.load(records[3]).example["text"].shape[1] == MINILM_DIM


def test_a_local_model_path_works_like_its_name(tmp_path):
    path = resolve_model_path("minilm")
    signature = model_signature(path)
    assert signature["model"] == path and "files" in signature
    states = dict(LMTokenStates(path, max_length=16).encode(["a fine film", "dull"]))
    assert states[0].shape == (5, MINILM_DIM) and states[1].shape[0] == 3
    by_name = dict(LMTokenStates("minilm", max_length=16).encode(["a fine film", "dull"]))
    np.testing.assert_allclose(states[0], by_name[0], atol=1e-5)


def test_lstm_over_cached_states_fits_end_to_end(tiny_data_args, tmp_path):
    config = text_stage_config(tmp_path / "text.yaml", {"input_kind": "vectors"})
    args = [*tiny_data_args, "-c", config, "--data.source.init_args.text_features=minilm"]
    cli = build_cli(args, run=False)
    assert cli.model.encoder.embed.in_features == MINILM_DIM
    main(["fit", *args, "--trainer.fast_dev_run=1"])
