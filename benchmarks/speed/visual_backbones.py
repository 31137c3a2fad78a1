"""Speed and memory of the visual encoder's backbones: training and inference steps.

Times :class:`mmsent.models.Visual3DCNNEncoder` with the compact ``c3d`` network and
torchvision's ``r3d_18``, ``mc3_18`` and ``r2plus1d_18`` (random weights: nothing is
downloaded) on random clips of a given shape. A training step is forward, L1 loss
against random scores, backward and an SGD step; an inference step is a forward pass
without gradients. Raw results go to ``benchmarks/results/visual_backbones_<device>.json``.

    python benchmarks/speed/visual_backbones.py --device cuda --precision fp32 bf16
    python benchmarks/speed/visual_backbones.py --device cpu --shapes 8x32 --backbones c3d r3d_18

Shapes are ``<frames>x<size>``: ``8x32`` is the default dataset's clips, ``16x112``
what the torchvision networks were designed for (Kinetics clips).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

# Run as a file, a script sees only its own folder; the repository root makes `benchmarks` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import machine, save
from mmsent.models import Visual3DCNNEncoder
from mmsent.models.visual import TORCHVISION_BACKBONES

BACKBONES = ("c3d", *TORCHVISION_BACKBONES)
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work, so wall-clock times measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, device: torch.device, warmup: int, steps: int) -> float:
    """Seconds per step, after warm-up steps (cuDNN picks its algorithms in those).

    Args:
        step (Callable[[], None]): One step.
        device (torch.device): Where it runs.
        warmup (int): Untimed steps first.
        steps (int): Timed steps.

    Returns:
        float: Mean seconds per timed step.
    """
    for _ in range(warmup):
        step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - started) / steps


def measure(backbone: str, frames: int, size: int, batch: int, precision: str, device: torch.device,
            warmup: int, steps: int) -> dict:
    """Training and inference throughput of one backbone at one clip shape.

    Args:
        backbone (str): One of :data:`BACKBONES`.
        frames (int): Frames per clip.
        size (int): Frame height and width.
        batch (int): Clips per step.
        precision (str): ``"fp32"`` or ``"bf16"`` (autocast).
        device (torch.device): Where to run.
        warmup (int): Untimed steps before each measurement.
        steps (int): Timed steps per measurement.

    Returns:
        dict: Parameters, clips per second for training and inference, and the peak
        GPU memory of training in MiB (CUDA only).
    """
    torch.manual_seed(0)
    encoder = Visual3DCNNEncoder(backbone=backbone, out_dim=64).to(device)
    optimizer = torch.optim.SGD(encoder.parameters(), lr=1e-3, momentum=0.9)
    clips = torch.randn(batch, 3, frames, size, size, device=device)
    scores = torch.empty(batch, device=device).uniform_(-3, 3)
    # The scores come from a linear head on the embedding, as in a unimodal stage.
    head = torch.nn.Linear(64, 1).to(device)
    autocast = torch.autocast(device.type, dtype=DTYPES[precision], enabled=DTYPES[precision] is not None)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = torch.nn.functional.l1_loss(head(encoder(clips)).squeeze(-1).float(), scores)
        loss.backward()
        optimizer.step()

    def infer_step() -> None:
        with torch.no_grad(), autocast:
            encoder(clips)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    encoder.train()
    train = time_steps(train_step, device, warmup, steps)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    encoder.eval()
    infer = time_steps(infer_step, device, warmup, steps)
    return {"backbone": backbone, "frames": frames, "size": size, "batch": batch, "precision": precision,
            "parameters": sum(p.numel() for p in encoder.parameters()),
            "train_clips_per_s": batch / train, "infer_clips_per_s": batch / infer, "train_peak_MiB": peak}


def table(rows: list[dict]) -> str:
    """The results as a Markdown table."""
    header = ("| clip (frames x size) | backbone | precision | parameters | train clips/s | "
              "inference clips/s | train peak memory (MiB) |")
    lines = [header, "|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = "-" if r["train_peak_MiB"] is None else f"{r['train_peak_MiB']:.0f}"
        lines.append(f"| {r['frames']}x{r['size']} | {r['backbone']} | {r['precision']} | "
                     f"{r['parameters'] / 1e6:.2f} M | {r['train_clips_per_s']:.0f} | "
                     f"{r['infer_clips_per_s']:.0f} | {peak} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbones", nargs="+", choices=BACKBONES, default=list(BACKBONES))
    parser.add_argument("--shapes", nargs="+", default=["8x32", "16x112"], help="<frames>x<size>")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", nargs="+", choices=sorted(DTYPES), default=["fp32"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    options = parser.parse_args()
    device = torch.device(options.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rows = []
    for shape in options.shapes:
        frames, size = (int(v) for v in shape.split("x"))
        for precision in options.precision:
            for backbone in options.backbones:
                rows.append(measure(backbone, frames, size, options.batch_size, precision, device,
                                    options.warmup, options.steps))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    path = save(f"visual_backbones_{device.type}", {"machine": machine(), "options": vars(options),
                                                     "results": rows})
    print(f"\nmachine: {machine()}\n\n{table(rows)}\n\nraw results: {path}")


if __name__ == "__main__":
    main()
