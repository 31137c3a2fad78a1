"""The top layers of a pretrained transformer over cached lower-layer states: the same
output as the whole model, the cached states from the data layer, training, and checkpoints."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from mmsent.data.lm_features import LMTokenStates
from mmsent.models import TransformerTopEncoder
from mmsent.models.pooling import masked_mean
from mmsent.tasks import UnimodalTask

TINY = {
    "mpnet": {"model_type": "mpnet", "vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 3,
              "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 20},
    "bert": {"model_type": "bert", "vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 3,
             "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 20},
}


@pytest.fixture(params=sorted(TINY))
def saved_model(request, tmp_path):
    from transformers import AutoConfig, AutoModel

    settings = dict(TINY[request.param])
    torch.manual_seed(0)
    model = AutoModel.from_config(AutoConfig.for_model(settings.pop("model_type"), **settings)).eval()
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model", model


def _batch():
    ids = torch.tensor([[0, 5, 9, 7, 2], [0, 11, 2, 1, 1]])
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    return ids, mask


@pytest.mark.parametrize("from_layer", [0, 1, 2, 3])
def test_top_layers_over_cached_states_match_the_whole_model(saved_model, from_layer):
    folder, model = saved_model
    ids, mask = _batch()
    with torch.no_grad():
        output = model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
        top = TransformerTopEncoder(16, model=str(folder), from_layer=from_layer, dropout=0.0).eval()
        pooled = top(output.hidden_states[from_layer], mask)
    assert (top.transformer is None) if from_layer == 3 else len(top.transformer.encoder.layer) == 3 - from_layer
    expected = masked_mean(output.last_hidden_state, mask)
    assert torch.allclose(pooled, expected, atol=1e-5), (pooled - expected).abs().max()


def test_cached_layer_states_from_the_data_layer_feed_it(saved_model, tmp_path):
    from transformers import BertTokenizerFast

    folder, model = saved_model
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[f"w{i}" for i in range(35)]]))
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    states = LMTokenStates(str(folder), max_length=8, layer=1)
    (_, cached), = list(states.encode(["w3 w7 w1"]))
    with torch.no_grad():
        top = TransformerTopEncoder(16, model=str(folder), from_layer=1, dropout=0.0).eval()
        pooled = top(torch.from_numpy(cached)[None], torch.ones(1, len(cached), dtype=torch.bool))
        ids = states._tokenizer("w3 w7 w1", return_tensors="pt")["input_ids"]
        expected = model(input_ids=ids).last_hidden_state.mean(1)
    assert torch.allclose(pooled, expected, atol=1e-5)


def test_errors_name_the_setting(saved_model):
    folder, _ = saved_model
    with pytest.raises(ValueError, match="hidden size 16"):
        TransformerTopEncoder(32, model=str(folder))
    with pytest.raises(ValueError, match="from_layer"):
        TransformerTopEncoder(16, model=str(folder), from_layer=4)
    with pytest.raises(ValueError, match="text_features"):
        TransformerTopEncoder(16, model=str(folder))(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool))


def test_trains_with_layer_decay_and_its_checkpoint_holds_only_the_top_layers(saved_model):
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    folder, _ = saved_model
    torch.manual_seed(0)
    task = UnimodalTask("text", partial(TransformerTopEncoder, model=str(folder), from_layer=2),
                        input_dims={"text": 16}, optimizer=torch.optim.AdamW,
                        param_groups={"text": {"lr": 1e-3, "layer_decay": 0.5}, "head": {"lr": 1e-2}})
    # MPNet keeps its relative position bias below the layers (layer0); BERT has nothing there.
    assert [g["name"] for g in task.param_groups()][-2:] == ["text.layer1", "head"]
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(4):
        states = torch.randn(8, 5, 16, generator=generator)
        batches.append({"text": states, "text_mask": torch.ones(8, 5, dtype=torch.bool),
                        "label": states[:, :, 0].mean(1) * 3})
    top_layer = next(task.encoder.transformer.encoder.layer.parameters()).detach().clone()
    before = sum(float((task(b).squeeze(-1) - b["label"]).abs().mean()) for b in batches)
    trainer = pl.Trainer(max_epochs=15, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(task, DataLoader(batches, batch_size=None))
    task.eval()
    after = sum(float((task(b).squeeze(-1) - b["label"]).abs().mean()) for b in batches)
    assert after < 0.8 * before
    assert not torch.equal(top_layer, next(task.encoder.transformer.encoder.layer.parameters()))
    keys = [k for k in task.state_dict() if "transformer" in k]
    assert keys and all("encoder.layer.0." in k or "encoder.layer" not in k for k in keys)
    assert not any("embeddings" in k for k in keys)
