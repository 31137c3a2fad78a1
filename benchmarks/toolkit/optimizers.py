"""Optimizers, each at its own best learning rate, on the text stage and on stage 5.

For each optimizer (SGD, SGD with momentum 0.9, Nesterov, Adam, RMSprop, Adadelta, Adagrad),
four or more learning rates are tried with seed 0; the one with the lowest validation MAE is
then run with the other seeds, and the table reports that rate over all seeds. With
``--selection-seeds`` the rates are instead tried with those seeds only (lowest mean
validation MAE wins) and the chosen rate is reported over every ``--seeds`` seed, so no
reported seed took part in the choice. The text stage
starts from scratch; the fine-tuning stage trains everything from a fusion checkpoint
(``--fusion-checkpoint``) with one rate for every parameter group (``param_groups`` off,
no schedule) and without the selection. The stages' configs come from a pipeline
file (``--pipeline``, the quickstart by default; ``pipelines/mosi.yaml`` for CMU-MOSI);
arguments after ``--`` go to every run (e.g. data folders).

Raw results and every run's logged curves go to ``benchmarks/results/optimizers.json``
(``optimizers_<pipeline>.json`` for another pipeline); the curves of each optimizer at
its chosen rate (seed 0) to ``benchmarks/figures/optimizers.png`` (likewise named). A run
already in that file for the same stage, optimizer, rate and seed, with the same epochs
and starting checkpoint, is kept rather than repeated, so widening a grid runs only the
added rates (and the other seeds of a newly chosen rate).

    OMP_NUM_THREADS=1 python benchmarks/toolkit/optimizers.py --fusion-checkpoint runs/.../selected.ckpt
    OMP_NUM_THREADS=1 python benchmarks/toolkit/optimizers.py --pipeline pipelines/mosi.yaml --stages finetune --epochs 10 \
        --fusion-checkpoint runs/mosi/fusion/checkpoints/selected.ckpt -- --data.cache_dir=/path/to/cache
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import statistics
import sys
from pathlib import Path

import torch

# Run as a file, a script sees only its own folder; the repository root makes `benchmarks` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import (
    REPO,
    RESULTS,
    fit_and_test,
    machine,
    mean_std,
    save,
)
from benchmarks.quickstart_stages import QUIET
from mmsent.pipeline import Pipeline, load_pipeline

# Every setting is explicit: a stage config's own SGD arguments (5_finetune.yaml's
# Nesterov momentum) would otherwise carry over into the plain SGD rows.
OPTIMIZERS = {
    "SGD": ("torch.optim.SGD", {"momentum": 0.0, "nesterov": False}),
    "momentum": ("torch.optim.SGD", {"momentum": 0.9, "nesterov": False}),
    "Nesterov": ("torch.optim.SGD", {"momentum": 0.9, "nesterov": True}),
    "Adam": ("torch.optim.Adam", {}),
    "RMSprop": ("torch.optim.RMSprop", {}),
    "Adadelta": ("torch.optim.Adadelta", {}),
    "Adagrad": ("torch.optim.Adagrad", {}),
}
RATES = {
    "text": {"SGD": [0.01, 0.03, 0.1, 0.3, 1.0], "momentum": [0.003, 0.01, 0.03, 0.1, 0.3],
             "Nesterov": [0.003, 0.01, 0.03, 0.1, 0.3], "Adam": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
             "RMSprop": [3e-4, 1e-3, 3e-3, 1e-2], "Adadelta": [0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0],
             "Adagrad": [3e-3, 1e-2, 3e-2, 1e-1]},
    "finetune": {"SGD": [0.001, 0.003, 0.01, 0.03, 0.1], "momentum": [0.0001, 0.0003, 0.001, 0.003, 0.01],
                 "Nesterov": [0.0001, 0.0003, 0.001, 0.003, 0.01], "Adam": [3e-5, 1e-4, 3e-4, 1e-3],
                 "RMSprop": [1e-5, 3e-5, 1e-4, 3e-4], "Adadelta": [0.1, 0.3, 1.0, 3.0],
                 "Adagrad": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]},
}
# The text stage for its own 12 epochs: the 3-epoch sweep's rates around each optimizer's
# best there (the SGD family's whole range: it stayed at the trivial predictor), and Adagrad's;
# Nesterov 1.0 and RMSprop 1e-2 added when the 12-epoch choice fell on the grid's top.
GRIDS = {"text12": {"SGD": [0.01, 0.03, 0.1, 0.3, 1.0], "momentum": [0.003, 0.01, 0.03, 0.1, 0.3],
                    "Nesterov": [0.03, 0.1, 0.3, 1.0], "Adam": [1e-3, 3e-3, 1e-2, 3e-2],
                    "RMSprop": [3e-4, 1e-3, 3e-3, 1e-2], "Adadelta": [10.0, 30.0, 100.0],
                    "Adagrad": [3e-3, 1e-2, 3e-2, 1e-1]},
         # Stage 5 from today's stage 4: three rates around each optimizer's seed-0 choice of the
         # 2026-11-30 sweep (Adagrad, new, four), widened where a choice falls on a grid's end.
         "finetune3": {"SGD": [0.003, 0.01, 0.03], "momentum": [0.0003, 0.001, 0.003],
                       "Nesterov": [0.0003, 0.001, 0.003], "Adam": [3e-5, 1e-4, 3e-4],
                       "RMSprop": [1e-5, 3e-5, 1e-4], "Adadelta": [0.3, 1.0, 3.0],
                       "Adagrad": [3e-4, 1e-3, 3e-3, 1e-2]},
         # Stage 5 for its own 12 epochs: finetune3 widened upwards until no optimizer's
         # chosen rate lies at the top of its grid (docs/benchmarks/toolkit.md).
         "finetune12": {"SGD": [0.003, 0.01, 0.03, 0.1, 0.3], "momentum": [0.0003, 0.001, 0.003, 0.01, 0.03],
                        "Nesterov": [0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3],
                        "Adam": [3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2],
                        "RMSprop": [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2], "Adadelta": [0.3, 1.0, 3.0, 10.0, 30.0],
                        "Adagrad": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]}}
# CMU-MOSI's fusion model starts close to its best: Adam's and RMSprop's best rates there
# lie below the quickstart's grids.
PIPELINE_RATES = {
    "mosi": {"finetune": {**RATES["finetune"], "Adam": [3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3],
                          "RMSprop": [1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4],
                          "Adadelta": [0.1, 0.3, 1.0, 3.0, 10.0, 30.0]}},
}
STAGES = ("text", "finetune")
TABLE_METRICS = ("val_MAE", "MAE", "Corr", "Non0_acc_2", "seconds")


def stage_args(pipeline: Pipeline, stage: str, fusion_checkpoint: str | None) -> list[str]:
    """The stage's configs and overrides shared by every optimizer.

    Args:
        pipeline (Pipeline): The pipeline file the stage's configs come from.
        stage (str): ``"text"`` (from scratch) or ``"finetune"`` (from ``fusion_checkpoint``).
        fusion_checkpoint (str | None): The checkpoint the fine-tuning stage starts from.

    Returns:
        list[str]: ``mmsent fit`` arguments.
    """
    files = pipeline.stage(stage).configs
    args = [arg for config in files for arg in ("-c", str(config))] + pipeline.args + pipeline.stage(stage).args
    if stage == "text":
        return args
    return [*args, "--selection=null", "--model.init_args.param_groups=null",
            f"--model.init_args.init_checkpoint={fusion_checkpoint}"]


def curves(root: str) -> dict[str, list]:
    """The run's logged training loss (per logging step) and validation MAE (per epoch)."""
    (metrics,) = sorted(Path(root).rglob("metrics.csv"))[-1:]
    rows = list(csv.DictReader(metrics.read_text().splitlines()))
    train = [(int(r["step"]), float(r["train/loss"])) for r in rows if r.get("train/loss")]
    val = [(int(r["epoch"]), float(r["val/MAE"])) for r in rows if r.get("val/MAE")]
    return {"curve_train_loss": train, "curve_val_MAE": val}


