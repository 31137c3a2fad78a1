"""Optimizers, each at its own best learning rate, on the text stage and on stage 5.

For each optimizer (SGD, SGD with momentum 0.9, Nesterov, Adam, RMSprop, Adadelta), four or
five learning rates are tried with seed 0; the one with the lowest validation MAE is then run
with the other seeds, and the table reports that rate over all seeds. Stage 1 (text)
starts from scratch; stage 5 fine-tunes everything from a stage 4 checkpoint
(``--fusion-checkpoint``, e.g. one that ``benchmarks/cycle_fill.py`` trained) with one
rate for every parameter group (``param_groups`` off, no schedule) and without
ModalitySelection. Raw results and every run's logged curves go to
``benchmarks/results/optimizers.json``; the curves of each optimizer at its chosen rate
(seed 0) to ``benchmarks/figures/optimizers.png``.

    OMP_NUM_THREADS=1 python benchmarks/optimizers.py --fusion-checkpoint runs/.../best.ckpt
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
from pathlib import Path

import torch
from common import REPO, callbacks_without, fit_and_test, machine, mean_std, save
from quickstart_stages import QUICKSTART, QUIET, configs

# Every setting is explicit: a stage config's own SGD arguments (5_finetune.yaml's
# Nesterov momentum) would otherwise carry over into the plain SGD rows.
OPTIMIZERS = {
    "SGD": ("torch.optim.SGD", {"momentum": 0.0, "nesterov": False}),
    "momentum": ("torch.optim.SGD", {"momentum": 0.9, "nesterov": False}),
    "Nesterov": ("torch.optim.SGD", {"momentum": 0.9, "nesterov": True}),
    "Adam": ("torch.optim.Adam", {}),
    "RMSprop": ("torch.optim.RMSprop", {}),
    "Adadelta": ("torch.optim.Adadelta", {}),
}
RATES = {
    "text": {"SGD": [0.01, 0.03, 0.1, 0.3, 1.0], "momentum": [0.003, 0.01, 0.03, 0.1, 0.3],
             "Nesterov": [0.003, 0.01, 0.03, 0.1, 0.3], "Adam": [3e-4, 1e-3, 3e-3, 1e-2],
             "RMSprop": [3e-4, 1e-3, 3e-3, 1e-2], "Adadelta": [0.3, 1.0, 3.0, 10.0, 30.0]},
    "finetune": {"SGD": [0.001, 0.003, 0.01, 0.03, 0.1], "momentum": [0.0001, 0.0003, 0.001, 0.003, 0.01],
                 "Nesterov": [0.0001, 0.0003, 0.001, 0.003, 0.01], "Adam": [3e-5, 1e-4, 3e-4, 1e-3],
                 "RMSprop": [1e-5, 3e-5, 1e-4, 3e-4], "Adadelta": [0.1, 0.3, 1.0, 3.0]},
}


def stage_args(stage: str, fusion_checkpoint: str | None) -> list[str]:
    """list[str]: The stage's configs and overrides shared by every optimizer."""
    if stage == "text":
        return configs("1_text.yaml")
    files = [QUICKSTART / "base.yaml", QUICKSTART / "4_fusion.yaml", QUICKSTART / "5_finetune.yaml"]
    return [*configs("4_fusion.yaml", "5_finetune.yaml"), callbacks_without(files, "ModalitySelection"),
            "--model.init_args.param_groups=null", f"--model.init_args.init_checkpoint={fusion_checkpoint}"]


def curves(root: str) -> dict[str, list]:
    """The run's logged training loss (per logging step) and validation MAE (per epoch)."""
    (metrics,) = sorted(Path(root).rglob("metrics.csv"))[-1:]
    rows = list(csv.DictReader(metrics.read_text().splitlines()))
    train = [(int(r["step"]), float(r["train/loss"])) for r in rows if r.get("train/loss")]
    val = [(int(r["epoch"]), float(r["val/MAE"])) for r in rows if r.get("val/MAE")]
    return {"curve_train_loss": train, "curve_val_MAE": val}


