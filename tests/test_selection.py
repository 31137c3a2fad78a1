"""Choosing a fused model's modalities and weights on validation evidence."""

from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from mmsent.models import AcousticMLPEncoder, TextLSTMEncoder
from mmsent.models.fusion import ConcatFusion, GatedResidualFusion, RegressionHead
from mmsent.models.late_fusion import LateFusionModel
from mmsent.pipeline.runner import unimodal_figures
from mmsent.selection import (
    Selection,
    bootstrap_p_value,
    select,
    select_modalities,
    starting_weights,
    video_groups,
)
from mmsent.tasks import FusionTask
from mmsent.tasks.checkpoints import META_KEY


def test_video_groups_split_clip_ids():
    assert video_groups(["v1$_$3", "v1$_$4", "v2$_$1", "plain"]) == ["v1", "v1", "v2", "plain"]


def test_bootstrap_p_value_separates_a_steady_gain_from_none():
    groups = [f"v{i // 5}" for i in range(50)]
    steady = torch.full((50,), 0.1) + 0.02 * torch.randn(50, generator=torch.Generator().manual_seed(0))
    assert bootstrap_p_value(steady, groups, samples=2000) < 0.001
    assert bootstrap_p_value(torch.zeros(50), groups, samples=2000) == 1.0
    assert bootstrap_p_value(-steady, groups, samples=2000) == 1.0


def test_bootstrap_resamples_videos_not_clips():
    # A large gain on the many clips of one video and a small loss on nine others: a
    # clip-level test calls it significant, but nine of ten videos say otherwise.
    gain = torch.cat([torch.ones(100), torch.full((9,), -0.1)])
    by_video = ["big"] * 100 + [f"v{i}" for i in range(9)]
    by_clip = [str(i) for i in range(109)]
    assert bootstrap_p_value(gain, by_clip, samples=2000) < 0.01
    assert bootstrap_p_value(gain, by_video, samples=2000) > 0.2


def test_bootstrap_is_repeatable_and_checks_its_input():
    gain = torch.randn(30, generator=torch.Generator().manual_seed(1)) + 0.2
    groups = [f"v{i % 6}" for i in range(30)]
    assert bootstrap_p_value(gain, groups, seed=3) == bootstrap_p_value(gain, groups, seed=3)
    with pytest.raises(ValueError, match="3 group names for 30 gains"):
        bootstrap_p_value(gain, groups[:3])
    with pytest.raises(ValueError, match="no validation samples"):
        bootstrap_p_value(torch.zeros(0), [])


def additive_errors(contribution: dict[str, float], noise: torch.Tensor, used: frozenset[str]) -> torch.Tensor:
    """Errors of a model whose error drops by ``contribution[m]`` with each modality used."""
    return 2.0 - sum(contribution[m] for m in used) + noise


def test_backward_elimination_drops_only_what_does_not_help():
    noise = 0.05 * torch.randn(60, generator=torch.Generator().manual_seed(0))
    groups = [f"v{i // 3}" for i in range(60)]
    errors = partial(additive_errors, {"text": 0.8, "audio": 0.2, "video": 0.0}, noise)
    kept, tests = select_modalities(["text", "audio", "video"], errors, groups, samples=2000)
    assert kept == ["text", "audio"]
    final = {t.modality: t for t in tests}
    assert final["video"].p_value == 1.0 and final["video"].others == ("text", "audio")
    assert final["audio"].gain == pytest.approx(0.2) and final["audio"].p_value < 0.01
    assert final["text"].gain == pytest.approx(0.8)


def test_backward_elimination_keeps_one_modality_and_checks_alpha():
    groups = [f"v{i}" for i in range(10)]
    errors = partial(additive_errors, {"text": 0.0, "audio": 0.0}, torch.zeros(10))
    kept, _ = select_modalities(["text", "audio"], errors, groups, samples=200)
    assert len(kept) == 1
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
        select_modalities(["text"], errors, groups, alpha=1.5)


def test_a_significant_but_negligible_gain_does_not_keep_a_modality():
    noise = 0.05 * torch.randn(600, generator=torch.Generator().manual_seed(0))
    groups = [f"v{i // 3}" for i in range(600)]
    errors = partial(additive_errors, {"text": 0.8, "audio": 0.004}, noise)
    kept, tests = select_modalities(["text", "audio"], errors, groups, samples=2000)
    audio = [t for t in tests if t.modality == "audio"][-1]
    assert audio.p_value < 0.001 and audio.relative_gain == pytest.approx(0.004 / 1.2, rel=1e-2)
    assert kept == ["text"]
    assert select_modalities(["text", "audio"], errors, groups, samples=2000, min_gain=0.0)[0] == ["text", "audio"]
    with pytest.raises(ValueError, match="min_gain must be >= 0"):
        select_modalities(["text"], errors, groups, min_gain=-0.1)


