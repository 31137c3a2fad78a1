"""Fusion that never hurts: on an MMSA pickle with labels far from 0 and a weak text
modality, every stage beats the trivial predictor after one epoch, and the fused
stage starts from, and is no worse than, the best unimodal stage."""

import pickle

import numpy as np
import pytest
import torch
import yaml

from mmsent.pipeline import run

MEDIAN = 1.5


def mmsa_part(split: str, videos: int, rng: np.random.Generator) -> dict:
    """Clips whose audio carries the score clearly and whose text carries it barely."""
    n = videos * 4
    ids = [f"{split}{k // 4}$_${k % 4}" for k in range(n)]
    labels = np.clip(MEDIAN + rng.normal(0, 0.9, n), -3, 3).astype(np.float32)
    text = rng.normal(size=(n, 6, 8)).astype(np.float32)
    text[:, :, 0] += 0.3 * (labels[:, None] - MEDIAN)
    audio = rng.normal(size=(n, 5, 4)).astype(np.float32)
    audio[:, :, 0] += 2.0 * (labels[:, None] - MEDIAN)
    return {"id": np.array(ids, dtype=object), "raw_text": np.array(["words"] * n, dtype=object),
            "regression_labels": labels, "text": text, "audio": audio,
            "vision": np.ones((n, 5, 3), dtype=np.float32)}


def write_configs(folder, pickle_path) -> dict:
    base = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "deterministic": True, "log_every_n_steps": 5},
        "data": {"source": {"class_path": "mmsent.data.MMSAPickleSource",
                            "init_args": {"path": str(pickle_path), "modalities": ["text", "audio"],
                                          "text": "vectors", "standardize": True}},
                 "cache_dir": str(folder / "cache"), "batch_size": 16},
    }
    lstm = {"class_path": "mmsent.models.TextLSTMEncoder",
            "init_args": {"input_kind": "vectors", "embed_dim": 16, "hidden_dim": 16, "out_dim": 16}}
    mlp = {"class_path": "mmsent.models.AcousticMLPEncoder", "init_args": {"hidden_dims": [16], "out_dim": 16}}
    adam = {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.01}}
    configs = {
        "base": base,
        "text": {"model": {"class_path": "mmsent.tasks.UnimodalTask",
                           "init_args": {"modality": "text", "encoder": lstm, "optimizer": adam}}},
        "audio": {"model": {"class_path": "mmsent.tasks.UnimodalTask",
                            "init_args": {"modality": "audio", "encoder": mlp, "optimizer": adam}}},
        "fusion": {
            "selection": {"samples": 500, "keep_start_unless_better": True},
            "model": {"class_path": "mmsent.tasks.FusionTask", "init_args": {
                "head_from": "best", "freeze_encoders": True, "optimizer": adam,
                "fusion": {"class_path": "mmsent.models.fusion.GatedResidualFusion",
                           "init_args": {"dropout": 0.0}}}}},
    }
    paths = {}
    for name, config in configs.items():
        paths[name] = folder / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(config))
    return paths


@pytest.fixture(scope="module")
def weak_text_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weak_text")
    rng = np.random.default_rng(0)
    data = {split: mmsa_part(split, videos, rng) for split, videos in (("train", 40), ("valid", 15), ("test", 15))}
    (folder / "data.pkl").write_bytes(pickle.dumps(data))
    configs = write_configs(folder, folder / "data.pkl")
    spec = {"name": "weak_text", "output_dir": str(folder / "out"), "stages": [
        {"name": "text", "configs": [str(configs["base"]), str(configs["text"])]},
        {"name": "audio", "configs": [str(configs["base"]), str(configs["audio"])]},
        {"name": "fusion", "configs": [str(configs["base"]), str(configs["fusion"])],
         "checkpoints": {"model.init_args.encoders.text": "text", "model.init_args.encoders.audio": "audio"}},
    ]}
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(spec))
    out = run(folder / "pipeline.yaml", use_wandb=False)
    return out, yaml.safe_load((out / "manifest.json").read_text())


def test_every_stage_beats_the_trivial_predictor_after_one_epoch(weak_text_run):
    _, manifest = weak_text_run
    for name, stage in manifest["stages"].items():
        for split in ("val", "test"):
            metrics = stage["metrics"][split]
            assert metrics["MAE"] < metrics["baseline/MAE"], (name, split, metrics["MAE"])
    assert manifest["stages"]["text"]["metrics"]["val"]["baseline/MAE"] > 0.5


def test_the_fused_stage_starts_from_the_best_unimodal_stage_and_is_no_worse(weak_text_run):
    out, manifest = weak_text_run
    stages = manifest["stages"]
    unimodal = {m: stages[m]["metrics"]["val"]["MAE"] for m in ("text", "audio")}
    assert unimodal["text"] > unimodal["audio"]  # the text is the weak one here
    fused = stages["fusion"]
    assert fused["metrics"]["val"]["MAE"] <= unimodal["audio"] + 1e-4
    record = torch.load(fused["best_checkpoint"], weights_only=True)["mmsent"]
    assert record["unimodal"]["head_modality"] == "audio"
    weights = torch.load(fused["best_checkpoint"], weights_only=True)["state_dict"]
    assert "model.fusion.project.text.weight" in weights, "the fusion is built on the audio, the text added to it"
    assert not any(key.startswith("model.fusion.project.audio") for key in weights)
    check = fused["selection"]["unimodal"]
    assert check["modality"] == "audio" and check["val_MAE"] == unimodal["audio"], "the manifest's figure"
    assert check["handed_on"] in ("fused", "unimodal")
    report = (out / "report.md").read_text()
    assert "best unimodal stage (audio)" in report and "*trivial predictor*" in report
