"""Inference speed of an exported model on CPU: from raw files and from cached tensors.

    OMP_NUM_THREADS=1 python benchmarks/inference.py models/quickstart runs/quickstart \
        data/generated/quickstart --split test

Raw: ``SentimentModel.score_clips`` (decode video and audio, tokenize, score).
Cached: the pipeline's own prepared test split, collated batches straight into the model.
Prints and writes JSON to ``benchmarks/results/inference.json``: clips/s and peak RSS.
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

from mmsent import SentimentModel
from mmsent.hub.export import read_manifest, stage_data
from mmsent.hub.score import folder_clips


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("run_dir")
    parser.add_argument("folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = SentimentModel.from_pretrained(args.model)
    manifest = read_manifest(Path(args.run_dir))
    stage = [s for s in manifest["stages"].values() if s.get("predictions")][-1]
    datamodule = stage_data(stage["config"])
    loader = datamodule.split_dataloader(args.split)
    results = {"threads": torch.get_num_threads(), "batch_size": args.batch_size}
    with torch.inference_mode():
        start, count = time.perf_counter(), 0
        for batch in loader:
            model(batch)
            count += len(batch["id"])
        results["cached"] = {"clips": count, "clips_per_s": count / (time.perf_counter() - start),
                             "peak_rss_mb": peak_mb()}
        clips, _ = folder_clips(Path(args.folder), args.split, "mp4")
        start = time.perf_counter()
        scored = sum(1 for _ in model.score_clips(clips, args.batch_size))
        results["raw"] = {"clips": scored, "clips_per_s": scored / (time.perf_counter() - start),
                          "peak_rss_mb": peak_mb()}
    print(json.dumps(results, indent=2))
    out = Path(__file__).parent / "results" / "inference.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
