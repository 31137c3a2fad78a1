"""The SaddlePointMonitor's cost with its checks firing, and a run where it meets a saddle.

``cost``: the quickstart text and audio stages (generated default dataset, seed 0) are
fitted alternately without the monitor and with one whose checks fire (``--every``
steps between scheduled checks, the monitor's other settings at their defaults unless
``--monitor-args`` says otherwise). Each check is timed by wrapping the monitor's check,
so the results give the cost per check, the checks per fit and the fit's extra time
(medians over the repetitions). The same command run against an older checkout of the
package measures that version (``--name`` keeps the results apart).

``demo``: a two-layer linear network from a small initialization, trained by full-batch
gradient descent, sits on the plateau around the origin, a strict saddle whose Hessian
eigenvalues are plus and minus the singular values of the input-output covariance. The
monitor (defaults, plateau detection only) checks it there and later; beside each check
the exact extreme eigenvalues of the full Hessian (``torch.autograd.functional.hessian``
on the same loss) are recorded.

    OMP_NUM_THREADS=1 python benchmarks/toolkit/saddle_monitor.py cost --repeats 3 --epochs 6 --every 50
    OMP_NUM_THREADS=1 python benchmarks/toolkit/saddle_monitor.py demo [--subsample none --name saddle_demo_full_batch]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

# Run as a file, a script sees only its own folder; the repository root makes `benchmarks` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import machine, save
from benchmarks.quickstart_stages import QUIET, configs

MONITOR = "--trainer.callbacks+=mmsent.callbacks.SaddlePointMonitor"
STAGE_CONFIGS = {"text": "1_text.yaml", "audio": "2_audio.yaml"}


def timed_fit(stage: str, extra: list[str], epochs: int, root: str) -> dict:
    """Fits one quickstart stage; returns the fit's seconds, the monitor's checks with
    the seconds each took, the steps trained and the best validation MAE."""
    from mmsent.callbacks import SaddlePointMonitor
    from mmsent.cli import build_cli

    cli = build_cli([*configs(STAGE_CONFIGS[stage]), "--seed_everything=0", *QUIET,
                     f"--trainer.max_epochs={epochs}", f"--trainer.default_root_dir={root}", *extra], run=False)
    monitors = [c for c in cli.trainer.callbacks if isinstance(c, SaddlePointMonitor)]
    check_seconds: list[float] = []
    for monitor in monitors:
        check = monitor._check

        def timed_check(*args, check=check, **kwargs):
            started = time.perf_counter()
            check(*args, **kwargs)
            check_seconds.append(time.perf_counter() - started)

        monitor._check = timed_check
    started = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = time.perf_counter() - started
    history = monitors[0].history if monitors else []
    for record, spent in zip(history, check_seconds, strict=False):
        record["seconds"] = spent
    return {"seconds": seconds, "steps": cli.trainer.global_step, "checks": history, "check_seconds": check_seconds,
            "val_MAE": float(cli.trainer.checkpoint_callback.best_model_score)}


def cost(args: argparse.Namespace) -> None:
    payload = {"epochs": args.epochs, "repeats": args.repeats, "every": args.every,
               "monitor_args": args.monitor_args, "machine": machine(),
               "date": datetime.date.today().isoformat(), "stages": {}}
    firing = [MONITOR, f"--trainer.callbacks.init_args.every_n_steps={args.every}",
              *[f"--trainer.callbacks.init_args.{a}" for a in args.monitor_args]]
    for stage in args.stages:
        runs: dict[str, list[dict]] = {"without": [], "monitor": []}
        for repeat in range(args.repeats):
            for name, extra in (("without", []), ("monitor", firing)):
                result = timed_fit(stage, extra, args.epochs, f"runs/bench_saddle/{args.name}/{stage}/{name}/{repeat}")
                runs[name].append(result)
                print(json.dumps({"stage": stage, "name": name, "repeat": repeat, "seconds": round(result["seconds"], 2),
                                  "checks": len(result["checks"]),
                                  "check_seconds": [round(s, 3) for s in result["check_seconds"]]}), flush=True)
        without = statistics.median(r["seconds"] for r in runs["without"])
        with_monitor = statistics.median(r["seconds"] for r in runs["monitor"])
        per_check = [s for r in runs["monitor"] for s in r["check_seconds"]]
        steps = runs["without"][0]["steps"]
        summary = {
            "steps": steps, "fit_seconds_without": without, "fit_seconds_with": with_monitor,
            "overhead_percent": 100 * (with_monitor / without - 1),
            "checks_per_fit": statistics.median(len(r["checks"]) for r in runs["monitor"]),
            "seconds_per_check": statistics.median(per_check) if per_check else None,
            "check_seconds_per_fit": statistics.median(sum(r["check_seconds"]) for r in runs["monitor"]),
            "seconds_per_step_without": without / steps,
            "hessian_products_per_check": statistics.median(
                c["hessian_products"] for r in runs["monitor"] for c in r["checks"]) if per_check else None,
            "verdicts": sorted({c["verdict"] for r in runs["monitor"] for c in r["checks"]}),
        }
        summary["check_share_percent"] = 100 * summary["check_seconds_per_fit"] / with_monitor
        payload["stages"][stage] = {"runs": runs, "summary": summary}
        save(args.name, payload)
        print(json.dumps({"stage": stage, **summary}), flush=True)


def demo(args: argparse.Namespace) -> None:
    import pytorch_lightning as pl
    from torch import nn
    from torch.utils.data import DataLoader

    from mmsent.callbacks import SaddlePointMonitor

    generator = torch.Generator().manual_seed(args.seed)
    inputs = torch.randn(args.samples, args.dim, generator=generator)
    target_map = torch.randn(args.dim, args.dim, generator=generator)
    targets = inputs @ target_map.T
    covariance = targets.T @ inputs / args.samples
    singular = torch.linalg.svdvals(covariance.double())

    class DeepLinear(pl.LightningModule):
        """y = W2 W1 x with a small initialization, mean squared error over the outputs."""

        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Linear(args.dim, args.dim, bias=False)
            self.second = nn.Linear(args.dim, args.dim, bias=False)
            with torch.no_grad():
                for layer in (self.first, self.second):
                    layer.weight.copy_(args.init * torch.randn(layer.weight.shape, generator=generator))

        def compute_loss(self, batch: dict) -> torch.Tensor:
            return 0.5 * (self.second(self.first(batch["x"])) - batch["y"]).pow(2).sum(1).mean()

        def training_step(self, batch, batch_idx):
            return self.compute_loss(batch)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=args.lr)

    class ExactHessian(pl.Callback):
        """After each check, the full Hessian's eigenvalues at the same point, on the
        same samples (the monitor's fixed subsample)."""

        def __init__(self, monitor: SaddlePointMonitor) -> None:
            self.monitor, self.seen, self.exact = monitor, 0, []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if len(self.monitor.history) == self.seen:
                return
            self.seen = len(self.monitor.history)
            checked = batch if self.monitor._check_batch is None else self.monitor._check_batch
            x, y = checked["x"], checked["y"]
            shapes = [p.shape for p in module.parameters()]
            flat = torch.cat([p.detach().flatten() for p in module.parameters()]).double()

            def loss_of(vector):
                first, second = vector.split([s.numel() for s in shapes])
                prediction = x.double() @ first.view(shapes[0]).T @ second.view(shapes[1]).T
                return 0.5 * (prediction - y.double()).pow(2).sum(1).mean()

            eigenvalues = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss_of, flat))
            gradient = torch.func.grad(loss_of)(flat)
            self.exact.append({"step": self.monitor.history[-1]["step"], "lambda_min": float(eigenvalues[0]),
                               "lambda_max": float(eigenvalues[-1]), "gradient_norm": float(gradient.norm()),
                               "eigenvalues": eigenvalues.tolist()})

    monitor = SaddlePointMonitor(window=args.window, max_overhead=args.max_overhead, subsample=args.subsample)
    exact = ExactHessian(monitor)
    loader = DataLoader([{"x": inputs, "y": targets}], batch_size=None)
    losses: list[float] = []

    class LossCurve(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))

    trainer = pl.Trainer(max_epochs=args.steps, callbacks=[monitor, exact, LossCurve()], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(DeepLinear(), loader)
    payload = {"dim": args.dim, "samples": args.samples, "init": args.init, "lr": args.lr, "steps": args.steps,
               "window": args.window, "seed": args.seed, "max_overhead": args.max_overhead,
               "subsample": args.subsample, "machine": machine(),
               "date": datetime.date.today().isoformat(),
               "origin_eigenvalues_expected": sorted([*(-singular).tolist(), *singular.tolist()]),
               "loss_curve": losses, "checks": monitor.history, "exact": exact.exact}
    for record in payload["checks"]:
        record.pop("eigenvector_min", None)
    save(args.name, payload)
    print("singular values of the input-output covariance:", [round(s, 4) for s in singular.tolist()])
    print(f"loss: start {losses[0]:.4f}, step 100 {losses[100]:.4f}, end {losses[-1]:.6f}")
    for record, truth in zip(monitor.history, exact.exact, strict=True):
        print(json.dumps({"step": record["step"], "loss": round(record["loss"], 5),
                          "verdict": record["verdict"], "reason": record["verdict_reason"],
                          "lambda_min": round(record["lambda_min"], 5), "exact_min": round(truth["lambda_min"], 5),
                          "lambda_max": round(record["lambda_max"], 5), "exact_max": round(truth["lambda_max"], 5),
                          "gradient_norm": f"{record['gradient_norm']:.3g}",
                          "exact_gradient_norm": f"{truth['gradient_norm']:.3g}",
                          "products": record["hessian_products"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    cost_parser = commands.add_parser("cost", help="fit time with and without the monitor's checks firing")
    cost_parser.add_argument("--stages", nargs="+", default=["text", "audio"], choices=sorted(STAGE_CONFIGS))
    cost_parser.add_argument("--repeats", type=int, default=3)
    cost_parser.add_argument("--epochs", type=int, default=6)
    cost_parser.add_argument("--every", type=int, default=50, help="steps between scheduled checks")
    cost_parser.add_argument("--monitor-args", nargs="*", default=[], help="e.g. max_overhead=null")
    cost_parser.add_argument("--name", default="saddle_monitor", help="results file name")
    demo_parser = commands.add_parser("demo", help="a two-layer linear network through its origin saddle")
    demo_parser.add_argument("--dim", type=int, default=3)
    demo_parser.add_argument("--samples", type=int, default=256)
    demo_parser.add_argument("--init", type=float, default=1e-6)
    demo_parser.add_argument("--lr", type=float, default=0.01)
    demo_parser.add_argument("--steps", type=int, default=3000)
    demo_parser.add_argument("--window", type=int, default=20)
    demo_parser.add_argument("--seed", type=int, default=0)
    demo_parser.add_argument("--max-overhead", type=lambda v: None if v == "none" else float(v), default=0.05,
                             help="the monitor's max_overhead ('none': every due check runs)")
    demo_parser.add_argument("--subsample", type=lambda v: None if v == "none" else int(v), default=16,
                             help="the monitor's subsample ('none': the whole batch)")
    demo_parser.add_argument("--name", default="saddle_demo", help="results file name")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cost(args) if args.command == "cost" else demo(args)


if __name__ == "__main__":
    main()