def run(base: list[str], stage: str, name: str, lr: float, seed: int, epochs: int, runs: str) -> dict:
    """Fits and tests one optimizer at one rate and seed.

    Args:
        base (list[str]): The stage's arguments (:func:`stage_args` and the command's extras).
        stage (str): The stage's name, for the record and the run folder.
        name (str): A key of :data:`OPTIMIZERS`.
        lr (float): The learning rate.
        seed (int): ``seed_everything``.
        epochs (int): ``trainer.max_epochs``.
        runs (str): Folder under which the run's logs and checkpoints go.

    Returns:
        dict: The test metrics and validation MAE of :func:`common.fit_and_test`, with the
        run's key and its logged curves.
    """
    class_path, extra = OPTIMIZERS[name]
    optimizer = json.dumps({"class_path": class_path, "init_args": {"lr": lr, **extra}})
    root = f"{runs}/{stage}/{name}/{lr:g}/{seed}"
    result = fit_and_test([*base, f"--seed_everything={seed}", *QUIET, f"--trainer.max_epochs={epochs}",
                           f"--model.init_args.optimizer={optimizer}", f"--trainer.default_root_dir={root}"])
    return {"stage": stage, "optimizer": name, "lr": lr, "seed": seed, **result, **curves(root)}


def reusable_runs(earlier: dict, epochs: int, fusion_checkpoint: str | None) -> dict[tuple, dict]:
    """An earlier results file's runs that this command would repeat exactly.

    Args:
        earlier (dict): The earlier payload (empty when there is none).
        epochs (int): This command's epochs.
        fusion_checkpoint (str | None): This command's stage 5 start.

    Returns:
        dict[tuple, dict]: ``(stage, optimizer, lr, seed)`` -> record; the fine-tuning
        stage's runs only when they started from the same checkpoint.
    """
    if earlier.get("epochs") != epochs:
        return {}
    same_start = earlier.get("fusion_checkpoint") == fusion_checkpoint
    return {(r["stage"], r["optimizer"], r["lr"], r["seed"]): r for r in earlier.get("runs", [])
            if r["stage"] == "text" or same_start}