def run(stage: str, name: str, lr: float, seed: int, epochs: int, fusion_checkpoint: str | None) -> dict:
    class_path, extra = OPTIMIZERS[name]
    optimizer = json.dumps({"class_path": class_path, "init_args": {"lr": lr, **extra}})
    root = f"runs/bench_opt/{stage}/{name}/{lr:g}/{seed}"
    result = fit_and_test([*stage_args(stage, fusion_checkpoint), f"--seed_everything={seed}", *QUIET,
                           f"--trainer.max_epochs={epochs}", f"--model.init_args.optimizer={optimizer}",
                           f"--trainer.default_root_dir={root}"])
    return {"stage": stage, "optimizer": name, "lr": lr, "seed": seed, **result, **curves(root)}


def figure(payload: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 8))
    axes = fig.subplots(2, 2)
    for column, stage in enumerate(payload["best_lr"]):
        for name, lr in payload["best_lr"][stage].items():
            (record,) = [r for r in payload["runs"] if r["stage"] == stage and r["optimizer"] == name
                         and r["lr"] == lr and r["seed"] == payload["seeds"][0]]
            if record["curve_train_loss"]:
                steps, losses = zip(*record["curve_train_loss"], strict=True)
                axes[0, column].plot(steps, losses, label=f"{name} lr={lr:g}")
            epochs, maes = zip(*record["curve_val_MAE"], strict=True)
            axes[1, column].plot(epochs, maes, marker="o", label=f"{name} lr={lr:g}")
        axes[0, column].set_title(f"{stage}: training loss (L1), seed {payload['seeds'][0]}")
        axes[0, column].set_xlabel("step")
        axes[1, column].set_title(f"{stage}: validation MAE")
        axes[1, column].set_xlabel("epoch")
        axes[0, column].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fusion-checkpoint", help="stage 4 checkpoint that stage 5 starts from")
    parser.add_argument("--stages", nargs="+", default=["text", "finetune"], choices=["text", "finetune"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    payload = {"stages": args.stages, "epochs": args.epochs, "seeds": args.seeds, "rates": RATES,
               "fusion_checkpoint": args.fusion_checkpoint, "machine": machine(),
               "date": datetime.date.today().isoformat(), "runs": [], "best_lr": {}}
    earlier = REPO / "benchmarks" / "results" / "optimizers.json"
    if earlier.exists():  # a stage not rerun now keeps its earlier runs, so stages can run apart
        kept = json.loads(earlier.read_text())
        for stage in set(kept.get("best_lr", {})) - set(args.stages):
            payload["runs"] += [r for r in kept["runs"] if r["stage"] == stage]
            payload["best_lr"][stage] = kept["best_lr"][stage]
            payload["stages"] = [stage, *payload["stages"]]
    for stage in args.stages:
        sweep = {}
        for name in OPTIMIZERS:
            for lr in RATES[stage][name]:
                record = run(stage, name, lr, args.seeds[0], args.epochs, args.fusion_checkpoint)
                payload["runs"].append(record)
                sweep[(name, lr)] = record["val_MAE"]
                print(json.dumps({"stage": stage, "optimizer": name, "lr": lr, "best_val_MAE": sweep[(name, lr)],
                                  "seconds": record["seconds"]}), flush=True)
                save("optimizers", payload)
        payload["best_lr"][stage] = {name: min(RATES[stage][name], key=lambda lr, n=name: sweep[(n, lr)])
                                     for name in OPTIMIZERS}
        for name, lr in payload["best_lr"][stage].items():
            for seed in args.seeds[1:]:
                payload["runs"].append(run(stage, name, lr, seed, args.epochs, args.fusion_checkpoint))
                save("optimizers", payload)
        figure(payload, REPO / "benchmarks" / "figures" / "optimizers.png")
    for stage in payload["stages"]:
        print(f"\n{stage}: | optimizer | chosen lr | val MAE | test MAE | test Corr | seconds |")
        for name, lr in payload["best_lr"][stage].items():
            runs = [r for r in payload["runs"] if r["stage"] == stage and r["optimizer"] == name and r["lr"] == lr]
            cells = [mean_std([r[k] for r in runs]) for k in ("val_MAE", "MAE", "Corr", "seconds")]
            print(f"| {name} | {lr:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
