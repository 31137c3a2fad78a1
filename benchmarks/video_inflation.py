"""The video stage's 3D-CNN from random weights vs inflated from a pretrained 2D CNN (I3D).

Nothing is downloaded, so the 2D network is pretrained here: the per-frame
:class:`FrameCNNEncoder` (same widths as the compact C3D) is trained on the video stage
of the generated default dataset, and its checkpoint initializes
``Visual3DCNNEncoder(inflate_from=...)``. Per seed: the 2D stage, the 3D stage from
random weights and the 3D stage from the inflated kernels, each for ``--epochs``
epochs; the best checkpoint of each is tested.

    OMP_NUM_THREADS=1 python benchmarks/video_inflation.py --seeds 0 1 2 --epochs 4
"""

from __future__ import annotations

import argparse
import datetime
import json

import torch
from common import fit_and_test, machine, mean_std, save
from quickstart_stages import QUIET, configs

ENCODER = "--model.init_args.encoder"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    payload = {"epochs": args.epochs, "seeds": args.seeds, "machine": machine(),
               "date": datetime.date.today().isoformat(), "runs": []}
    for seed in args.seeds:
        common = [*configs("3_video.yaml"), f"--seed_everything={seed}", *QUIET,
                  f"--trainer.max_epochs={args.epochs}"]
        frame = fit_and_test([*common, f"--trainer.default_root_dir=runs/bench_inflation/frame2d/{seed}",
                              f"{ENCODER}=mmsent.models.FrameCNNEncoder", f"{ENCODER}.init_args.widths=[16,32,64]",
                              f"{ENCODER}.init_args.out_dim=64", f"{ENCODER}.init_args.dropout=0.1"])
        variants = {"frame2d": frame}
        variants["c3d_random"] = fit_and_test(
            [*common, f"--trainer.default_root_dir=runs/bench_inflation/c3d_random/{seed}"])
        variants["c3d_inflated"] = fit_and_test(
            [*common, f"--trainer.default_root_dir=runs/bench_inflation/c3d_inflated/{seed}",
             f"{ENCODER}.init_args.inflate_from={frame['checkpoint']}"])
        for name, result in variants.items():
            payload["runs"].append({"variant": name, "seed": seed, **result})
            print(json.dumps({"variant": name, "seed": seed, "MAE": result["MAE"],
                              "val_MAE": result["val_MAE"], "seconds": result["seconds"]}), flush=True)
        save("video_inflation", payload)
    print("| variant | val MAE | test MAE | test Corr |")
    for name in ("frame2d", "c3d_random", "c3d_inflated"):
        runs = [r for r in payload["runs"] if r["variant"] == name]
        print(f"| {name} | " + " | ".join(mean_std([r[k] for r in runs]) for k in ("val_MAE", "MAE", "Corr")) + " |")


if __name__ == "__main__":
    main()
