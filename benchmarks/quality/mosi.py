"""CMU-MOSI accuracy of the staged pipeline, over seeds, beside published results.

Runs ``pipelines/mosi.yaml`` (text, audio, fusion with frozen encoders, fine-tuning)
once per seed, each stage keeping its checkpoint with the lowest validation MAE,
and reports the test metrics of those checkpoints as mean and standard deviation
over seeds. Beside them: a ridge regression on mean-pooled MiniLM sentence
embeddings (its penalty chosen by validation MAE) and the published MMSA rows.
The fused stages end with the selection (:func:`mmsent.selection.select`; audio kept
only if validation shows a significant gain, a stage's start handed on unless its
result is significantly better); the same stages are run again without it, from the
same unimodal checkpoints, for comparison. Raw results go to
``benchmarks/results/mosi.json``; a Markdown table is printed.

    export MMSENT_MOSI_DIR=/path/to/cmu-mosi     # the data folder
    python benchmarks/quality/mosi.py                    # 5 seeds, 2 at a time
    python benchmarks/quality/mosi.py --seeds 0 1 --jobs 1

Seeds run as separate processes with one thread each: on a small shared CPU, one
LSTM process per core is far faster than two threads fighting over it (a training
step of the text LSTM, measured under load: 0.1 s with one thread, 1.8 s with two).
Finished seeds are kept (``--output-dir``), so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

# Run as a file, a script sees only its own folder; the repository root makes `benchmarks` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import REPO, machine, mean_std, save

PIPELINE = REPO / "pipelines" / "mosi.yaml"
STAGES = {"text": "text only", "audio": "audio only", "fusion": "fused, frozen encoders",
          "finetune": "fused, fine-tuned"}
FUSED = ("fusion", "finetune")
UNGATED = " without selection"
METRICS = ("Non0_acc_2", "Non0_F1_score", "Has0_acc_2", "Mult_acc_7", "MAE", "Corr")
PERCENT = {"Non0_acc_2", "Non0_F1_score", "Has0_acc_2", "Mult_acc_7"}
# MMSA's published CMU-MOSI results (thuiar/MMSA, results table): Non0_acc_2 / MAE / Corr.
PUBLISHED = {"TFN": (79.08, 0.947, 0.673), "MulT": (80.98, 0.880, 0.702),
             "MISA": (83.54, 0.777, 0.778)}
RIDGE_ALPHAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def prepare_cache(cache_dir: str) -> None:
    """Prepares the dataset once, before seeds run in parallel and would race for it.

    Args:
        cache_dir (str): The cache folder the stages use.
    """
    from mmsent.cli import build_cli

    configs = ["-c", str(PIPELINE.parent / "mosi" / "base.yaml"),
               "-c", str(PIPELINE.parent / "mosi" / "1_text.yaml")]
    cli = build_cli([*configs, f"--data.cache_dir={cache_dir}", "--trainer.logger=false"], run=False)
    cli.datamodule.prepare_data()


def run_seed(seed: int, output_dir: Path, cache_dir: str, extra: tuple[str, ...] = (),
             pipeline: Path = PIPELINE, only: str | None = None) -> dict:
    """Runs (or resumes) the whole pipeline for one seed in its own process.

    Args:
        seed (int): ``seed_everything`` of every stage.
        output_dir (Path): This seed's pipeline folder.
        cache_dir (str): The prepared dataset's cache folder.
        extra (tuple[str, ...]): Further arguments for every stage.
        pipeline (Path): The pipeline file; its stages must be those of :data:`STAGES`.
        only (str | None): Run this stage alone (``mmsent pipeline run --only``).

    Returns:
        dict: The pipeline manifest.
    """
    selected = ["--only", only] if only else []
    command = [sys.executable, "-m", "mmsent", "pipeline", "run", str(pipeline), "--no-wandb", *selected,
               "--output-dir", str(output_dir), "--", f"--seed_everything={seed}",
               "--trainer.enable_progress_bar=false", f"--data.cache_dir={cache_dir}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with (output_dir / "benchmark.log").open("w") as log:
        subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    manifest = json.loads((output_dir / "manifest.json").read_text())
    unfinished = [s for s in ([only] if only else STAGES) if manifest["stages"].get(s, {}).get("status") != "done"]
    if unfinished:
        raise RuntimeError(f"seed {seed}: stage(s) {unfinished} did not finish (interrupted?); "
                           f"see {output_dir / 'benchmark.log'}, then rerun to resume")
    print(f"seed {seed}: pipeline finished in {time.time() - started:.0f} s", flush=True)
    return manifest


def run_seed_without_selection(seed: int, output_dir: Path, cache_dir: str, manifest: dict) -> dict:
    """The fused stages of one seed again, without the selection, from its unimodal stages.

    Args:
        seed (int): The seed.
        output_dir (Path): This variant's pipeline folder.
        cache_dir (str): The prepared dataset's cache folder.
        manifest (dict): The seed's full pipeline manifest; its unimodal stages are reused.

    Returns:
        dict: The variant's manifest.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "manifest.json"
    if not path.is_file():
        unimodal = {k: v for k, v in manifest["stages"].items() if k not in FUSED}
        path.write_text(json.dumps({**manifest, "stages": unimodal}, indent=2))
    return run_seed(seed, output_dir, cache_dir, ("--selection=null",))


