"""How far apart are Swapout's two inference modes on a trained model?

A residual acoustic MLP encoder with Swapout units (``AcousticMLPEncoder(residual=True,
swapout=(p, p))``) and a linear head is trained on a toy regression over frame features
(the target a nonlinear function of the frames' mean and spread). It is then evaluated
two ways: every Swapout unit replaced by its expectation (the encoder's default), and the
average of N sampled passes (``swapout_samples=N``, Singh et al. 2016). Reported per
Swapout probability and N, over seeds: the mean absolute gap between the two modes'
predictions relative to the predictions' spread, and the test MAE of each mode.

    python benchmarks/toolkit/swapout_inference.py            # under a minute on one CPU core
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

# Run as a file, a script sees only its own folder; the repository root makes `benchmarks` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from torch import nn

from benchmarks.common import machine, mean_std, save
from mmsent.models.audio import AcousticMLPEncoder

FRAMES, FEATURES = 10, 8


def toy_data(samples: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames and a target that depends nonlinearly on their mean and spread."""
    scale = torch.rand(samples, 1, FEATURES, generator=generator) + 0.5
    frames = scale * torch.randn(samples, FRAMES, FEATURES, generator=generator)
    mean, spread = frames.mean(1), frames.std(1)
    target = torch.tanh(mean[:, :4].sum(1)) + 0.5 * torch.sin(2 * spread[:, 4:].sum(1))
    return frames, target


class Regressor(nn.Module):
    """The encoder under test and a linear head."""

    def __init__(self, p: float, samples: int) -> None:
        super().__init__()
        self.encoder = AcousticMLPEncoder(
            FEATURES, hidden_dims=[64, 64, 64, 64], out_dim=32, dropout=0.0, residual=True,
            swapout=(p, p), swapout_samples=samples,
        )
        self.head = nn.Linear(32, 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        mask = torch.ones(frames.shape[:2], dtype=torch.bool)
        return self.head(self.encoder(frames, mask)).squeeze(-1)


def run(p: float, seed: int, sample_counts: list[int], epochs: int) -> dict:
    """Trains one model and evaluates it in both modes."""
    generator = torch.Generator().manual_seed(seed)
    x_train, y_train = toy_data(2000, generator)
    x_test, y_test = toy_data(1000, generator)
    torch.manual_seed(seed)
    model = Regressor(p, samples=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(x_train)).split(64):
            optimizer.zero_grad()
            nn.functional.l1_loss(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        expectation = model(x_test)
        result = {"expectation_MAE": float((expectation - y_test).abs().mean())}
        for count in sample_counts:
            model.encoder.swapout_samples = count
            averaged = model(x_test)
            gap = (averaged - expectation).abs().mean() / expectation.std()
            result[f"gap_{count}"] = float(gap)
            result[f"averaged_{count}_MAE"] = float((averaged - y_test).abs().mean())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probabilities", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--samples", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a small network: threads only contend
    results = {p: [run(p, s, args.samples, args.epochs) for s in args.seeds]
               for p in args.probabilities}
    print("| p_skip = p_residual | N | gap / std(prediction) | MAE, N passes | MAE, expectation |")
    print("|---|---|---|---|---|")
    for p, runs in results.items():
        expectation = mean_std([r["expectation_MAE"] for r in runs])
        for count in args.samples:
            gap = mean_std([r[f"gap_{count}"] for r in runs])
            averaged = mean_std([r[f"averaged_{count}_MAE"] for r in runs])
            print(f"| {p} | {count} | {gap} | {averaged} | {expectation} |")
    spread = statistics.mean(r["expectation_MAE"] for runs in results.values() for r in runs)
    print(f"\nmean expectation MAE {spread:.3f}; machine: {machine()}")
    save("swapout_inference", {"args": vars(args), "machine": machine(),
                               "results": {str(p): runs for p, runs in results.items()}})


if __name__ == "__main__":
    main()
