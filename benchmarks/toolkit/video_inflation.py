"""The video stage's 3D-CNN from random weights vs inflated from a pretrained 2D CNN (I3D).

The donor is any 2D network's weights file given by ``--donor``; ``--donor-kernels``
names its convolution kernels to inflate, one per 3D convolution, and ``--widths``
must equal their output channels (the defaults fit MTCNN's ONet from the
``facenet-pytorch`` wheel, pretrained on real face images). Both arms run
``3_video.yaml`` as it is (motion channels, two time bins, Adam) with the same widths;
per seed, each arm's best checkpoint by validation MAE is tested, and its test
predictions are also correlated with the generated ``video_score`` (the score the
video was rendered from) when the data's ``label.csv`` has it.

    pip download --no-deps facenet-pytorch==2.6.0 -d /tmp/fnp
    unzip -o -q /tmp/fnp/facenet_pytorch-2.6.0-py3-none-any.whl 'facenet_pytorch/data/*' -d /tmp/fnp
    OMP_NUM_THREADS=1 python benchmarks/toolkit/video_inflation.py --donor /tmp/fnp/facenet_pytorch/data/onet.pt
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
from benchmarks.common import REPO, fit_and_test, machine, mean_std, save
from benchmarks.quickstart_stages import QUIET, configs
from mmsent.data.schema import make_id

ENCODER = "--model.init_args.encoder"
ONET_KERNELS = ["conv1.weight", "conv2.weight", "conv3.weight"]


def video_stage_measures(scores: dict[str, float]):
    """The measures :func:`fit_and_test` adds for a video stage run.

    Args:
        scores (dict[str, float]): Clip id -> ``video_score``; empty to skip.

    Returns:
        Callable: CLI -> ``video_score_Corr`` (the test predictions' correlation with
        the rendered video score, None without scores) and ``val_MAE_by_epoch``.
    """

    def measure(cli) -> dict:
        result = {"video_score_Corr": None,
                  "val_MAE_by_epoch": validation_curve(Path(cli.trainer.logger.log_dir) / "metrics.csv")}
        if scores:
            predicted, rendered = [], []
            cli.model.eval()
            with torch.no_grad():
                for batch in cli.datamodule.test_dataloader():
                    predicted += cli.model(batch).reshape(-1).tolist()
                    rendered += [scores[i] for i in batch["id"]]
            result["video_score_Corr"] = float(torch.corrcoef(torch.tensor([predicted, rendered]))[0, 1])
        return result

    return measure


def validation_curve(metrics: Path) -> list[float]:
    """list[float]: The validation MAE after each epoch, from a run's ``metrics.csv``."""
    with metrics.open(newline="") as handle:
        return [float(row["val/MAE"]) for row in csv.DictReader(handle) if row.get("val/MAE")]


def video_scores(root: Path) -> dict[str, float]:
    """dict[str, float]: Clip id -> ``video_score`` from ``root/label.csv``; empty
    where the file or the column is absent."""
    path = root / "label.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "video_score" not in rows[0]:
        return {}
    return {make_id(r["video_id"], r["clip_id"]): float(r["video_score"]) for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--donor", required=True, help="the 2D network's weights file")
    parser.add_argument("--donor-kernels", nargs="+", default=ONET_KERNELS)
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64, 64])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data-root", default=str(REPO / "data" / "generated" / "quickstart"))
    parser.add_argument("--cache-dir", default=str(REPO / "data" / "cache"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    scores = video_scores(Path(args.data_root))
    measure = video_stage_measures(scores)
    widths = ",".join(map(str, args.widths))
    payload = {"donor": Path(args.donor).name, "donor_kernels": args.donor_kernels, "widths": args.widths,
               "seeds": args.seeds, "machine": machine(), "date": datetime.date.today().isoformat(), "runs": []}
    for seed in args.seeds:
        common = [*configs("3_video.yaml"), f"--seed_everything={seed}", *QUIET,
                  f"--data.source.init_args.root={args.data_root}", f"--data.cache_dir={args.cache_dir}",
                  f"{ENCODER}.init_args.widths=[{widths}]"]
        variants = {
            "c3d_random": [],
            "c3d_inflated": [f"{ENCODER}.init_args.inflate_from={args.donor}",
                             f"{ENCODER}.init_args.inflate_kernels=[{','.join(args.donor_kernels)}]"],
        }
        for name, extra in variants.items():
            result = fit_and_test(
                [*common, f"--trainer.default_root_dir=runs/bench_inflation/{name}/{seed}", *extra], measure)
            payload["runs"].append({"variant": name, "seed": seed, **result})
            print(json.dumps({"variant": name, "seed": seed, "val_MAE": result["val_MAE"], "MAE": result["MAE"],
                              "Corr": result["Corr"], "video_score_Corr": result["video_score_Corr"],
                              "seconds": result["seconds"]}), flush=True)
            save("video_inflation", payload)
    print("| variant | val MAE | test MAE | test Corr | Corr with video_score |")
    for name in ("c3d_random", "c3d_inflated"):
        runs = [r for r in payload["runs"] if r["variant"] == name]
        columns = [mean_std([r[k] for r in runs]) for k in ("val_MAE", "MAE", "Corr")]
        columns.append(mean_std([r["video_score_Corr"] for r in runs]) if scores else "n/a")
        print(f"| {name} | " + " | ".join(columns) + " |")
    for name in ("c3d_random", "c3d_inflated"):
        curves = [r["val_MAE_by_epoch"] for r in payload["runs"] if r["variant"] == name]
        print(f"{name} val MAE by epoch: " + ", ".join(mean_std(list(epoch)) for epoch in zip(*curves)))


if __name__ == "__main__":
    main()
