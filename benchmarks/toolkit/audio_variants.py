"""Variants of the audio unimodal stage (stage 2) against each other, over seeds.

Each study trains the quickstart audio stage (``pipelines/quickstart/base.yaml`` +
``2_audio.yaml``, the generated default dataset) once per variant and seed, with a few
epochs, and tests the best checkpoint:

``--dataset mosi`` runs the same on CMU-MOSI's audio stage (``pipelines/mosi``).

* ``dropout``: Bernoulli masks per sample, per batch, per epoch, Gaussian dropout, none
  (all at ``p``), on the default MLP.
* ``regularization``: none, L2, L1 (subgradient), L1 as a proximal step, elastic net,
  Tikhonov (first differences); also the weights' sparsity (fraction of |w| < 1e-3 and
  of exact zeros over the weight matrices of encoder and head).
* ``swapout``: a plain MLP with dropout, plain residual blocks, residual blocks with
  dropout, Swapout blocks inferred by the expectation and by averaging 8 passes
  (hidden sizes [128, 128] for all, so residual blocks fit).
* ``pretrain``: random initialization against greedy layer-wise autoencoder
  pretraining of the acoustic MLP (``mmsent.callbacks.LayerwisePretraining``, 5 epochs
  per layer).

Results go to ``benchmarks/results/audio_<study>.json`` after every run.

    OMP_NUM_THREADS=1 python benchmarks/toolkit/audio_variants.py dropout --seeds 0 1 2 --epochs 6
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

import torch

# Run as a file, a script sees only its own folder; the repository root makes `benchmarks` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import REPO, fit_and_test, machine, mean_std, save

DATASETS = {name: ["-c", str(REPO / f"pipelines/{name}/base.yaml"), "-c", str(REPO / f"pipelines/{name}/2_audio.yaml")]
            for name in ("quickstart", "mosi")}
ENCODER = "--model.init_args.encoder.init_args."
REGULARIZER = "--model.init_args.regularizer."
EPOCH_CALLBACK = "--trainer.callbacks+=mmsent.callbacks.EpochDropoutCallback"


def studies(p: float) -> dict[str, dict[str, list[str]]]:
    """dict: Per study, per variant, the CLI overrides that make it."""
    kinds = {kind: [f"{ENCODER}dropout={p}", f"{ENCODER}dropout_kind={kind}"]
             for kind in ("bernoulli", "bernoulli_batch", "bernoulli_epoch", "gaussian")}
    kinds["bernoulli_epoch"].append(EPOCH_CALLBACK)
    kinds["none"] = [f"{ENCODER}dropout_kind=none"]
    wide = [f"{ENCODER}hidden_dims=[128,128]"]
    return {
        "dropout": kinds,
        "regularization": {
            "none": [],
            "l2": [f"{REGULARIZER}l2=1e-3"],
            "l1": [f"{REGULARIZER}l1=1e-4"],
            "l1_proximal": [f"{REGULARIZER}l1=1e-4", f"{REGULARIZER}l1_proximal=true"],
            "elastic": [f"{REGULARIZER}elastic=2e-4", f"{REGULARIZER}l1_ratio=0.5"],
            "tikhonov": [f"{REGULARIZER}tikhonov=1e-3"],
            **{f"{name}_{strength:g}": [f"{REGULARIZER}l1={strength:g}",
                                        f"{REGULARIZER}l1_proximal={name == 'l1_proximal'}"]
               for strength in (1e-3, 1e-2, 1e-1) for name in ("l1", "l1_proximal")},
        },
        "swapout": {
            "mlp_dropout": [*wide, f"{ENCODER}dropout={p}"],
            "residual": [*wide, f"{ENCODER}dropout=0", f"{ENCODER}residual=true"],
            "residual_dropout": [*wide, f"{ENCODER}dropout={p}", f"{ENCODER}residual=true"],
            "swapout_expectation": [*wide, f"{ENCODER}dropout=0", f"{ENCODER}residual=true",
                                    f"{ENCODER}swapout=[{p},{p}]"],
            "swapout_averaged8": [*wide, f"{ENCODER}dropout=0", f"{ENCODER}residual=true",
                                  f"{ENCODER}swapout=[{p},{p}]", f"{ENCODER}swapout_samples=8"],
        },
        "pretrain": {
            "random": [],
            "greedy_autoencoder": ["--trainer.callbacks+=mmsent.callbacks.LayerwisePretraining"],
        },
    }


def sparsity(checkpoint: str) -> dict[str, float]:
    """Fractions of near-zero and exactly-zero entries over a checkpoint's weight matrices."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    weights = torch.cat([w.flatten() for name, w in state.items()
                         if name.endswith("weight") and w.ndim >= 2])
    return {"small_fraction": float((weights.abs() < 1e-3).float().mean()),
            "zero_fraction": float((weights == 0).float().mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=["dropout", "regularization", "swapout", "pretrain"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--p", type=float, default=0.3, help="dropout / Swapout probability")
    parser.add_argument("--variants", nargs="*", help="a subset of the study's variants")
    parser.add_argument("--tag", default="", help="suffix of the results file's name")
    parser.add_argument("--dataset", default="quickstart", choices=sorted(DATASETS),
                        help="mosi: CMU-MOSI's audio stage (openSMILE features; set MMSENT_MOSI_DIR)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    variants = studies(args.p)[args.study]
    names = args.variants or list(variants)
    payload = {"study": args.study, "dataset": args.dataset, "epochs": args.epochs, "p": args.p, "seeds": args.seeds,
               "machine": machine(), "date": datetime.date.today().isoformat(), "runs": []}
    for seed in args.seeds:
        for name in names:
            run_args = [*DATASETS[args.dataset], f"--seed_everything={seed}", f"--trainer.max_epochs={args.epochs}",
                        "--trainer.enable_progress_bar=false",
                        f"--trainer.default_root_dir=runs/bench_audio/{args.dataset}/{args.study}/{name}/{seed}",
                        *variants[name]]
            result = fit_and_test(run_args)
            if args.study == "regularization":
                result.update(sparsity(result["checkpoint"]))
            payload["runs"].append({"variant": name, "seed": seed, **result})
            save(f"audio_{args.study}{'' if args.dataset == 'quickstart' else '_' + args.dataset}{args.tag}", payload)
            print(json.dumps({"variant": name, "seed": seed, "MAE": result["MAE"],
                              "val_MAE": result["val_MAE"], "seconds": result["seconds"]}), flush=True)
    print(f"| variant | val MAE | test MAE | test Corr |"
          f"{' |w|<1e-3 | w == 0 |' if args.study == 'regularization' else ''}")
    for name in names:
        runs = [r for r in payload["runs"] if r["variant"] == name]
        row = [mean_std([r[k] for r in runs]) for k in ("val_MAE", "MAE", "Corr")]
        if args.study == "regularization":
            row += [f"{statistics.mean(r[k] for r in runs):.4f}" for k in ("small_fraction", "zero_fraction")]
        print(f"| {name} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
