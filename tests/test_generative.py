"""Generative augmentation: the plain generators, their quality measures, the stage-4a
task, the fusion stage's mixing of generated samples, and the augmented pipeline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import CONF, REPO
from torch import nn

from mmsent.models.generative import (
    BiGAN,
    ConditionalAutoencoder,
    ConditionalGAN,
    ConditionalVAE,
    Critic,
    RidgeProbe,
    RunningStandardizer,
    concat_embeddings,
    conditional_diversity,
    draw_scores,
    frechet_distance,
    gradient_penalty,
    sample_embeddings,
    sample_quality,
    split_embeddings,
)
from mmsent.tasks.checkpoints import load_weights

DIM = 16
GENERATORS = {
    "autoencoder": lambda: ConditionalAutoencoder(DIM, latent_dim=4, hidden_dims=[64]),
    "vae": lambda: ConditionalVAE(DIM, latent_dim=4, hidden_dims=[64]),
    "wgan-gp": lambda: ConditionalGAN(DIM, noise_dim=8, hidden_dims=[64, 64]),
    "infogan": lambda: ConditionalGAN(DIM, noise_dim=8, hidden_dims=[64, 64], info_dim=2),
    "sn-hinge": lambda: ConditionalGAN(DIM, noise_dim=8, hidden_dims=[64, 64], loss="hinge",
                                       spectral_norm=True, gradient_penalty=0.0),
    "bigan": lambda: BiGAN(DIM, noise_dim=8, hidden_dims=[64, 64]),
}


def toy_data(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Vectors whose mean moves with the score, plus score-independent nonlinear
    variation on four latent factors, far from zero mean and unit scale."""
    mixing = torch.randn(2, 4, DIM, generator=torch.Generator().manual_seed(123))
    rng = torch.Generator().manual_seed(seed)
    scores = torch.rand(count, generator=rng) * 6 - 3
    factors = torch.randn(count, 4, generator=rng)
    x = (scores[:, None] / 3) @ mixing[0, :1] * 2 + torch.tanh(factors) @ mixing[1]
    return 5 + x + 0.1 * torch.randn(count, DIM, generator=rng), scores


@pytest.fixture(scope="module")
def toy() -> dict[str, torch.Tensor]:
    x, y = toy_data(512, seed=0)
    val_x, val_y = toy_data(256, seed=1)
    return {"x": x, "y": y, "val_x": val_x, "val_y": val_y}


