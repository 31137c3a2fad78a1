"""Does the 3D-CNN use the temporal cue? The visual stage with the compact 3D-CNN
against a per-frame 2D-CNN of the same widths whose frame embeddings are averaged.

The generated clips encode the visual score in the direction of an expression's
change over time, so an order-blind model can only guess its sign.

    python benchmarks/quality/visual_temporal.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run as a file, a script sees only its own folder; the repository root makes `benchmarks` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import REPO, fit_and_test, machine, mean_std, save

QUICKSTART = REPO / "pipelines" / "quickstart"
ENCODERS = {
    "3D-CNN (c3d)": "mmsent.models.Visual3DCNNEncoder",
    "2D-CNN per frame, averaged": "mmsent.models.FrameCNNEncoder",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="override the stage's max_epochs")
    parser.add_argument("--output", default="runs/benchmarks/visual_temporal")
    options = parser.parse_args()
    results = {}
    for label, encoder in ENCODERS.items():
        for seed in options.seeds:
            args = ["-c", str(QUICKSTART / "base.yaml"), "-c", str(QUICKSTART / "3_visual.yaml"),
                    f"--model.init_args.encoder={encoder}",
                    "--model.init_args.encoder.init_args.widths=[16, 32, 64]",
                    f"--seed_everything={seed}", "--trainer.logger=false",
                    "--trainer.enable_progress_bar=false",
                    f"--trainer.default_root_dir={options.output}/{encoder.rsplit('.', 1)[1]}/seed{seed}"]
            if options.epochs:
                args.append(f"--trainer.max_epochs={options.epochs}")
            results.setdefault(label, []).append(fit_and_test(args))
    save("visual_temporal", {"machine": machine(), "seeds": options.seeds, "results": results})
    print(f"\nmachine: {machine()}\n")
    print("| visual encoder | test MAE | test Corr | best achievable MAE | time per run (s) |")
    print("|---|---|---|---|---|")
    for label, runs in results.items():
        print(f"| {label} | {mean_std([r['MAE'] for r in runs])} | {mean_std([r['Corr'] for r in runs])} "
              f"| {runs[0]['best_achievable_MAE']:.3f} | {mean_std([r['seconds'] for r in runs])} |")


if __name__ == "__main__":
    main()
