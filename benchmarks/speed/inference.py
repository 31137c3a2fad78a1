"""Inference speed of an exported model on CPU: from raw files and from cached tensors.

    OMP_NUM_THREADS=1 python benchmarks/speed/inference.py models/quickstart runs/quickstart \
        data/generated/quickstart --split test

Raw: ``SentimentModel.score_clips`` (decode video and audio, tokenize, score).
Cached: the pipeline's own prepared test split, collated batches straight into the model.
Each side runs in its own process (``--mode``), so each peak RSS is its own. Prints
and writes JSON to ``benchmarks/results/inference.json``: clips/s and peak RSS.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from mmsent import SentimentModel
from mmsent.hub.export import run_manifest, stage_data
from mmsent.hub.score import folder_clips


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(args: argparse.Namespace) -> dict:
    """Scores the split one way in this process.

    Args:
        args (argparse.Namespace): The parsed arguments; ``args.mode`` is ``raw`` or
            ``cached``.

    Returns:
        dict: ``clips``, ``clips_per_s`` and ``peak_rss_mb``.
    """
    torch.set_num_threads(1)
    model = SentimentModel.from_pretrained(args.model)
    with torch.inference_mode():
        if args.mode == "cached":
            manifest = run_manifest(Path(args.run_dir))
            stage = [s for s in manifest["stages"].values() if s.get("predictions")][-1]
            loader = stage_data(stage["config"]).split_dataloader(args.split)
            start, count = time.perf_counter(), 0
            for batch in loader:
                model(batch)
                count += len(batch["id"])
        else:
            clips, _ = folder_clips(Path(args.folder), args.split, "mp4")
            start = time.perf_counter()
            count = sum(1 for _ in model.score_clips(clips, args.batch_size))
        seconds = time.perf_counter() - start
    return {"clips": count, "seconds": seconds, "clips_per_s": count / seconds, "peak_rss_mb": peak_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("run_dir")
    parser.add_argument("folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--mode", choices=["raw", "cached", "both"], default="both")
    args = parser.parse_args()
    if args.mode != "both":
        print(json.dumps(measure(args)))
        return
    results = {"threads": 1, "batch_size": args.batch_size, "split": args.split}
    for mode in ("cached", "raw"):
        child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--mode", mode],
                               check=True, capture_output=True, text=True)
        results[mode] = json.loads(child.stdout.strip().splitlines()[-1])
    print(json.dumps(results, indent=2))
    out = Path(__file__).resolve().parents[1] / "results" / "inference.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