def train(generator, x, y, steps: int, lr: float = 1e-3, batch: int = 64) -> None:
    """The training loops of GenerativeTask without Lightning."""
    torch.manual_seed(0)
    generator.train()
    if generator.adversarial:
        parts = generator.parts()
        opt_g = torch.optim.Adam(parts["generator"].parameters(), lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(parts["discriminator"].parameters(), 2 * lr, betas=(0.5, 0.999))
    else:
        opt = torch.optim.Adam(generator.parameters(), lr)
    for step in range(steps):
        index = torch.randint(len(x), (batch,))
        generator.observe(x[index])
        if generator.adversarial:
            step_on(opt_d, generator.discriminator_loss(x[index], y[index])["loss"])
            step_on(opt_g, generator.generator_loss(y[index], real=x[index])["loss"])
        else:
            step_on(opt, generator.losses(x[index], y[index])["loss"])
    generator.eval()


def step_on(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


# --- the plain modules -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generator_shapes_and_losses(name, toy):
    generator = GENERATORS[name]()
    x, y = toy["x"][:32], toy["y"][:32]
    generator.observe(x)
    assert generator.sample(y[:7]).shape == (7, DIM)
    if generator.adversarial:
        losses = {**generator.discriminator_loss(x, y), **generator.generator_loss(y, real=x)}
        expected = {"loss", "adversarial"} | ({"info"} if getattr(generator, "info_dim", 0) else set())
        expected |= {"penalty"} if generator.penalty_weight else set()
        assert expected <= set(losses)
        if isinstance(generator, BiGAN):
            assert generator.encode(x, y).shape == (32, generator.noise_dim)
            assert generator.reconstruct(x, y).shape == x.shape
        else:
            assert not generator.can_reconstruct
            with pytest.raises(ValueError, match="cannot reconstruct"):
                generator.reconstruct(x, y)
    else:
        losses = generator.losses(x, y)
        assert {"loss", "recon"} <= set(losses)
        assert generator.reconstruct(x, y).shape == x.shape
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("name", ["autoencoder", "vae"])
def test_autoencoders_lower_their_loss_and_reconstruction_error(name, toy):
    torch.manual_seed(0)
    generator = GENERATORS[name]()
    generator.observe(toy["x"])

    @torch.no_grad()
    def evaluate() -> tuple[float, float]:
        torch.manual_seed(1)
        loss = float(generator.losses(toy["val_x"], toy["val_y"])["loss"])
        recon = generator.reconstruct(toy["val_x"], toy["val_y"])
        scaler = generator.scaler
        return loss, float((scaler.normalize(recon) - scaler.normalize(toy["val_x"])).square().mean())

    loss_before, recon_before = evaluate()
    train(generator, toy["x"], toy["y"], steps=300)
    loss_after, recon_after = evaluate()
    assert loss_after < loss_before - 0.25 * abs(loss_before)
    assert recon_after < 0.3 * recon_before


@pytest.mark.parametrize("name", ["autoencoder", "vae", "infogan", "bigan"])
def test_training_brings_samples_to_the_data_and_its_score(name, toy):
    torch.manual_seed(0)
    generator = GENERATORS[name]()
    probe = RidgeProbe(DIM).fit(toy["x"], toy["y"])
    generator.observe(toy["x"])
    before, _ = sample_quality(generator, toy["val_x"], toy["val_y"], probe, torch.Generator().manual_seed(0))
    train(generator, toy["x"], toy["y"], steps=250 if generator.adversarial else 300)
    after, generated = sample_quality(generator, toy["val_x"], toy["val_y"], probe,
                                      torch.Generator().manual_seed(0))
    assert generated.shape == toy["val_x"].shape
    assert after["frechet"] < 0.5 * before["frechet"]
    # Generated samples carry their conditioning score: a ridge fitted on real data
    # reads it back far better than from an untrained generator's samples.
    assert after["fidelity_MAE"] < 0.5 * before["fidelity_MAE"]
    assert 0.6 < after["conditional_diversity"] < 1.4
    if getattr(generator, "info_dim", 0):
        assert info_code_correlation(generator).min() > 0.3


def test_bigan_encoder_learns_to_invert_its_generator(toy):
    torch.manual_seed(0)
    bigan = GENERATORS["bigan"]()
    bigan.observe(toy["x"])
    scaler = bigan.scaler

    def recon_error() -> float:
        recon = bigan.reconstruct(toy["val_x"], toy["val_y"])
        return float((scaler.normalize(recon) - scaler.normalize(toy["val_x"])).square().mean())

    def latent_recovery() -> float:
        noise = torch.randn(256, bigan.noise_dim, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            fake = scaler.denormalize(bigan._decode(noise, toy["val_y"][:256, None] / 3))
        code = bigan.encode(fake, toy["val_y"][:256])
        return float(torch.nn.functional.cosine_similarity(code, noise).mean())

    before = recon_error()
    # 400 steps left the error at 0.26-0.49 of its start over seeds and thread counts;
    # 800 leave it at 0.25-0.39.
    train(bigan, toy["x"], toy["y"], steps=800)
    assert recon_error() < 0.45 * before
    assert latent_recovery() > 0.4

    with pytest.raises(ValueError, match="needs the real batch"):
        bigan.generator_loss(toy["y"][:4])


def info_code_correlation(generator: ConditionalGAN) -> torch.Tensor:
    """Per InfoGAN code dimension, the correlation between the code a sample was
    generated with and the code the discriminator's head reads back from it."""
    latent = generator.draw_latent(512, torch.Generator().manual_seed(0))
    scores = torch.zeros(512)
    with torch.no_grad():
        fake = generator.scaler.normalize(generator.generate(latent, scores))
        _, predicted = generator.discriminator(fake, scores[:, None])
    code = latent[:, generator.noise_dim:]
    return torch.stack([torch.corrcoef(torch.stack([predicted[:, d], code[:, d]]))[0, 1]
                        for d in range(generator.info_dim)])


def test_spectral_norm_bounds_each_critic_layer():
    critic = Critic(DIM, [64, 64], spectral_norm=True, info_dim=0)
    for _ in range(20):  # power iterations run in training-mode forward passes
        critic(torch.randn(32, DIM), torch.randn(32, 1))
    layers = [m for m in critic.body if isinstance(m, nn.Linear)] + [critic.score]
    for layer in layers:
        assert torch.linalg.matrix_norm(layer.weight.detach(), 2) == pytest.approx(1.0, abs=0.05)


def test_gradient_penalty_of_a_linear_critic_is_its_norm_gap():
    critic = Critic(DIM, [], spectral_norm=False, info_dim=0)
    nn.init.zeros_(critic.embed_condition[-1].weight)
    nn.init.zeros_(critic.embed_condition[-1].bias)
    with torch.no_grad():
        critic.score.weight.fill_(0.5)
    penalty = gradient_penalty(critic, torch.randn(8, DIM), torch.randn(8, DIM), torch.zeros(8, 1))
    assert penalty.item() == pytest.approx((0.5 * math.sqrt(DIM) - 1) ** 2, rel=1e-5)


def test_wasserstein_loss_needs_a_lipschitz_constraint():
    with pytest.raises(ValueError, match="Lipschitz"):
        ConditionalGAN(DIM, loss="wasserstein", spectral_norm=False, gradient_penalty=0.0)
    with pytest.raises(ValueError, match="loss must be one of"):
        ConditionalGAN(DIM, loss="least-squares")


def test_running_standardizer_matches_the_full_data_statistics(toy):
    scaler = RunningStandardizer(DIM)
    for chunk in toy["x"].split(100):
        scaler.update(chunk)
    assert torch.allclose(scaler.mean.float(), toy["x"].mean(0), atol=1e-5)
    assert torch.allclose(scaler.std.float(), toy["x"].std(0, correction=0), atol=1e-5)
    assert torch.allclose(scaler.denormalize(scaler.normalize(toy["x"])), toy["x"], atol=1e-4)


# --- the quality measures ----------------------------------------------------------


def test_frechet_distance_is_zero_for_the_same_sample_and_sees_a_shift(toy):
    x = toy["x"]
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    shift = torch.zeros(DIM)
    shift[0] = 2.0
    assert frechet_distance(x, x + shift) == pytest.approx(4.0, rel=1e-6)


def test_conditional_diversity_exposes_a_collapsed_generator(toy):
    x, y = toy["val_x"], toy["val_y"]
    assert conditional_diversity(x, x, y) == pytest.approx(1.0)
    # One vector per score (noise ignored) still spreads over scores, not within them.
    collapsed = y[:, None].repeat(1, DIM)
    assert conditional_diversity(x, collapsed, y) < 0.2


def test_ridge_probe_recovers_a_linear_score():
    x = torch.randn(400, DIM) * 3 + 1
    weight = torch.randn(DIM)
    y = x @ weight
    probe = RidgeProbe(DIM, alpha=1e-6).fit(x, y)
    assert torch.allclose(probe(x), y, atol=1e-3 * float(y.abs().max()))


def test_draw_scores_and_sample_embeddings(toy):
    labels = torch.tensor([-2.0, 0.5, 1.0])
    assert set(draw_scores(labels, 50).tolist()) <= set(labels.tolist())
    uniform = draw_scores(labels, 1000, "uniform")
    assert uniform.min() >= -3 and uniform.max() <= 3 and uniform.std() > 1.5
    with pytest.raises(ValueError, match="score mode"):
        draw_scores(labels, 1, "gaussian")
    dims = {"text": 10, "audio": 6}
    generator = ConditionalVAE(DIM)
    embeddings, scores = sample_embeddings(generator, dims, labels.repeat(4), ratio=0.5)
    assert {m: e.shape for m, e in embeddings.items()} == {"text": (6, 10), "audio": (6, 6)}
    assert scores.shape == (6,)
    assert torch.equal(concat_embeddings(split_embeddings(toy["x"], dims), dims), toy["x"])


# --- the stage-4a task, the fusion stage's mixing, and the augmented pipeline ---------

AUGMENTED = REPO / "pipelines" / "quickstart_augmented.yaml"
GAN_EPOCHS = 60


@pytest.fixture(scope="module")
def augmented(tiny_raw, tmp_path_factory) -> dict:
    """The augmented quickstart pipeline on the tiny dataset: one epoch per stage but
    the GAN's. The plain fusion stage (covered by test_pipeline) and the VAE's fusion
    stage (the same code as the GAN's) are left out to save time."""
    import yaml

    from mmsent.pipeline import run

    folder = tmp_path_factory.mktemp("augmented")
    spec = yaml.safe_load(AUGMENTED.read_text())
    spec["stages"] = [s for s in spec["stages"] if s["name"] not in ("fusion", "fusion_vae")]
    for stage in spec["stages"]:
        stage["configs"] = [str(AUGMENTED.parent / c) for c in stage["configs"]]
        if stage["name"] == "gan":
            stage["args"] = [f"--trainer.max_epochs={GAN_EPOCHS}",
                             f"--trainer.check_val_every_n_epoch={GAN_EPOCHS}"]
    spec["output_dir"] = str(folder / "out")
    spec["args"] = ["-c", str(CONF / "tiny_data.yaml"), f"--data.source.init_args.root={tiny_raw}",
                    f"--data.cache_dir={folder / 'cache'}", "--trainer.max_epochs=1",
                    "--trainer.logger=true", "--trainer.log_every_n_steps=1"]
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    run(path)
    return json.loads((folder / "out" / "manifest.json").read_text())["stages"]


def stage_cli(record: dict, *overrides: str):
    """Rebuilds a finished stage's model and data from its saved config."""
    from mmsent.cli import build_cli

    return build_cli(["-c", record["config"], "--trainer.logger=false", *overrides], run=False)


def test_augmented_pipeline_trains_generators_and_mixes_their_samples_in(augmented):
    assert all(record["status"] == "done" for record in augmented.values())
    assert f"generator_checkpoint={augmented['gan']['best_checkpoint']}" in augmented["fusion_gan"]["command"]
    assert {"MAE", "Non0_acc_2"} <= set(augmented["fusion_gan"]["metrics"]["test"])
    for generator in ("vae", "gan"):
        quality = augmented[generator]["metrics"]["test"]
        assert {"frechet", "diversity", "conditional_diversity", "fidelity_MAE", "real_MAE"} <= set(quality)
        log_dir = Path(augmented[generator]["config"]).parent
        records = [json.loads(line) for line in (log_dir / "generative" / "quality.jsonl").open()]
        assert {r["split"] for r in records} == {"val", "test"}
        assert list((log_dir / "generative").glob("val_epoch*.png"))
        assert (log_dir / "generative" / "test.png").is_file()
        stage_dir = Path(augmented[generator]["best_checkpoint"]).parents[1]
        assert (stage_dir / "media" / "samples.png").is_file()  # what W&B logs as media/samples
    assert "recon_error" in augmented["vae"]["metrics"]["val"]
    fusion_log = Path(augmented["fusion_gan"]["config"]).parent / "metrics.csv"
    assert "train/generated_loss" in fusion_log.read_text().splitlines()[0]


def test_report_shows_generative_stages_in_their_own_table(augmented):
    report = (Path(augmented["gan"]["best_checkpoint"]).parents[2] / "report.md").read_text()
    sentiment, generative = report.split("Generative stages, test split")
    assert "| vae |" not in sentiment and "| gan |" not in sentiment and "| fusion_gan |" in sentiment
    rows = {line.split(" | ")[0].strip("| "): line for line in generative.splitlines() if line.startswith("| ")}
    assert set(rows) == {"stage", "vae", "gan"}
    frechet = float(rows["gan"].split(" | ")[1])
    assert frechet == pytest.approx(augmented["gan"]["metrics"]["test"]["frechet"], abs=1e-3)


def test_gan_does_not_collapse_on_the_generated_dataset(augmented):
    cli = stage_cli(augmented["gan"])
    task = cli.model
    load_weights(task, augmented["gan"]["best_checkpoint"])
    task.eval()
    cli.datamodule.prepare_data()
    batches = [task.embed(batch) for loader in (cli.datamodule.train_dataloader(),
                                                cli.datamodule.val_dataloader(),
                                                cli.datamodule.test_dataloader()) for batch in loader]
    real, scores = (torch.cat(parts) for parts in zip(*batches, strict=True))
    measures, _ = sample_quality(task.generator, real, scores, rng=torch.Generator().manual_seed(0))
    # A collapsed generator scores near 0 on both (see the unit test above); an
    # untrained one near 0.3. Within each score class, generated samples must spread
    # at least half as much as real ones.
    assert measures["diversity"] > 0.5
    assert measures["conditional_diversity"] > 0.5


def test_generated_loss_is_added_at_the_configured_ratio(augmented):
    from mmsent.tasks.base import BaseTask

    cli = stage_cli(augmented["fusion_gan"], "--model.init_args.generated_ratio=0.75")
    task = cli.model.eval()
    cli.datamodule.prepare_data()
    batch = next(iter(cli.datamodule.train_dataloader()))
    real_loss = BaseTask.training_step(task, batch, 0)
    torch.manual_seed(3)
    total = task.training_step(batch, 0)
    torch.manual_seed(3)
    dims = {m: e.out_dim for m, e in task.model.encoders.items()}
    embeddings, scores = sample_embeddings(task.generator, dims, batch["label"], 0.75)
    assert len(scores) == round(0.75 * len(batch["label"]))
    generated_loss = task.loss_fn(task.model.predict_from_embeddings(embeddings), scores)
    assert total.item() == pytest.approx(real_loss.item() + 0.75 * generated_loss.item(), rel=1e-6)


def test_fusion_stage_validates_the_generator_checkpoint(augmented, tmp_path):
    record = augmented["fusion_gan"]
    missing = tmp_path / "missing.ckpt"
    with pytest.raises(FileNotFoundError, match=f"model.generator_checkpoint: checkpoint {missing}"):
        stage_cli(record, f"--model.init_args.generator_checkpoint={missing}")
    with pytest.raises(ValueError, match="holds a unimodal checkpoint, not a generator"):
        stage_cli(record, f"--model.init_args.generator_checkpoint={augmented['text']['best_checkpoint']}")
    with pytest.raises(ValueError, match="laid out as .* but the configured encoders produce"):
        without_audio = {m: augmented[m]["best_checkpoint"] for m in ("text", "video")}
        stage_cli(record, f"--model.init_args.encoders={json.dumps(without_audio)}",
                  "--model.init_args.audio_encoder=mmsent.models.AcousticMLPEncoder",
                  "--model.init_args.audio_encoder.init_args.out_dim=32")
    text = torch.load(augmented["text"]["best_checkpoint"], weights_only=True)
    text["state_dict"]["encoder.project.bias"] += 1.0
    retrained = tmp_path / "retrained_text.ckpt"
    torch.save(text, retrained)
    with pytest.raises(ValueError, match="other text encoder weights"):
        stage_cli(record, f"--model.init_args.encoders.text={retrained}")
    with pytest.raises(ValueError, match="needs model.freeze_encoders: true"):
        stage_cli(record, "--model.init_args.freeze_encoders=false")
    with pytest.raises(ValueError, match="generated_ratio > 0 needs model.generator_checkpoint"):
        stage_cli(record, "--model.init_args.generator_checkpoint=null")


def test_generator_weights_of_another_architecture_are_rejected(augmented, tmp_path):
    checkpoint = torch.load(augmented["gan"]["best_checkpoint"], weights_only=True)
    checkpoint["mmsent"]["generator_config"]["hidden_dims"] = [32]
    edited = tmp_path / "edited.ckpt"
    torch.save(checkpoint, edited)
    with pytest.raises(ValueError, match=f"the weights in {edited} do not fit a ConditionalGAN"):
        stage_cli(augmented["fusion_gan"], f"--model.init_args.generator_checkpoint={edited}")


@pytest.mark.parametrize("config", ["4a_autoencoder.yaml", "4a_bigan.yaml"])
def test_generator_stage_config_trains_on_the_pipeline_checkpoints(config, augmented, tiny_raw, tmp_path):
    from mmsent.main import main

    checkpoints = [f"--model.init_args.encoders.{m}={augmented[stage]['best_checkpoint']}"
                   for m, stage in (("text", "text"), ("audio", "audio"), ("video", "video"))]
    quickstart = AUGMENTED.parent / "quickstart"
    main(["fit", "-c", str(quickstart / "base.yaml"), "-c", str(quickstart / config),
          "-c", str(CONF / "tiny_data.yaml"),
          f"--data.source.init_args.root={tiny_raw}", f"--data.cache_dir={tmp_path / 'cache'}",
          f"--trainer.default_root_dir={tmp_path}", "--trainer.fast_dev_run=1", *checkpoints])
    assert (tmp_path / "generative" / "quality.jsonl").is_file()


def test_bigan_is_rebuilt_from_its_recorded_config(toy):
    from mmsent.models.generative import GENERATORS as REGISTRY

    bigan = GENERATORS["bigan"]()
    bigan.observe(toy["x"])
    rebuilt = REGISTRY["BiGAN"](**bigan.config)
    rebuilt.load_state_dict(bigan.state_dict())
    rng = torch.Generator().manual_seed(0)
    torch.testing.assert_close(rebuilt.sample(toy["y"][:8], torch.Generator().manual_seed(0)),
                               bigan.sample(toy["y"][:8], rng))
