"""Settings of CMU-MOSI's fine-tuned MiniLM text stage, compared on validation over seeds.

Runs the text stage of ``pipelines/mosi_finetuned_text.yaml`` alone (``mmsent
pipeline run --only text``) once per seed, one process with one thread at a time, with
the given overrides after ``--``, and reports the validation MAE of each seed's
selected checkpoint (the figure settings are chosen on) beside its test metrics.
Raw results go to ``benchmarks/results/mosi_text_stage_<name>.json``.

    export MMSENT_MOSI_DIR=/path/to/cmu-mosi
    # the stage as configured
    python benchmarks/quality/mosi_text_stage.py --name configured
    # the earlier head and batch size: linear head, batches of 32
    python benchmarks/quality/mosi_text_stage.py --name linear_head_batch32 -- \\
        --model.init_args.head_hidden=0 --model.init_args.head_dropout=0.0 --data.batch_size=32

Finished seeds are kept (``--output-dir``), so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

# Run as a file, a script sees only its own folder; the repository root makes `benchmarks` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import REPO, machine, save
from benchmarks.quality.mosi import run_seed

FINETUNED = REPO / "pipelines" / "mosi_finetuned_text.yaml"
REPORTED = ("MAE", "Corr", "Non0_acc_2")


def summary(per_seed: dict[int, dict]) -> dict:
    """Mean and standard deviation over seeds of validation MAE and the test metrics.

    Args:
        per_seed (dict[int, dict]): Seed -> the text stage's ``metrics`` from the manifest.

    Returns:
        dict: ``{"val_MAE": [mean, std], "test_<metric>": [mean, std], ...}``.
    """
    columns = {"val_MAE": [m["val"]["MAE"] for m in per_seed.values()],
               **{f"test_{k}": [m["test"][k] for m in per_seed.values()] for k in REPORTED}}
    return {k: [statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0] for k, v in columns.items()}


def main(args: list[str] | None = None) -> None:
    """Runs the benchmark.

    Args:
        args (list[str] | None): Command-line arguments; None reads ``sys.argv``.
    """
    argv = list(sys.argv[1:] if args is None else args)
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the setting's name, for folders and the results file")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--output-dir", default="runs/benchmark-mosi-text-stage")
    parser.add_argument("--cache-dir", default="data/cache")
    parser.add_argument("--pipeline", default=str(FINETUNED.relative_to(REPO)),
                        help="the pipeline whose text stage runs (its stages must be pipelines/mosi.yaml's)")
    parsed = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    started = time.time()
    per_seed = {}
    for seed in parsed.seeds:
        manifest = run_seed(seed, REPO / parsed.output_dir / parsed.name / f"seed{seed}", str(REPO / parsed.cache_dir),
                            tuple(overrides), pipeline=REPO / parsed.pipeline, only="text")
        per_seed[seed] = manifest["stages"]["text"]["metrics"]
    stats = summary(per_seed)
    payload = {"command": "python benchmarks/quality/mosi_text_stage.py " + " ".join(argv), "machine": machine(),
               "date": datetime.now(UTC).isoformat(timespec="minutes"),
               "threads": 1, "pipeline": parsed.pipeline, "seeds": parsed.seeds, "overrides": overrides,
               "wall_time_s": round(time.time() - started), "per_seed": per_seed, "summary": stats}
    path = save(f"mosi_text_stage_{parsed.name}", payload)
    cells = ", ".join(f"{k} {m:.4f} ± {s:.4f}" for k, (m, s) in stats.items())
    per_seed_val = ", ".join(f"{s}: {m['val']['MAE']:.3f}" for s, m in per_seed.items())
    print(f"{parsed.name}: {cells}\nval MAE per seed: {per_seed_val}\nraw results: {path}")


if __name__ == "__main__":
    main()