def selection_records(manifests: dict[int, dict]) -> dict:
    """Per fused stage, per seed, what the selection decided (from the manifest).

    Args:
        manifests (dict[int, dict]): Seed -> pipeline manifest.

    Returns:
        dict: ``{stage: [record per seed]}``, each record as the selection wrote it.
    """
    return {stage: [m["stages"][stage]["selection"] for m in manifests.values()] for stage in FUSED}


def stage_results(manifests: dict[int, dict]) -> dict:
    """Per stage, the validation and test metrics of every seed.

    Args:
        manifests (dict[int, dict]): Seed -> pipeline manifest.

    Returns:
        dict: ``{stage: {"val": {metric: [per seed]}, "test": {...}, "seconds": [...]}}``.
    """
    results = {}
    for stage in STAGES:
        records = [m["stages"][stage] for m in manifests.values()]
        results[stage] = {
            split: {name: [r["metrics"][split][name] for r in records]
                    for name in METRICS if name in records[0]["metrics"][split]}
            for split in ("val", "test")
        }
        if stage in FUSED:
            results[stage]["test"]["contribution/audio"] = [
                r["metrics"]["test"]["contribution/audio"] for r in records]
        results[stage]["seconds"] = [r["wall_time_s"] for r in records]
    return results


def ridge_baseline(cache_dir: str) -> dict:
    """Ridge regression on mean-pooled MiniLM sentence embeddings.

    The embedding of a clip is the mean of its cached MiniLM token states (what
    sentence-transformers' mean pooling computes), L2-normalized; the penalty is the
    one with the lowest validation MAE.

    Args:
        cache_dir (str): The prepared dataset's cache folder.

    Returns:
        dict: ``alpha``, and ``val`` and ``test`` metrics.
    """
    import torch
    from sklearn.linear_model import Ridge

    from mmsent.data.cache import prepare
    from mmsent.data.mosi import MOSISource
    from mmsent.metrics import regression_metrics

    splits = prepare(MOSISource(text_features="minilm"), cache_dir).splits
    features, labels = {}, {}
    for name, rows in splits.items():
        pooled = np.stack([np.asarray(t).mean(0) for t in rows.with_format("numpy")["text"]])
        features[name] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        labels[name] = np.asarray(rows["label"], dtype=np.float64)

    def score(model, split):
        pred = torch.tensor(model.predict(features[split]))
        return regression_metrics(pred, torch.tensor(labels[split]))

    fits = {a: Ridge(alpha=a).fit(features["train"], labels["train"]) for a in RIDGE_ALPHAS}
    alpha = min(fits, key=lambda a: score(fits[a], "valid")["MAE"])
    return {"alpha": alpha, "val": score(fits[alpha], "valid"), "test": score(fits[alpha], "test")}


def cell(name: str, values: list[float]) -> str:
    """Formats one metric as mean ± std (percent for accuracies and F1)."""
    scale = 100.0 if name in PERCENT else 1.0
    scaled = [scale * v for v in values]
    if name in PERCENT:
        spread = statistics.stdev(scaled) if len(scaled) > 1 else 0.0
        return f"{statistics.mean(scaled):.1f} ± {spread:.1f}"
    return mean_std(scaled)


