"""Reuse a trained acoustic encoder in another task, with a plain PyTorch loop.

The task here: tell a rising tone from a falling one, from log-mel frames computed by
mmsent's own audio front end. The pretrained encoder is frozen; a small linear head
on its embedding is trained.

    python examples/reuse_acoustic_encoder.py models/quickstart --steps 100
"""

import argparse

import numpy as np
import torch
from torch import nn

from mmsent import SentimentModel
from mmsent.data.media import log_mel_frames

SAMPLE_RATE = 16000


def tone(rising: bool, rng: np.random.Generator, seconds: float = 0.5) -> np.ndarray:
    """A sweep between two random frequencies, upwards or downwards, with noise."""
    low, high = sorted(rng.uniform(200, 2000, size=2))
    start, end = (low, high) if rising else (high, low)
    t = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
    phase = 2 * np.pi * (start * t + (end - start) * t ** 2 / (2 * seconds))
    return (np.sin(phase) + 0.1 * rng.standard_normal(len(t))).astype(np.float32)


def batch(size: int, rng: np.random.Generator, n_mels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    labels = rng.integers(0, 2, size)
    frames = np.stack([log_mel_frames(tone(bool(y), rng), SAMPLE_RATE, n_mels) for y in labels])
    x = torch.from_numpy(frames)
    return x, torch.ones(x.shape[:2], dtype=torch.bool), torch.from_numpy(labels).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model folder (mmsent export), e.g. models/quickstart")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    encoder = SentimentModel.from_pretrained(args.model).encoders["audio"].eval().requires_grad_(False)
    n_mels = encoder.config["input_dim"]
    head = nn.Linear(encoder.out_dim, 1)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.01)
    for step in range(args.steps):
        x, mask, y = batch(args.batch_size, rng, n_mels)
        loss = nn.functional.binary_cross_entropy_with_logits(head(encoder(x, mask)).squeeze(-1), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, mask, y = batch(64, rng, n_mels)
    with torch.no_grad():
        accuracy = ((head(encoder(x, mask)).squeeze(-1) > 0).float() == y).float().mean().item()
    print(f"final training loss {loss.item():.3f}, held-out accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
