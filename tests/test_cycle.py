"""The CycleGAN between embedding spaces and filling in a missing modality with it."""

from __future__ import annotations

import pytest
import torch

from mmsent.models.generative import EmbeddingCycleGAN, fill_missing, frechet_distance

SOURCE_DIM, TARGET_DIM = 12, 8


def paired_data(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views of three shared factors: a linear one and a nonlinear one, off-centre."""
    maps = torch.randn(2, 3, SOURCE_DIM, generator=torch.Generator().manual_seed(7))
    rng = torch.Generator().manual_seed(seed)
    factors = torch.randn(count, 3, generator=rng)
    source = 2 + factors @ maps[0] + 0.05 * torch.randn(count, SOURCE_DIM, generator=rng)
    target = -1 + torch.tanh(factors) @ maps[1, :, :TARGET_DIM] + 0.05 * torch.randn(count, TARGET_DIM, generator=rng)
    return source, target


def train(model: EmbeddingCycleGAN, source: torch.Tensor, target: torch.Tensor, steps: int,
          paired: bool) -> None:
    torch.manual_seed(0)
    parts = model.parts()
    opt_g = torch.optim.Adam(parts["generator"].parameters(), 1e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(parts["discriminator"].parameters(), 2e-3, betas=(0.5, 0.999))
    for _ in range(steps):
        a_index = torch.randint(len(source), (64,))
        b_index = a_index if paired else torch.randint(len(target), (64,))
        a, b = source[a_index], target[b_index]
        model.observe(a, b)
        for optimizer, loss in ((opt_d, model.discriminator_loss), (opt_g, model.generator_loss)):
            optimizer.zero_grad()
            loss(a, b)["loss"].backward()
            optimizer.step()


def standardized_error(model: EmbeddingCycleGAN, translated: torch.Tensor, target: torch.Tensor) -> float:
    scaler = model.target_scaler
    return float((scaler.normalize(translated) - scaler.normalize(target)).abs().mean())


@pytest.fixture(scope="module")
def data() -> dict[str, torch.Tensor]:
    a, b = paired_data(1024, seed=0)
    test_a, test_b = paired_data(256, seed=1)
    return {"a": a, "b": b, "test_a": test_a, "test_b": test_b}


def test_shapes_and_losses(data):
    model = EmbeddingCycleGAN(SOURCE_DIM, TARGET_DIM, hidden_dims=[32], paired_weight=1.0)
    a, b = data["a"][:16], data["b"][:16]
    model.observe(a, b)
    assert model.to_target(a).shape == (16, TARGET_DIM)
    assert model.to_source(b).shape == (16, SOURCE_DIM)
    losses = {**model.discriminator_loss(a, b[:10]), **model.generator_loss(a, b)}
    assert {"loss", "adversarial", "penalty", "cycle", "paired"} <= set(losses)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    with pytest.raises(ValueError, match="paired batches"):
        model.generator_loss(a, b[:10])
    with pytest.raises(ValueError, match="both 'text'"):
        EmbeddingCycleGAN(4, 4, source="text", target="text")


def test_unpaired_training_closes_the_cycle_without_collapse(data):
    torch.manual_seed(0)
    model = EmbeddingCycleGAN(SOURCE_DIM, TARGET_DIM, hidden_dims=[64, 64])
    model.observe(data["a"], data["b"])

    def measures() -> tuple[float, float]:
        with torch.no_grad():
            cycle = float(model.generator_loss(data["test_a"], data["test_b"])["cycle"])
        scaler = model.target_scaler
        frechet = frechet_distance(scaler.normalize(model.to_target(data["test_a"])),
                                   scaler.normalize(data["test_b"]))
        return cycle, frechet

    cycle_before, frechet_before = measures()
    train(model, data["a"], data["b"], steps=400, paired=False)
    cycle_after, frechet_after = measures()
    assert cycle_after < 0.4 * cycle_before
    assert frechet_after < 0.5 * frechet_before
    translated = model.target_scaler.normalize(model.to_target(data["test_a"]))
    assert translated.std(0).mean() > 0.5  # no collapse onto one point


def test_paired_training_translates_to_the_partner(data):
    torch.manual_seed(0)
    model = EmbeddingCycleGAN(SOURCE_DIM, TARGET_DIM, hidden_dims=[64, 64], paired_weight=5.0)
    model.observe(data["a"], data["b"])
    train(model, data["a"], data["b"], steps=400, paired=True)
    mean_guess = model.target_scaler.mean.float().expand_as(data["test_b"])
    error = standardized_error(model, model.to_target(data["test_a"]), data["test_b"])
    assert error < 0.5 * standardized_error(model, mean_guess, data["test_b"])


def test_fill_missing_replaces_only_absent_rows_it_can_reach():
    model = EmbeddingCycleGAN(3, 2, source="text", target="audio", hidden_dims=[8])
    embeddings = {"text": torch.randn(4, 3), "audio": torch.randn(4, 2), "video": torch.randn(4, 5)}
    present = {"text": torch.tensor([True, True, False, False]),
               "audio": torch.tensor([True, False, True, False]),
               "video": torch.tensor([False, True, True, False])}
    filled, now = fill_missing(embeddings, present, [model])
    assert torch.allclose(filled["audio"][1], model.to_target(embeddings["text"][1:2])[0], atol=1e-6)
    assert torch.allclose(filled["text"][2], model.to_source(embeddings["audio"][2:3])[0], atol=1e-6)
    for m, kept in (("audio", [0, 2, 3]), ("text", [0, 1, 3]), ("video", [0, 1, 2, 3])):
        assert torch.equal(filled[m][kept], embeddings[m][kept])
    assert now["audio"].tolist() == [True, True, True, False]
    assert now["text"].tolist() == [True, True, True, False]
    assert torch.equal(now["video"], present["video"])
