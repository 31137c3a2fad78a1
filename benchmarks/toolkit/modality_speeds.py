"""Do modalities learn at different speeds, and do per-modality learning rates in
stage 5 beat one shared rate?

1. Learning curves: the validation MAE of each unimodal stage against epochs and
   against gradient steps, read from the CSV logs of the unimodal runs of
   ``benchmarks/quality/quickstart_seeds.py`` (``--seed-runs runs/quickstart_seeds``) or of
   ``benchmarks/toolkit/cycle_fill.py`` (``runs/bench_cycle/<modality>/<seed>``), drawn to
   ``benchmarks/figures/modality_speeds.png``.
2. Stage 5 from each seed's stage 4 checkpoint of the same runs, with the per-modality
   rates and schedules of ``5_finetune.yaml`` against every group at one shared rate
   (``--shared-rates``, by default the config's audio/fusion rate and its text rate)
   with the same cosine schedule; no selection, so each variant's own result.
   With ``--fusion-checkpoint`` every stage-5 seed starts from that one stage-4 model
   instead (no learning curves read), so the seeds pair the variants on stage 5's own
   randomness; runs already in the results file (``--name``) are kept, not repeated.

    OMP_NUM_THREADS=1 python benchmarks/toolkit/modality_speeds.py --seed-runs runs/quickstart_seeds \
        --seeds 0 1 2 --epochs 12
    OMP_NUM_THREADS=1 python benchmarks/toolkit/modality_speeds.py --name stage5_rates --epochs 12 \
        --fusion-checkpoint runs/quickstart/fusion/checkpoints/selected.ckpt --seeds 0 1 2 3 4 5 6 7 8 9
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import sys
from pathlib import Path

import torch

# Run as a file, a script sees only its own folder; the repository root makes `benchmarks` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import REPO, RESULTS, fit_and_test, machine, mean_std, save
from benchmarks.quickstart_stages import QUIET, configs

RUNS = Path("runs/bench_cycle")
PARTS = ("text", "audio", "video", "fusion")


def stage_folder(stage: str, seed: int, seed_runs: Path | None) -> Path:
    """Where a seed's run of a stage is: ``cycle_fill.py``'s layout, or the
    ``quickstart_seeds.py`` layout (``<seed_runs>/seed<N>/<stage>``) when given."""
    return seed_runs / f"seed{seed}" / stage if seed_runs else RUNS / stage / str(seed)


def learning_curves(modality: str, seed: int, seed_runs: Path | None = None) -> dict[str, list]:
    """The unimodal run's validation MAE per epoch, with the step count at each."""
    (metrics,) = sorted(stage_folder(modality, seed, seed_runs).rglob("metrics.csv"))[-1:]
    rows = [r for r in csv.DictReader(metrics.read_text().splitlines()) if r.get("val/MAE")]
    if len(rows) > 1 and int(rows[-1]["step"]) - int(rows[-2]["step"]) <= 1:
        rows = rows[:-1]  # the pipeline's evaluation of the chosen checkpoint after training
    return {"epoch": [int(r["epoch"]) + 1 for r in rows], "step": [int(r["step"]) + 1 for r in rows],
            "val_MAE": [float(r["val/MAE"]) for r in rows]}


def curve_figure(curves: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    by_epoch, by_step = fig.subplots(1, 2, sharey=True)
    for colour, modality in zip(("C0", "C1", "C2"), ("text", "audio", "video"), strict=True):
        for index, curve in enumerate(curves[modality]):
            label = modality if index == 0 else None
            by_epoch.plot(curve["epoch"], curve["val_MAE"], colour, marker="o", alpha=0.7, label=label)
            by_step.plot(curve["step"], curve["val_MAE"], colour, marker="o", alpha=0.7, label=label)
    by_epoch.set_xlabel("epoch")
    by_step.set_xlabel("gradient steps")
    by_epoch.set_ylabel("validation MAE (one line per seed)")
    by_epoch.legend()
    fig.suptitle("Unimodal stages on the generated default dataset")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def fusion_checkpoint(seed: int, seed_runs: Path | None = None) -> str:
    folder = stage_folder("fusion", seed, seed_runs)
    selected = sorted(folder.rglob("selected.ckpt"))
    (path,) = (selected or sorted(folder.rglob("best-*.ckpt")))[-1:]
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3, help="stage 5 epochs")
    parser.add_argument("--seed-runs", type=Path, help="a quickstart_seeds.py output folder to start from")
    parser.add_argument("--shared-rates", type=float, nargs="+", default=[0.02, 0.1],
                        help="the one rate of every group in the shared variants")
    parser.add_argument("--fusion-checkpoint", help="one stage-4 checkpoint that every seed's stage 5 starts from")
    parser.add_argument("--name", default="modality_speeds", help="results file name")
    args = parser.parse_args()
    torch.set_num_threads(1)
    curves = {}
    if not args.fusion_checkpoint:
        curves = {m: [learning_curves(m, seed, args.seed_runs) for seed in args.seeds]
                  for m in ("text", "audio", "video")}
        curve_figure(curves, REPO / "benchmarks" / "figures" / "modality_speeds.png")
    saved = RESULTS / f"{args.name}.json"
    earlier = json.loads(saved.read_text()) if saved.is_file() else {}
    same = (earlier.get("epochs"), earlier.get("fusion_checkpoint")) == (args.epochs, args.fusion_checkpoint)
    payload = {"seeds": args.seeds, "epochs": args.epochs, "fusion_checkpoint": args.fusion_checkpoint,
               "curves": curves, "machine": machine(), "date": datetime.date.today().isoformat(),
               "runs": earlier.get("runs", []) if same else []}
    done = {(r["variant"], r["seed"]) for r in payload["runs"]}
    save(args.name, payload)
    stage = [*configs("4_fusion.yaml", "5_finetune.yaml"), "--selection=null", *QUIET]

    def shared(lr: float) -> list[str]:
        group = {"lr": lr, "schedule": {"name": "cosine", "epochs": args.epochs}}
        return [f"--model.init_args.param_groups={json.dumps({part: group for part in PARTS})}"]

    variants = {"per_modality": [], **{f"shared_{lr:g}": shared(lr) for lr in args.shared_rates}}
    for seed in args.seeds:
        for name, extra in variants.items():
            if (name, seed) in done:
                continue
            start = args.fusion_checkpoint or fusion_checkpoint(seed, args.seed_runs)
            result = fit_and_test([*stage, f"--seed_everything={seed}", f"--trainer.max_epochs={args.epochs}",
                                   f"--model.init_args.init_checkpoint={start}",
                                   f"--trainer.default_root_dir=runs/bench_rates/{name}/{seed}", *extra])
            payload["runs"].append({"variant": name, "seed": seed, **result})
            save(args.name, payload)
            print(json.dumps({"variant": name, "seed": seed, "MAE": result["MAE"], "val_MAE": result["val_MAE"],
                              "seconds": result["seconds"]}), flush=True)
    print("| stage 5 rates | val MAE | test MAE | test Corr |")
    for name in variants:
        runs = [r for r in payload["runs"] if r["variant"] == name and r["seed"] in args.seeds]
        print(f"| {name} | " + " | ".join(mean_std([r[k] for r in runs]) for k in ("val_MAE", "MAE", "Corr")) + " |")


if __name__ == "__main__":
    main()