def published_head() -> list[str]:
    """list[str]: The Markdown table's header and the published rows."""
    header = ["model", *METRICS, "val MAE", "time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, (acc, mae, corr) in PUBLISHED.items():
        row = {"Non0_acc_2": f"{acc:.2f}", "MAE": f"{mae:.3f}", "Corr": f"{corr:.3f}"}
        lines.append("| " + " | ".join([f"{name} (MMSA, published)", *[row.get(m, "-") for m in METRICS],
                                        "-", "-"]) + " |")
    return lines


def stage_row(label: str, stats: dict) -> str:
    """One stage's Markdown row: test metrics, validation MAE and seconds, mean ± std over seeds.

    Args:
        label (str): The row's name.
        stats (dict): The stage's entry of :func:`stage_results`.

    Returns:
        str: The row.
    """
    cells = [cell(m, stats["test"][m]) for m in METRICS]
    return "| " + " | ".join([label, *cells, mean_std(stats["val"]["MAE"]),
                              f"{statistics.mean(stats['seconds']):.0f}"]) + " |"


def markdown(results: dict, ridge: dict, seeds: list[int]) -> str:
    """The results table in Markdown.

    Args:
        results (dict): From :func:`stage_results`.
        ridge (dict): From :func:`ridge_baseline`.
        seeds (list[int]): The seeds run.

    Returns:
        str: The table, test split, mean ± std over seeds.
    """
    lines = published_head()
    ridge_cells = [cell(m, [ridge["test"][m]]).split(" ±")[0] for m in METRICS]
    lines.append("| " + " | ".join([f"ridge on mean-pooled MiniLM (alpha {ridge['alpha']:g})",
                                    *ridge_cells, f"{ridge['val']['MAE']:.3f}", "-"]) + " |")
    for stage, label in [*STAGES.items(), *((s + UNGATED, STAGES[s] + UNGATED) for s in FUSED)]:
        lines.append(stage_row(f"mmsent: {label}", results[stage]))
    comparisons = "\n".join(f"- {paired(results, stage)}" for stage in ("finetune", "finetune" + UNGATED))
    return "\n".join(lines) + f"\n\nTest split, mean ± std over seeds {seeds}.\n\n{comparisons}\n"


def paired(results: dict, stage: str = "finetune", reference: str = "text") -> str:
    """Per seed, how a fused stage differs from text only (same seed, same encoder).

    Args:
        results (dict): From :func:`stage_results`.
        stage (str): The fused stage.
        reference (str): The stage it is compared with.

    Returns:
        str: One Markdown line.
    """
    parts = []
    for name, scale, digits in (("Non0_acc_2", 100.0, 1), ("MAE", 1.0, 3)):
        ours, theirs = results[stage]["test"][name], results[reference]["test"][name]
        diffs = ", ".join(f"{scale * (a - b):+.{digits}f}" for a, b in zip(ours, theirs, strict=True))
        parts.append(f"{name} [{diffs}]")
    label = STAGES[stage.removesuffix(UNGATED)] + (UNGATED if stage.endswith(UNGATED) else "")
    return f"{label} minus {STAGES[reference]}, per seed (test): " + "; ".join(parts)


def selection_lines(results: dict, selection: dict) -> str:
    """What the selection decided per seed, and what the audio did to the test MAE without it.

    Args:
        results (dict): From :func:`stage_results`, with the variant's stages.
        selection (dict): From :func:`selection_records`.

    Returns:
        str: Markdown lines.
    """
    def signed(values):
        return "[" + ", ".join(f"{v:+.3f}" for v in values) + "]"

    def p_values(values):
        return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"

    audio = [next(t for t in reversed(r["tests"]) if t["modality"] == "audio") for r in selection["fusion"]]
    off = sum("audio" in r["switched_off"] for r in selection["fusion"])
    lines = ["\nModality selection per seed (validation, bootstrap over its 10 videos, alpha 0.05):\n",
             (f"- stage fusion: audio gain in MAE {signed([t['gain'] for t in audio])}, p "
              f"{p_values([t['p_value'] for t in audio])}; audio switched off on {off} of {len(audio)} seeds")]
    for stage in FUSED:
        records = selection[stage]
        lines.append(f"- stage {stage}: gain over its start {signed([r['start_gain'] for r in records])}, p "
                     f"{p_values([r['start_p_value'] for r in records])}; handed on "
                     f"{[r['handed_on'] for r in records]}")
    for stage in FUSED:
        test = results[stage + UNGATED]["test"]["contribution/audio"]
        lines.append(f"- {STAGES[stage]}{UNGATED}: test MAE with the audio masked minus full "
                     f"{signed(test)} (positive: the audio helps)")
    return "\n".join(lines) + "\n"


def main(args: list[str] | None = None) -> None:
    """Runs the benchmark.

    Args:
        args (list[str] | None): Command-line arguments; None reads ``sys.argv``.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--jobs", type=int, default=2, help="seeds run at the same time")
    parser.add_argument("--output-dir", default="runs/benchmark-mosi")
    parser.add_argument("--cache-dir", default="data/cache")
    parsed = parser.parse_args(args)
    started = time.time()
    # The stages run from the repository root; relative paths mean the same there.
    output = REPO / parsed.output_dir
    cache = str(REPO / parsed.cache_dir)
    prepare_cache(cache)
    with ThreadPoolExecutor(parsed.jobs) as pool:
        runs = {s: pool.submit(run_seed, s, output / f"seed{s}", cache) for s in parsed.seeds}
        manifests = {s: run.result() for s, run in runs.items()}
        runs = {s: pool.submit(run_seed_without_selection, s, output / "without-selection" / f"seed{s}",
                               cache, manifests[s]) for s in parsed.seeds}
        ungated = {s: run.result() for s, run in runs.items()}
    results = stage_results(manifests)
    results.update({stage + UNGATED: value for stage, value in stage_results(ungated).items() if stage in FUSED})
    selection = selection_records(manifests)
    ridge = ridge_baseline(cache)
    table = markdown(results, ridge, parsed.seeds) + selection_lines(results, selection)
    payload = {"command": "python benchmarks/quality/mosi.py " + " ".join(args or sys.argv[1:]),
               "machine": machine(), "seeds": parsed.seeds, "jobs": parsed.jobs,
               "wall_time_s": round(time.time() - started), "stages": results, "ridge": ridge,
               "published": PUBLISHED, "selection": selection, "table": table}
    path = save("mosi", payload)
    print(f"\n{table}\nmachine: {payload['machine']}; wall time {payload['wall_time_s']} s; "
          f"raw results: {path}")


if __name__ == "__main__":
    main()