def small_fused_model() -> LateFusionModel:
    torch.manual_seed(0)
    encoders = torch.nn.ModuleDict({"text": AcousticMLPEncoder(input_dim=3, hidden_dims=[], out_dim=4),
                                    "audio": AcousticMLPEncoder(input_dim=3, hidden_dims=[], out_dim=4)})
    return LateFusionModel(encoders, ConcatFusion({"text": 4, "audio": 4}, out_dim=4), RegressionHead(4)).eval()


def small_batch() -> dict:
    return {"text": torch.randn(4, 2, 3), "text_mask": torch.ones(4, 2, dtype=torch.bool),
            "text_present": torch.ones(4, dtype=torch.bool), "audio": torch.randn(4, 2, 3),
            "audio_mask": torch.ones(4, 2, dtype=torch.bool), "audio_present": torch.ones(4, dtype=torch.bool)}


def test_a_switched_off_modality_is_absent_everywhere():
    model, batch = small_fused_model(), small_batch()
    without_audio = model({**batch, "audio_present": torch.zeros(4, dtype=torch.bool)})
    model.switch_off("audio")
    assert model.active_modalities == ["text"]
    torch.testing.assert_close(model(batch), without_audio)
    torch.testing.assert_close(model.predict_from_embeddings(model.encode(batch)), without_audio)
    model.train()
    assert not model.presence(batch)["audio"].any()
    with pytest.raises(ValueError, match="'text': it is the last modality in use"):
        model.switch_off("text")
    with pytest.raises(ValueError, match="'video': the model fuses"):
        model.switch_off("video")


def test_the_choice_travels_with_the_weights():
    model = small_fused_model()
    model.switch_off("audio")
    state = model.state_dict()
    restored = small_fused_model()
    restored.load_state_dict(state)
    assert restored.active_modalities == ["text"]
    state.pop("active")
    with pytest.raises(RuntimeError, match='Missing key.*"active"'):
        restored.load_state_dict(state)


class SignalAndNoise(pl.LightningDataModule):
    """Text vectors that carry the score; audio that carries it too, or only noise."""

    def __init__(self, audio_informative: bool) -> None:
        super().__init__()
        self.audio_informative = audio_informative

    def _split(self, size: int, seed: int, videos: int) -> list[dict]:
        generator = torch.Generator().manual_seed(seed)
        labels = torch.empty(size).uniform_(-3, 3, generator=generator)
        clips = []
        for i, label in enumerate(labels):
            text = torch.randn(4, 6, generator=generator)
            text[:, 0] += label
            audio = torch.randn(1, 5, generator=generator)
            if self.audio_informative:
                audio[:, 0] += label
            clips.append({"id": f"v{i % videos}$_${i}", "label": label, "clean_label": label,
                          "text": text, "text_mask": torch.ones(4, dtype=torch.bool),
                          "text_present": torch.tensor(True), "audio": audio,
                          "audio_mask": torch.ones(1, dtype=torch.bool), "audio_present": torch.tensor(True)})
        return clips

    def train_dataloader(self):
        return DataLoader(self._split(256, 0, 32), batch_size=32, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self._split(120, 1, 20), batch_size=64)


def fit_gated_model(tmp_path, audio_informative: bool, epochs: int = 4, accelerator: str = "cpu",
                    **selection) -> tuple[dict, dict, dict | None]:
    """Fits a gated fusion and selects after the fit, as ``mmsent fit`` does: the
    selected checkpoint, the record and the starting weights."""
    pl.seed_everything(0)
    task = FusionTask(
        input_dims={"text": 6, "audio": 5},
        text_encoder=lambda d: TextLSTMEncoder(d, input_kind="vectors", embed_dim=8, hidden_dim=8, out_dim=8),
        audio_encoder=lambda d: AcousticMLPEncoder(d, hidden_dims=[8], out_dim=8),
        fusion=partial(GatedResidualFusion, primary="text", dropout=0.0), freeze_encoders=False,
        optimizer=partial(torch.optim.Adam, lr=0.01))
    settings = Selection(samples=2000, **selection)
    start = starting_weights(task, settings)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/MAE", mode="min")
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[checkpoint], logger=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator=accelerator)
    trainer.fit(task, datamodule=SignalAndNoise(audio_informative))
    record, selected = select(trainer, task, settings, start)
    assert selected == str(Path(checkpoint.best_model_path).with_name("selected.ckpt"))
    return torch.load(selected, weights_only=True), record, start


def test_noise_audio_is_switched_off_in_the_selected_checkpoint(tmp_path):
    best, record, _ = fit_gated_model(tmp_path, audio_informative=False)
    assert best["state_dict"]["model.active"].tolist() == [True, False]
    assert best[META_KEY]["modality_selection"] == record
    assert record["kept"] == ["text"] and record["switched_off"] == ["audio"]
    audio = [t for t in record["tests"] if t["modality"] == "audio"][-1]
    assert audio["p_value"] >= 0.05 and audio["groups"] == 20


def test_informative_audio_is_kept(tmp_path):
    best, record, _ = fit_gated_model(tmp_path, audio_informative=True)
    assert best["state_dict"]["model.active"].tolist() == [True, True]
    assert record["switched_off"] == []


