"""CMU-MOSI with MiniLM fine-tuned as the text encoder, beside the LSTM over its frozen states.

Runs ``pipelines/mosi_finetuned_text.yaml`` (text: MiniLM fine-tuned with its own
learning rate and warm-up; audio; fusion with frozen encoders; fine-tuning of
everything) once per seed, one process at a time with one thread, each stage keeping
its checkpoint with the lowest validation MAE, and reports the test metrics of those
checkpoints, per seed and as mean ± std. With ``--lstm`` the staged pipeline of
``pipelines/mosi.yaml`` (a biLSTM over MiniLM's frozen token states) runs for the same
seeds too, so both rows come from the same machine and day. Raw results go to
``benchmarks/results/mosi_finetuned_text.json``; a Markdown table is printed.

    export MMSENT_MOSI_DIR=/path/to/cmu-mosi
    python benchmarks/quality/mosi_finetuned_text.py --seeds 0 1 2 3 4 --lstm

Finished seeds are kept (``--output-dir``), so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Run as a file, a script sees only its own folder; the repository root makes `benchmarks` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import REPO, machine, save
from benchmarks.quality.mosi import (
    PIPELINE,
    PUBLISHED,
    STAGES,
    published_head,
    run_seed,
    stage_results,
    stage_row,
)

FINETUNED = REPO / "pipelines" / "mosi_finetuned_text.yaml"
LABELS = {"lstm": "biLSTM over frozen MiniLM states", "minilm": "MiniLM fine-tuned"}


def per_seed_lines(name: str, results: dict, seeds: list[int]) -> list[str]:
    """Per stage, the seed-by-seed test Non0_acc_2 / MAE / Corr.

    Args:
        name (str): The text encoder's key in :data:`LABELS`.
        results (dict): From :func:`mosi.stage_results`.
        seeds (list[int]): The seeds, in order.

    Returns:
        list[str]: Markdown list items.
    """
    lines = []
    for stage, label in STAGES.items():
        test = results[stage]["test"]
        values = ", ".join(f"{s}: {100 * a:.1f} / {m:.3f} / {c:.3f}" for s, a, m, c in
                           zip(seeds, test["Non0_acc_2"], test["MAE"], test["Corr"], strict=True))
        lines.append(f"- {LABELS[name]}, {label}: {values}")
    return lines


def markdown(runs: dict[str, dict], seeds: list[int]) -> str:
    """The results table and the per-seed figures in Markdown.

    Args:
        runs (dict[str, dict]): Per text encoder (:data:`LABELS`), the stage results.
        seeds (list[int]): The seeds run.

    Returns:
        str: The table (test split, mean ± std over seeds), then the per-seed figures.
    """
    lines = published_head()
    for name, results in runs.items():
        lines.extend(stage_row(f"{LABELS[name]}: {label}", results[stage]) for stage, label in STAGES.items())
    seeds_text = ", ".join(map(str, seeds))
    details = [line for name, results in runs.items() for line in per_seed_lines(name, results, seeds)]
    return ("\n".join(lines) + f"\n\nTest split, mean ± std over seeds {seeds_text}; time: seconds per stage."
            "\n\nPer seed (test Non0_acc_2 / MAE / Corr):\n\n" + "\n".join(details) + "\n")


def main(args: list[str] | None = None) -> None:
    """Runs the benchmark.

    Args:
        args (list[str] | None): Command-line arguments; None reads ``sys.argv``.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--lstm", action="store_true", help="run pipelines/mosi.yaml for the same seeds too")
    parser.add_argument("--output-dir", default="runs/benchmark-mosi-finetuned-text")
    parser.add_argument("--cache-dir", default="data/cache")
    parsed = parser.parse_args(args)
    started = time.time()
    output = REPO / parsed.output_dir
    cache = str(REPO / parsed.cache_dir)
    pipelines = {"minilm": FINETUNED, **({"lstm": PIPELINE} if parsed.lstm else {})}
    runs = {}
    for name, pipeline in pipelines.items():
        manifests = {s: run_seed(s, output / name / f"seed{s}", cache, pipeline=pipeline) for s in parsed.seeds}
        runs[name] = stage_results(manifests)
    runs = {name: runs[name] for name in ("lstm", "minilm") if name in runs}
    table = markdown(runs, parsed.seeds)
    payload = {"command": "python benchmarks/quality/mosi_finetuned_text.py " + " ".join(args or sys.argv[1:]),
               "machine": machine(), "threads": 1, "seeds": parsed.seeds,
               "wall_time_s": round(time.time() - started), "stages": runs, "published": PUBLISHED,
               "table": table}
    path = save("mosi_finetuned_text", payload)
    print(f"\n{table}\nmachine: {payload['machine']}; wall time {payload['wall_time_s']} s; raw results: {path}")


if __name__ == "__main__":
    main()
