"""Checkpoints record the encoders that built them, and later stages build theirs from
those records: unimodal -> fused (stage 4) -> fused (stage 5), and unimodal ->
generative."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch

from mmsent.errors import ConfigError
from mmsent.models import AcousticMLPEncoder, ConditionalVAE, TextLSTMEncoder
from mmsent.models.fusion import GatedResidualFusion
from mmsent.models.weights import fingerprint, rebuilt_fingerprint, tensor_digest, weights_digest
from mmsent.selection.step import become_unimodal
from mmsent.tasks import FusionTask, GenerativeTask, UnimodalTask, checkpoint_io
from mmsent.tasks.checkpoint_io import current_hyperparameters
from mmsent.tasks.checkpoints import META_KEY, load_weights
from mmsent.tasks.fusion import recorded_val_mae

INPUT_DIMS = {"text": 6, "audio": 5}
TEXT = partial(TextLSTMEncoder, input_kind="vectors", embed_dim=8, hidden_dim=8, out_dim=8)
AUDIO = partial(AcousticMLPEncoder, hidden_dims=[8], out_dim=4)
AUDIO_53A6AAE = partial(AcousticMLPEncoder, hidden_dims=[4], out_dim=4)


def save(task, path) -> str:
    """Writes a checkpoint as Lightning does: the state dict and hyperparameters, then
    the task's hook."""
    checkpoint = {"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}
    task.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return str(path)


@pytest.fixture()
def unimodal(tmp_path) -> dict[str, str]:
    torch.manual_seed(0)
    return {"text": save(UnimodalTask("text", TEXT, input_dims=INPUT_DIMS), tmp_path / "text.ckpt"),
            "audio": save(UnimodalTask("audio", AUDIO, input_dims=INPUT_DIMS), tmp_path / "audio.ckpt")}


def test_a_unimodal_checkpoint_records_its_encoder_as_plain_data(unimodal):
    meta = torch.load(unimodal["audio"], weights_only=True)[META_KEY]
    assert meta["encoder_config"] == {
        "class_path": "mmsent.models.audio.AcousticMLPEncoder",
        "init_args": {"hidden_dims": [8], "out_dim": 4, "dropout": 0.2, "dropout_kind": "bernoulli",
                      "input_norm": True, "residual": False, "swapout": None, "swapout_samples": 0}}


def test_stage_4_and_5_build_their_encoders_from_the_checkpoints(unimodal, tmp_path):
    fused = FusionTask(encoders=unimodal, input_dims=INPUT_DIMS)
    audio_state = torch.load(unimodal["audio"], weights_only=True)["state_dict"]
    assert isinstance(fused.model.encoders["text"], TextLSTMEncoder)
    for key, value in fused.model.encoders["audio"].state_dict().items():
        assert torch.equal(value, audio_state[f"encoder.{key}"])
    fused.model.switch_off("audio")
    path = save(fused, tmp_path / "fused.ckpt")
    records = torch.load(path, weights_only=True)[META_KEY]["encoder_configs"]
    assert records["text"]["init_args"]["hidden_dim"] == 8 and records["audio"]["init_args"]["out_dim"] == 4
    finetuned = FusionTask(init_checkpoint=path, freeze_encoders=False, input_dims=INPUT_DIMS)
    assert finetuned.model.active_modalities == ["text"]
    for key, value in fused.model.state_dict().items():
        assert torch.equal(value, finetuned.model.state_dict()[key])


def test_a_configured_encoder_that_agrees_is_accepted(unimodal):
    FusionTask(text_encoder=TEXT, encoders={"text": unimodal["text"]}, input_dims=INPUT_DIMS)


def test_a_configured_encoder_that_disagrees_fails_naming_key_path_and_both(unimodal):
    wider = partial(TextLSTMEncoder, input_kind="vectors", embed_dim=8, hidden_dim=16, out_dim=8)
    with pytest.raises(ValueError, match=r"model.text_encoder: the configured text encoder differs from the one "
                                         r".*text.ckpt \(model.encoders.text\) was saved with \(in hidden_dim\)") as error:
        FusionTask(text_encoder=wider, encoders={"text": unimodal["text"]}, input_dims=INPUT_DIMS)
    assert '"hidden_dim": 16' in str(error.value) and '"hidden_dim": 8' in str(error.value)
    with pytest.raises(ValueError, match=r"\(class mmsent.models.audio.AcousticMLPEncoder vs "
                                         r"mmsent.models.text.TextLSTMEncoder\)"):
        FusionTask(text_encoder=partial(AcousticMLPEncoder, out_dim=8), encoders={"text": unimodal["text"]},
                   input_dims=INPUT_DIMS)


def test_a_checkpoint_without_a_record_needs_a_configured_encoder(unimodal, tmp_path):
    checkpoint = torch.load(unimodal["text"], weights_only=True)
    del checkpoint[META_KEY]["encoder_config"]
    bare = tmp_path / "bare.ckpt"
    torch.save(checkpoint, bare)
    with pytest.raises(ValueError, match=r"model.text_encoder is not set and .*bare.ckpt \(model.encoders.text\) "
                                         r"records no encoder configuration"):
        FusionTask(encoders={"text": str(bare)}, input_dims=INPUT_DIMS)
    FusionTask(text_encoder=TEXT, encoders={"text": str(bare)}, input_dims=INPUT_DIMS)
    with pytest.raises(ValueError, match="configure at least one of text_encoder"):
        FusionTask(input_dims=INPUT_DIMS)


def test_a_record_from_before_an_argument_existed_matches_that_argument_at_its_default(unimodal, tmp_path):
    checkpoint = torch.load(unimodal["audio"], weights_only=True)
    del checkpoint[META_KEY]["encoder_config"]["init_args"]["swapout_samples"]  # at its default, 0
    older = tmp_path / "older.ckpt"
    torch.save(checkpoint, older)
    FusionTask(audio_encoder=AUDIO, encoders={"audio": str(older)}, input_dims=INPUT_DIMS)
    with pytest.raises(ValueError, match=r"\(in residual"):
        FusionTask(audio_encoder=partial(AUDIO, residual=True), encoders={"audio": str(older)}, input_dims=INPUT_DIMS)
    del checkpoint[META_KEY]["encoder_config"]["init_args"]["dropout"]  # 0.2, the default
    torch.save(checkpoint, older)
    with pytest.raises(ValueError, match=r"\(in dropout"):
        FusionTask(audio_encoder=partial(AUDIO, dropout=0.1), encoders={"audio": str(older)}, input_dims=INPUT_DIMS)


def test_the_generative_stage_builds_its_encoders_from_the_checkpoints(unimodal, tmp_path):
    task = GenerativeTask(partial(ConditionalVAE, latent_dim=2), encoders=unimodal, input_dims=INPUT_DIMS)
    assert task.dims == {"text": 8, "audio": 4}
    meta = torch.load(save(task, tmp_path / "vae.ckpt"), weights_only=True)[META_KEY]
    assert meta["encoder_configs"]["audio"]["class_path"] == "mmsent.models.audio.AcousticMLPEncoder"
    assert meta["encoder_digests"]["text"] == weights_digest(task.encoders["text"])


def test_one_tensor_hash_behind_fingerprints_and_digests():
    weights = torch.arange(6, dtype=torch.float32)
    assert fingerprint(weights) == {"shape": [6], "dtype": "torch.float32",
                                    "sha1": tensor_digest([("", weights)])}
    layer = torch.nn.Linear(2, 1)
    assert weights_digest(layer) == tensor_digest(sorted(layer.state_dict().items()))
    assert fingerprint(weights)["sha1"] != fingerprint(weights + 1)["sha1"]


def test_a_rebuilt_weight_is_hashed_again_once_changed_in_place_or_replaced():
    table = torch.nn.Embedding(5, 3)
    table.weight.requires_grad_(False)

    def recorded():
        return rebuilt_fingerprint(table, "weight", table.state_dict()["weight"])

    assert recorded() == fingerprint(table.weight)
    table.load_state_dict({"weight": torch.zeros(5, 3)})
    assert recorded() == fingerprint(torch.zeros(5, 3))
    table.weight.data = torch.ones(5, 3)
    assert recorded() == fingerprint(torch.ones(5, 3))


def test_records_that_disagree_with_each_other_fail(unimodal, tmp_path):
    fused = save(FusionTask(encoders={"text": unimodal["text"]}, input_dims=INPUT_DIMS), tmp_path / "fused.ckpt")
    wider = partial(TextLSTMEncoder, input_kind="vectors", embed_dim=8, hidden_dim=16, out_dim=8)
    other = save(UnimodalTask("text", wider, input_dims=INPUT_DIMS), tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"the text encoder recorded in .*other.ckpt \(model.encoders.text\) "
                                         r"differs from the one .*fused.ckpt \(model.init_checkpoint\)"):
        FusionTask(encoders={"text": other}, init_checkpoint=fused, input_dims=INPUT_DIMS)


def test_stage_5_can_keep_some_encoders_frozen(unimodal, tmp_path):
    fused = FusionTask(encoders=unimodal, input_dims=INPUT_DIMS)
    path = save(fused, tmp_path / "fused.ckpt")
    finetuned = FusionTask(init_checkpoint=path, freeze_encoders=["audio"], input_dims=INPUT_DIMS).train()
    encoders = finetuned.model.encoders
    assert not any(p.requires_grad for p in encoders["audio"].parameters())
    assert all(p.requires_grad for p in encoders["text"].parameters())
    assert not encoders["audio"].training and encoders["text"].training
    assert [group["name"] for group in finetuned.param_groups()] == ["text", "fusion"]
    # A modality the data lacks may be named (one config for data with and without it).
    assert FusionTask(init_checkpoint=path, freeze_encoders=["video"], input_dims=INPUT_DIMS).frozen == []
    with pytest.raises(ValueError, match=r"model.freeze_encoders names \['vision'\]"):
        FusionTask(init_checkpoint=path, freeze_encoders=["vision"], input_dims=INPUT_DIMS)


def batch_of(size: int = 4) -> dict:
    torch.manual_seed(1)
    return {"text": torch.randn(size, 3, 6), "text_mask": torch.ones(size, 3, dtype=torch.bool),
            "text_present": torch.ones(size, dtype=torch.bool),
            "audio": torch.randn(size, 1, 5), "audio_mask": torch.ones(size, 1, dtype=torch.bool),
            "audio_present": torch.tensor([True, True, False, True])[:size]}


def test_a_backfit_stage_adds_the_fixed_stage_and_trains_only_its_own_model(unimodal):
    from mmsent.data.datamodule import model_modalities

    refit = UnimodalTask("text", TEXT, input_dims=INPUT_DIMS, fixed={"audio": unimodal["audio"]})
    audio = UnimodalTask("audio", AUDIO, input_dims=INPUT_DIMS)
    audio.load_state_dict(torch.load(unimodal["audio"], weights_only=True)["state_dict"])
    refit.train()
    assert not refit.fixed.training and all(not p.requires_grad for p in refit.fixed.parameters())
    assert model_modalities(refit) == ["text", "audio"]
    batch = batch_of()
    refit.eval(), audio.eval()
    added = audio(batch) * batch["audio_present"]
    assert torch.allclose(refit(batch), refit.own_prediction(batch) + added)
    assert added[2] == 0 and refit(batch)[2] == refit.own_prediction(batch)[2], "an absent modality adds nothing"
    refit.train()
    refit(batch).sum().backward()
    assert all(p.grad is None for p in refit.fixed.parameters())
    assert any(p.grad is not None for p in refit.encoder.parameters())
    refit.eval()
    outputs = refit.predict_step({**batch, "id": list("abcd"), "transcript": list("abcd"),
                                  "label": torch.zeros(4)}, 0)
    assert torch.allclose(outputs["own_prediction"], refit.own_prediction(batch))


def test_a_backfit_stage_names_the_key_of_a_wrong_fixed_checkpoint(unimodal, tmp_path):

    with pytest.raises(ConfigError, match="model.fixed.text is set, but this stage trains the text"):
        UnimodalTask("text", TEXT, input_dims=INPUT_DIMS, fixed={"text": unimodal["text"]})
    with pytest.raises(ConfigError, match=r"model.fixed.text: .*audio.ckpt holds a audio model"):
        UnimodalTask("audio", AUDIO, input_dims=INPUT_DIMS, fixed={"text": unimodal["audio"]})
    fused = save(FusionTask(encoders={"text": unimodal["text"]}, input_dims=INPUT_DIMS), tmp_path / "fused.ckpt")
    with pytest.raises(ConfigError, match=r"model.fixed.text: .*fused.ckpt holds no unimodal"):
        UnimodalTask("audio", AUDIO, input_dims=INPUT_DIMS, fixed={"text": fused})


def test_a_fused_stage_takes_encoder_weights_from_another_stage_than_the_head(unimodal, tmp_path):
    torch.manual_seed(5)
    refit = save(UnimodalTask("audio", AUDIO, input_dims=INPUT_DIMS, fixed={"text": unimodal["text"]}),
                 tmp_path / "audio_refit.ckpt")
    fused = FusionTask(encoders={"text": unimodal["text"], "audio": refit}, unimodal={"audio": unimodal["audio"]},
                       head_from="audio", fusion=GatedResidualFusion, input_dims=INPUT_DIMS)
    refit_state = torch.load(refit, weights_only=True)["state_dict"]
    unimodal_state = torch.load(unimodal["audio"], weights_only=True)["state_dict"]
    for key, value in fused.model.encoders["audio"].state_dict().items():
        assert torch.equal(value, refit_state[f"encoder.{key}"])
    for key, value in fused.model.head.state_dict().items():
        assert torch.equal(value, unimodal_state[f"head.{key}"]), "the head comes from the unimodal stage"
    assert become_unimodal(fused.model, "audio", unimodal["audio"])
    for key, value in fused.model.encoders["audio"].state_dict().items():
        assert torch.equal(value, unimodal_state[f"encoder.{key}"]), "the fall-back is the unimodal stage"


def test_the_fused_head_takes_the_hidden_size_of_the_head_it_starts_from(tmp_path):
    torch.manual_seed(0)
    paths = {"text": save(UnimodalTask("text", TEXT, head_hidden=6, input_dims=INPUT_DIMS), tmp_path / "text.ckpt"),
             "audio": save(UnimodalTask("audio", AUDIO, input_dims=INPUT_DIMS), tmp_path / "audio.ckpt")}
    for modality, hidden in (("text", 6), ("audio", 0)):
        fused = FusionTask(encoders=paths, head_from=modality, fusion=GatedResidualFusion, input_dims=INPUT_DIMS)
        assert fused.hparams["head_hidden"] == hidden
        state = torch.load(paths[modality], weights_only=True)["state_dict"]
        for key, value in fused.model.head.state_dict().items():
            assert torch.equal(value, state[f"head.{key}"])
        if modality == "text":
            path = save(fused, tmp_path / "fused.ckpt")
    # Stage 5 takes it from the fused checkpoint, which records the size it resolved.
    finetuned = FusionTask(init_checkpoint=path, freeze_encoders=False, fusion=GatedResidualFusion,
                           input_dims=INPUT_DIMS)
    assert finetuned.hparams["head_hidden"] == 6
    assert torch.load(path, weights_only=True)["hyper_parameters"]["head_hidden"] == 6
    with pytest.raises(ConfigError, match="head_hidden must match"):
        FusionTask(encoders=paths, head_from="text", head_hidden=0, fusion=GatedResidualFusion, input_dims=INPUT_DIMS)


OLD = Path(__file__).parent / "data" / "checkpoints_53a6aae"
"""Checkpoints written by mmsent 53a6aae, before ``encoders`` (``make.py`` beside them)."""


def test_checkpoints_written_before_encoders_load_and_score_the_same(monkeypatch):
    monkeypatch.chdir(OLD)  # their hyperparameters name each other by relative path
    expected = torch.load("expected.pt", weights_only=True)
    saved = torch.load("fused.ckpt", weights_only=True)["hyper_parameters"]
    current = current_hyperparameters(saved)
    assert current["encoders"] == {"text": "text.ckpt", "audio": "audio_backfit.ckpt"}
    assert current["unimodal"] == {"audio": "audio.ckpt"}
    assert not {"text_checkpoint", "audio_checkpoint", "audio_encoder_checkpoint"} & set(current)
    # As `mmsent test --ckpt_path fused.ckpt` rebuilds it from its hyperparameters, then loads it.
    rebuilt = FusionTask(fusion=GatedResidualFusion, **current).eval()
    # What head_from: best compares, from the unimodal stages' ModelCheckpoint state.
    assert {m: recorded_val_mae(f"{m}.ckpt", m) for m in ("text", "audio")} == pytest.approx({"text": 0.9, "audio": 1.1})
    load_weights(rebuilt, "fused.ckpt")
    finetuned = FusionTask(init_checkpoint="fused.ckpt", fusion=GatedResidualFusion, input_dims=INPUT_DIMS).eval()
    refit = UnimodalTask(encoder=AUDIO_53A6AAE, **current_hyperparameters(
        torch.load("audio_backfit.ckpt", weights_only=True)["hyper_parameters"])).eval()
    load_weights(refit, "audio_backfit.ckpt")
    with torch.no_grad():
        assert torch.equal(rebuilt(expected["batch"]), expected["fused"])
        assert torch.equal(finetuned(expected["batch"]), expected["fused"])
        assert torch.equal(refit(expected["batch"]), expected["audio_backfit"])


def test_a_stage_reads_each_file_it_names_once(unimodal, tmp_path, monkeypatch):
    refit = save(UnimodalTask("audio", AUDIO, input_dims=INPUT_DIMS, fixed={"text": unimodal["text"]}),
                 tmp_path / "audio_refit.ckpt")
    fused = save(FusionTask(encoders={"text": unimodal["text"], "audio": refit}, unimodal={"audio": unimodal["audio"]},
                            head_from="text", fusion=GatedResidualFusion, input_dims=INPUT_DIMS), tmp_path / "fused.ckpt")
    read, reader = [], checkpoint_io.read_weights_file
    monkeypatch.setattr(checkpoint_io, "read_weights_file", lambda path, what: read.append(path) or reader(path, what))
    # Encoders from text.ckpt and the refit, the head from audio.ckpt.
    FusionTask(encoders={"text": unimodal["text"], "audio": refit}, unimodal={"audio": unimodal["audio"]},
               head_from="audio", fusion=GatedResidualFusion, input_dims=INPUT_DIMS)
    assert sorted(read) == sorted([unimodal["text"], refit, unimodal["audio"]])
    read.clear()
    FusionTask(init_checkpoint=fused, fusion=GatedResidualFusion, input_dims=INPUT_DIMS)
    assert read == [fused]