def test_the_best_epoch_checkpoint_keeps_what_its_epoch_trained(tmp_path):
    selected, _, _ = fit_gated_model(tmp_path, audio_informative=False, keep_start_unless_better=True, alpha=1e-9)
    (best,) = tmp_path.glob("epoch=*.ckpt")
    trained = torch.load(best, weights_only=True)
    assert trained["state_dict"]["model.active"].tolist() == [True, True]
    assert META_KEY not in trained or "modality_selection" not in trained[META_KEY]
    assert not torch.equal(trained["state_dict"]["model.head.net.0.weight"],
                           selected["state_dict"]["model.head.net.0.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([best.name, "selected.ckpt"])


def test_a_stage_that_cannot_beat_its_start_hands_the_start_on(tmp_path):
    # No gain is significant at this alpha (the smallest p-value is 1 / (samples + 1)).
    best, record, start = fit_gated_model(tmp_path / "still", audio_informative=True, epochs=1,
                                          keep_start_unless_better=True, alpha=1e-9)
    assert record["handed_on"] == "start"
    torch.testing.assert_close(best["state_dict"]["model.head.net.0.weight"], start["model.head.net.0.weight"])
    # The start's audio projection is still zero: audio contributes nothing there, so it is not kept.
    assert record["kept"] == ["text"] and record["switched_off"] == ["audio"]
    assert [t["modality"] for t in record["tests"]] == ["text", "audio"], "the trained model's tests stay"
    assert best["state_dict"]["model.active"].tolist() == [True, False]
    best, record, _ = fit_gated_model(tmp_path / "learns", audio_informative=True, epochs=4,
                                      keep_start_unless_better=True)
    assert record["handed_on"] == "trained"
    assert record["start_p_value"] < 0.05


def test_start_alpha_one_hands_on_the_trained_weights_whenever_validation_prefers_them(tmp_path):
    # The same one-epoch run whose gain alpha 1e-9 cannot call significant.
    best, record, start = fit_gated_model(tmp_path, audio_informative=True, epochs=1,
                                          keep_start_unless_better=True, alpha=1e-9, start_alpha=1.0)
    assert record["start_gain"] > 0 and record["start_alpha"] == 1.0
    assert record["handed_on"] == "trained"
    assert not torch.equal(best["state_dict"]["model.head.net.0.weight"], start["model.head.net.0.weight"])


@pytest.mark.parametrize("start_alpha", [0.0, 1.5])
def test_start_alpha_outside_its_range_is_refused(start_alpha):
    with pytest.raises(ValueError, match="selection.start_alpha must be in"):
        Selection(start_alpha=start_alpha)


def test_selection_needs_a_fused_model():
    class NotFused(pl.LightningModule):
        pass

    with pytest.raises(TypeError, match="needs a fused model"):
        select(pl.Trainer(logger=False), NotFused(), Selection())
    assert select(pl.Trainer(logger=False), NotFused(), None) == (None, None), "no selection configured"


def test_the_start_kept_for_the_test_leaves_frozen_weights_out():
    task = FusionTask(input_dims={"text": 6, "audio": 5}, freeze_encoders=True,
                      text_encoder=lambda d: TextLSTMEncoder(d, input_kind="vectors", embed_dim=8, hidden_dim=8, out_dim=8),
                      audio_encoder=lambda d: AcousticMLPEncoder(d, hidden_dims=[8], out_dim=8))
    start = starting_weights(task, Selection(keep_start_unless_better=True))
    assert start and not any(key.startswith("model.encoders.text.") for key in start)
    assert "model.active" in start and "model.head.net.0.weight" in start
    assert starting_weights(task, Selection()) is None, "no start kept when no test needs it"


def test_the_unimodal_figures_are_those_of_the_stages_a_fused_stage_names_unimodal_else_encoders():
    stages = {"fusion": SimpleNamespace(checkpoints={"model.init_args.encoders.text": "text_backfit",
                                                     "model.init_args.unimodal.text": "text",
                                                     "model.init_args.encoders.audio": "audio"}),
              "finetune": SimpleNamespace(checkpoints={"model.init_args.init_checkpoint": "fusion"})}
    val_mae = {"text": 1.0, "text_backfit": 0.5, "audio": 2.0, "fusion": 0.1}
    pipeline = SimpleNamespace(stage=stages.__getitem__)
    manifest = SimpleNamespace(stage=lambda name: {"metrics": {"val": {"MAE": val_mae[name]}},
                                                   "best_checkpoint": f"{name}.ckpt"})
    expected = {"text": {"val_MAE": 1.0, "checkpoint": "text.ckpt"}, "audio": {"val_MAE": 2.0, "checkpoint": "audio.ckpt"}}
    assert unimodal_figures(pipeline, stages["fusion"], manifest) == expected
    assert unimodal_figures(pipeline, stages["finetune"], manifest) == expected
