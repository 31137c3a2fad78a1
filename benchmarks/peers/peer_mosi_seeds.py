"""MMSA's models on mmsent's CMU-MOSI features, over seeds: test figures and time, one thread.

Runs the peer harness (``run_peer.sh MODEL SEED``: MMSA 2.2.1 unmodified, MiniLM token
states of the transcripts and the 73-d acoustic vector, no vision, MMSA's default
hyper-parameters) once per model and seed, one process with one thread at a time.
Each run's JSON line (test Non0_acc_2 / MAE / Corr, epochs, seconds per epoch of MMSA's
training loop with its validation passes, the process's wall time, peak memory) is
added to ``benchmarks/results/peer_mosi_seeds.json`` as soon as it finishes, so an
interrupted run resumes and finished (model, seed) pairs are not run again. With
``--max-seed-seconds`` a model whose first seed took longer is not run for the other
seeds; the file says so with the time measured.

    export MMSENT_MOSI_DIR=/path/to/cmu-mosi
    python benchmarks/peers/peer_mosi_seeds.py --peer ../shared/peer/run_peer.sh \\
        --models lf_dnn tfn lmf mult --seeds 0 1 2 3 4 --max-seed-seconds 900
    # mean ± std per model, from the raw results
    python benchmarks/peers/peer_mosi_seeds.py --table
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

# Run as a file, a script sees only its own folder; the repository root makes `benchmarks` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import RESULTS, machine

RESULTS_FILE = RESULTS / "peer_mosi_seeds.json"
REPORTED = ("Non0_acc_2", "MAE", "Corr")


def load() -> dict:
    """dict: The raw results so far (``runs``: one record per model and seed; ``skipped``)."""
    if RESULTS_FILE.is_file():
        return json.loads(RESULTS_FILE.read_text())
    return {"runs": [], "skipped": {}}


def peer_run(peer: str, model: str, seed: int) -> dict:
    """Runs the harness for one model and seed with one thread.

    Args:
        peer (str): The harness script.
        model (str): MMSA's model name as the harness takes it (``lf_dnn``, ``tfn``, ...).
        seed (int): The seed MMSA sets.

    Returns:
        dict: The JSON line the harness prints last, plus the 1-minute load average
        before the run and the harness's own wall time (``harness_s``).
    """
    env = {**os.environ, "THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    load_before = os.getloadavg()[0]
    started = time.time()
    done = subprocess.run(["nice", "-n", "10", peer, model, str(seed)], env=env, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{peer} {model} {seed} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    record = json.loads(done.stdout.strip().splitlines()[-1])
    return {**record, "load_1min": load_before, "harness_s": round(time.time() - started, 1),
            "date": datetime.now(UTC).isoformat(timespec="minutes")}


def summary(results: dict) -> dict:
    """Mean and sample standard deviation over seeds, per model.

    Args:
        results (dict): The raw results (:func:`load`).

    Returns:
        dict: ``{model: {"seeds": [...], metric: [mean, std], "wall_s": [...], "epoch_s": [...],
        "epochs": [...]}}``, models in the order first run.
    """
    out = {}
    for model in dict.fromkeys(r["model"] for r in results["runs"]):
        runs = sorted((r for r in results["runs"] if r["model"] == model), key=lambda r: r["seed"])

        def stats(key, runs=runs):
            values = [float(r[key]) for r in runs]
            return [statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0]

        out[model] = {"seeds": [r["seed"] for r in runs], **{k: stats(k) for k in REPORTED},
                      "wall_s": stats("wall_s"), "epoch_s": stats("epoch_s"), "epochs": stats("epochs")}
    return out


def table(results: dict) -> str:
    """Markdown table of :func:`summary`, with the models skipped and why."""
    lines = ["| MMSA model | seeds | Non0_acc_2 | MAE | Corr | epochs | s per seed | s per epoch |",
             "|---|---|---|---|---|---|---|---|"]
    for model, row in summary(results).items():
        cells = [f"{100 * row['Non0_acc_2'][0]:.1f} ± {100 * row['Non0_acc_2'][1]:.1f}",
                 f"{row['MAE'][0]:.3f} ± {row['MAE'][1]:.3f}", f"{row['Corr'][0]:.3f} ± {row['Corr'][1]:.3f}"]
        lines.append(f"| {model} | {', '.join(map(str, row['seeds']))} | " + " | ".join(cells)
                     + f" | {row['epochs'][0]:.0f} | {row['wall_s'][0]:.0f} | {row['epoch_s'][0]:.2f} |")
    lines += [f"| {model}: not run for seeds {reason['seeds']} | - | {reason['why']} | | | | | |"
              for model, reason in results.get("skipped", {}).items()]
    return "\n".join(lines)


def main() -> None:
    """Runs the benchmark (or prints the table with ``--table``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", help="the peer harness script (run_peer.sh)")
    parser.add_argument("--models", nargs="+", default=["lf_dnn", "tfn", "lmf", "mult"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--max-seed-seconds", type=float,
                        help="run a model's other seeds only if its first took at most this long")
    parser.add_argument("--table", action="store_true", help="print the table from the raw results and stop")
    args = parser.parse_args()
    results = load()
    if args.table:
        print(table(results))
        return
    if not args.peer:
        parser.error("--peer is required to run")
    # Every invocation that added runs, in order (seeds may be run round-robin over models).
    results.setdefault("commands", []).append("python benchmarks/peers/peer_mosi_seeds.py " + " ".join(sys.argv[1:]))
    results.update(machine=machine(), threads=1)
    for model in args.models:
        for seed in args.seeds:
            if any(r["model"] == model and r["seed"] == seed for r in results["runs"]):
                continue
            first = [r for r in results["runs"] if r["model"] == model]
            if args.max_seed_seconds and first and first[0]["wall_s"] > args.max_seed_seconds:
                rest = [s for s in args.seeds if not any(r["model"] == model and r["seed"] == s for r in first)]
                results["skipped"][model] = {
                    "seeds": rest, "why": f"seed {first[0]['seed']} took {first[0]['wall_s']:.0f} s "
                                          f"({first[0]['epoch_s']:.1f} s per epoch), over {args.max_seed_seconds:.0f} s"}
                print(f"{model}: {results['skipped'][model]['why']}; seeds {rest} not run", flush=True)
                break
            record = peer_run(args.peer, model, seed)
            results["runs"].append(record)
            RESULTS_FILE.write_text(json.dumps(results, indent=2))
            print(f"{model} seed {seed}: " + ", ".join(f"{k} {record[k]:.4f}" for k in REPORTED)
                  + f"; {record['epochs']} epochs, {record['epoch_s']:.2f} s per epoch, {record['wall_s']:.0f} s",
                  flush=True)
    RESULTS_FILE.write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"raw results: {RESULTS_FILE}")


if __name__ == "__main__":
    main()
