"""The quickstart pipeline over whole-pipeline seeds: per-stage test MAE mean ± std,
stage 5 against stage 4 per seed, and each unimodal stage's correlation with its own
modality's noise-free score.

Only ``seed_everything`` varies: the generated dataset (its own seed in base.yaml) is
the same for every run. Each run is one process with one thread; at most
``--parallel`` run at a time (the CPU is shared).

    python benchmarks/quality/quickstart_seeds.py --seeds 0 1 2 --parallel 2
    python benchmarks/quality/quickstart_seeds.py --pipeline pipelines/quickstart_minilm.yaml --name quickstart_minilm_seeds

With ``--from STAGE`` each seed's pipeline reruns that stage and the later ones in an
existing output folder (e.g. a copy of an earlier run's), keeping the earlier stages.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Run as a file, a script sees only its own folder; the repository root makes `benchmarks` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import REPO, machine, mean_std, save

PIPELINE = REPO / "pipelines" / "quickstart.yaml"


def run_seed(seed: int, out_root: Path, start: str | None = None, pipeline: Path = PIPELINE) -> dict:
    """Runs the quickstart pipeline with one ``seed_everything``.

    Args:
        seed (int): The global seed of every stage.
        out_root (Path): Parent of the run folders.
        start (str | None): Rerun from this stage on; None runs the whole pipeline.
        pipeline (Path): The pipeline file (the quickstart's stage names).

    Returns:
        dict: Per stage the test and validation metrics, the selection records, the
        own-score correlations and the wall time.
    """
    out = out_root / f"seed{seed}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    started = time.time()
    command = [sys.executable, "-m", "mmsent", "pipeline", "run", str(pipeline), "--no-wandb",
               "--output-dir", str(out), *(["--from", start] if start else []), "--", f"--seed_everything={seed}"]
    log = (out_root / f"seed{seed}.log").open("w")
    subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    report = json.loads((out / "report.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    result = {
        "seed": seed,
        "seconds": round(time.time() - started, 1),
        "stages": {row["stage"]: {"test": row["test"], "val": row["val"]} for row in report["stages"]},
        "selection": {name: record.get("selection") for name, record in manifest["stages"].items()},
        "own_score_correlations": report.get("own_score_correlations", {}),
        "baselines": report.get("baselines", {}),
    }
    (out_root / f"seed{seed}.json").write_text(json.dumps(result, indent=2))
    return result


def summarize(runs: list[dict]) -> str:
    """Markdown tables of the runs.

    Args:
        runs (list[dict]): From :func:`run_seed`.

    Returns:
        str: Per-stage mean ± std, stage 5 against stage 4 per seed, own-score correlations.
    """
    lines = ["| stage | test MAE | test Corr | test Non0_acc_2 | test Mult_acc_7 | val MAE |", "|---|---|---|---|---|---|"]
    for stage in runs[0]["stages"]:
        rows = [r["stages"][stage] for r in runs if stage in r["stages"]]
        cells = [mean_std([row["test"][m] * (100 if "acc" in m else 1) for row in rows])
                 for m in ("MAE", "Corr", "Non0_acc_2", "Mult_acc_7")]
        lines.append(f"| {stage} | " + " | ".join(cells) + f" | {mean_std([row['val']['MAE'] for row in rows])} |")
    base = runs[0]["baselines"].get("test", {})
    if base:
        lines.append(f"| trivial predictor | {base['MAE']:.3f} | 0 | {100 * base['Non0_acc_2']:.1f} | "
                     f"{100 * base['Mult_acc_7']:.1f} | {runs[0]['baselines']['val']['MAE']:.3f} |")
    lines += ["", "| seed | stage 4 test MAE | stage 5 test MAE | stage 5 - stage 4 | stage 5 handed on |",
              "|---|---|---|---|---|"]
    better = 0
    for run in runs:
        four, five = run["stages"]["fusion"]["test"]["MAE"], run["stages"]["finetune"]["test"]["MAE"]
        better += five < four
        handed = (run["selection"].get("finetune") or {}).get("handed_on", "-")
        lines.append(f"| {run['seed']} | {four:.3f} | {five:.3f} | {five - four:+.3f} | {handed} |")
    lines += ["", f"Stage 5 has the lower test MAE on {better} of {len(runs)} seeds.", "",
              "| stage | correlation with its own modality's noise-free score (test) |", "|---|---|"]
    for stage in runs[0]["own_score_correlations"]:
        values = [r["own_score_correlations"][stage]["corr"] for r in runs if stage in r["own_score_correlations"]]
        if values:
            lines.append(f"| {stage} | {mean_std(values)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "runs" / "quickstart_seeds"))
    parser.add_argument("--from", dest="start", help="rerun from this stage in existing outputs")
    parser.add_argument("--pipeline", type=Path, default=PIPELINE, help="a pipeline with the quickstart's stage names")
    parser.add_argument("--name", default="quickstart_seeds", help="the raw results' file name")
    args = parser.parse_args()
    out_root = Path(args.out)
    out_root.mkdir(parents=True, exist_ok=True)
    started = time.time()
    # The first run writes and prepares the dataset; the others then find it cached.
    runs = [run_seed(args.seeds[0], out_root, args.start, args.pipeline)]
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        runs += list(pool.map(lambda seed: run_seed(seed, out_root, args.start, args.pipeline), args.seeds[1:]))
    table = summarize(runs)
    payload = {"command": " ".join(sys.argv), "from": args.start, "machine": machine(), "date": datetime.date.today().isoformat(),
               "seeds": args.seeds, "seconds": round(time.time() - started, 1), "runs": runs, "table": table}
    print(table)
    print("raw results:", save(args.name + (f"_from_{args.start}" if args.start else ""), payload))


if __name__ == "__main__":
    main()