def figure(payload: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    stages = list(payload["best_lr"])
    fig = Figure(figsize=(6 * len(stages), 8))
    axes = fig.subplots(2, len(stages), squeeze=False)
    for column, stage in enumerate(stages):
        for name, lr in payload["best_lr"][stage].items():
            first = [payload["seeds"][0], *(payload.get("selection_seeds") or [])]
            record = next(r for seed in first for r in payload["runs"] if r["stage"] == stage
                          and r["optimizer"] == name and r["lr"] == lr and r["seed"] == seed)
            if record["curve_train_loss"]:
                steps, losses = zip(*record["curve_train_loss"], strict=True)
                axes[0, column].plot(steps, losses, label=f"{name} lr={lr:g}")
            epochs, maes = zip(*record["curve_val_MAE"], strict=True)
            axes[1, column].plot(epochs, maes, marker="o", label=f"{name} lr={lr:g}")
        axes[0, column].set_title(f"{payload['pipeline']} {stage}: training loss (L1), seed {payload['seeds'][0]}")
        axes[0, column].set_xlabel("step")
        axes[1, column].set_title(f"{payload['pipeline']} {stage}: validation MAE")
        axes[1, column].set_xlabel("epoch")
        axes[0, column].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default=str(REPO / "pipelines" / "quickstart.yaml"),
                        help="pipeline file whose stages' configs are used")
    parser.add_argument("--fusion-checkpoint", help="fusion checkpoint that the fine-tuning stage starts from")
    parser.add_argument("--stages", nargs="+", default=["text", "finetune"], choices=STAGES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--name", help="results file name (default: optimizers[_<pipeline>])")
    parser.add_argument("--chosen-from", help="an earlier results file: run its chosen rates only, no sweep")
    parser.add_argument("--selection-seeds", type=int, nargs="+",
                        help="seeds that choose the rates (none of them reported); default: the first of --seeds")
    parser.add_argument("--grid", choices=sorted(GRIDS), help="a named grid of rates for every stage run")
    parser.add_argument("--report", nargs="+", choices=sorted(OPTIMIZERS),
                        help="optimizers run over --seeds at their chosen rate (default: all)")
    parser.add_argument("extra", nargs="*", help="after --: arguments added to every run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipeline = load_pipeline(args.pipeline)
    name = args.name or ("optimizers" if pipeline.name == "quickstart" else f"optimizers_{pipeline.name}")
    chosen = json.loads(Path(args.chosen_from).read_text())["best_lr"] if args.chosen_from else {}
    runs = "runs/bench_opt" if pipeline.name == "quickstart" else f"runs/bench_opt_{pipeline.name}"
    runs = f"runs/bench_{args.name}" if args.name else runs
    rates = {**RATES, **PIPELINE_RATES.get(pipeline.name, {})}
    if args.grid:
        rates = {stage: GRIDS[args.grid] for stage in rates}
    payload = {"pipeline": pipeline.name, "stages": args.stages, "epochs": args.epochs, "seeds": args.seeds,
               "selection_seeds": args.selection_seeds, "grid": args.grid, "report": args.report,
               "rates": rates, "fusion_checkpoint": args.fusion_checkpoint, "extra": args.extra,
               "machine": machine(), "date": datetime.date.today().isoformat(), "runs": [], "best_lr": {}}
    earlier = json.loads((RESULTS / f"{name}.json").read_text()) if (RESULTS / f"{name}.json").exists() else {}
    done = reusable_runs(earlier, args.epochs, args.fusion_checkpoint)
    payload["runs"] = [r for r in done.values() if r["stage"] in args.stages]
    for stage in STAGES:  # a stage not rerun keeps its runs
        if stage in earlier.get("best_lr", {}) and stage not in args.stages:
            payload["runs"] += [r for r in earlier["runs"] if r["stage"] == stage]
            payload["best_lr"][stage] = earlier["best_lr"][stage]
    payload["stages"] = [stage for stage in STAGES if stage in args.stages or stage in payload["best_lr"]]

    def measured(base: list[str], stage: str, optimizer: str, lr: float, seed: int) -> dict:
        if (stage, optimizer, lr, seed) in done:
            return done[(stage, optimizer, lr, seed)]
        record = done[(stage, optimizer, lr, seed)] = run(base, stage, optimizer, lr, seed, args.epochs, runs)
        print(json.dumps({"stage": stage, "optimizer": optimizer, "lr": lr, "seed": seed,
                          "best_val_MAE": record["val_MAE"], "seconds": record["seconds"]}), flush=True)
        payload["runs"].append(record)
        save(name, payload)  # after every run, so that an interrupted benchmark keeps what it measured
        return record

    for stage in args.stages:
        base = [*stage_args(pipeline, stage, args.fusion_checkpoint), *args.extra]
        if stage in chosen:
            payload["best_lr"][stage] = chosen[stage]
            seeds = args.seeds
        else:
            choosing = args.selection_seeds or args.seeds[:1]
            sweep = {(optimizer, lr): statistics.mean(measured(base, stage, optimizer, lr, seed)["val_MAE"]
                                                      for seed in choosing)
                     for optimizer in OPTIMIZERS for lr in rates[stage][optimizer]}
            payload["best_lr"][stage] = {optimizer: min(rates[stage][optimizer],
                                                        key=lambda lr, o=optimizer: sweep[(o, lr)])
                                         for optimizer in OPTIMIZERS}
            seeds = args.seeds if args.selection_seeds else args.seeds[1:]
        for seed in seeds:  # seed by seed, so that an interrupted run leaves every optimizer paired
            for optimizer, lr in payload["best_lr"][stage].items():
                if args.report is None or optimizer in args.report:
                    measured(base, stage, optimizer, lr, seed)
    payload["best_lr"] = {stage: payload["best_lr"][stage] for stage in payload["stages"]}
    save(name, payload)
    figure(payload, REPO / "benchmarks" / "figures" / f"{name}.png")
    print(table(payload))


def table(payload: dict) -> str:
    """The Markdown table of each optimizer at its chosen rate, over the seeds.

    Args:
        payload (dict): What :func:`main` saved.

    Returns:
        str: One table per stage.
    """
    lines = []
    for stage in payload["stages"]:
        lines += ["", f"{stage}: | optimizer | chosen lr | " + " | ".join(TABLE_METRICS) + " |"]
        for optimizer, lr in payload["best_lr"][stage].items():
            runs = [r for r in payload["runs"] if r["stage"] == stage and r["optimizer"] == optimizer
                    and r["lr"] == lr and r["seed"] in payload["seeds"]]
            note = ""
            if not runs:  # not reported: its selection runs
                runs = [r for r in payload["runs"] if r["stage"] == stage and r["optimizer"] == optimizer
                        and r["lr"] == lr]
                note = " (selection seeds only)"
            cells = [mean_std([r[k] for r in runs]) for k in TABLE_METRICS]
            lines.append(f"| {optimizer}{note} | {lr:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
