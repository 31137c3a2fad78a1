"""CMU-MOSI epochs of every mmsent stage against MMSA's LF_DNN, side by side.

One thread on both sides, alternated within each repeat so the load of a shared
machine falls on both alike: every CMU-MOSI stage of mmsent through ``mmsent fit``
(validation kept, timed as in ``overhead.py --validate``: the last of ``--epochs``
epochs, its validation pass and checkpoint included), then one run of the peer
harness, whose ``epoch_s`` is MMSA's training loop, validation passes included,
divided by its epochs. Even repeats run mmsent first, odd ones the peer. The load
average is recorded before each side. Figure of merit: ``peer / mmsent`` seconds
per epoch (target > 1 for every stage). Medians.

    MMSENT_MOSI_DIR=/path/to/cmu-mosi python benchmarks/peers/peer_mosi.py \\
        --peer /path/to/run_peer.sh --run runs/mosi --cache-dir data/cache
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess

os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys
from pathlib import Path

import torch

# Run as a file, a script sees only its own folder; the repository root makes `benchmarks` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import save_measurement
from benchmarks.speed.overhead import add_fit_options, checked_stages, fit_seconds


def peer_run(command: list[str]) -> dict:
    """Runs the peer harness with one thread; returns the JSON line it prints last."""
    done = subprocess.run(command, env={**os.environ, "THREADS": "1"}, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_fit_options(parser)
    parser.add_argument("--peer", required=True, help="the peer harness script (prints one JSON line with epoch_s)")
    parser.add_argument("--peer-model", default="lf_dnn")
    parser.add_argument("--peer-seed", default="1111")
    parser.add_argument("--repeats", type=int, default=3)
    parser.set_defaults(pipeline="mosi", validate=True, epochs=2, run="runs/mosi", data_root=None)
    args = parser.parse_args()
    stages = checked_stages(parser, args)
    if args.data_root is None:
        args.data_root = os.environ.get("MMSENT_MOSI_DIR") or parser.error("--data-root or MMSENT_MOSI_DIR")
    torch.set_num_threads(1)
    mmsent = {stage: [] for stage in stages}
    peer, loads = [], []

    def mmsent_side():
        loads.append({"side": "mmsent", "load_1min": os.getloadavg()[0]})
        for stage in stages:
            mmsent[stage].append(fit_seconds(stage, args, f"{args.root}/{stage}"))
            print(f"mmsent {stage}: {mmsent[stage][-1]:.3f} s", flush=True)

    def peer_side():
        loads.append({"side": "peer", "load_1min": os.getloadavg()[0]})
        peer.append(peer_run([args.peer, args.peer_model, args.peer_seed]))
        print(f"peer {args.peer_model}: {peer[-1]['epoch_s']:.3f} s over {peer[-1]['epochs']} epochs", flush=True)

    for repeat in range(args.repeats):
        for side in ((mmsent_side, peer_side) if repeat % 2 == 0 else (peer_side, mmsent_side)):
            side()
    peer_median = statistics.median(run["epoch_s"] for run in peer)
    results = [{"stage": stage, "seconds": values, "median_seconds": statistics.median(values),
                "peer_median_seconds": peer_median, "peer_vs_mmsent": peer_median / statistics.median(values)}
               for stage, values in mmsent.items()]
    for result in results:
        print(f"{result['stage']}: mmsent {result['median_seconds']:.3f} s, {args.peer_model} {peer_median:.3f} s "
              f"per epoch; {args.peer_model} / mmsent {result['peer_vs_mmsent']:.2f}", flush=True)
    results.append({"peer": peer, "load": loads})
    path = save_measurement(f"peer_mosi_{args.peer_model}",
                            f"python benchmarks/peers/peer_mosi.py --stages {' '.join(stages)} --repeats {args.repeats} "
                            f"--epochs {args.epochs} --peer-model {args.peer_model} --peer-seed {args.peer_seed}",
                            results)
    print(f"raw results: {path}")


if __name__ == "__main__":
    main()
