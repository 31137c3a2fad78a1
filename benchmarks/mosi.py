"""CMU-MOSI accuracy of the staged pipeline, over seeds, beside published results.

Runs ``pipelines/mosi.yaml`` (text, audio, fusion with frozen encoders, fine-tuning)
once per seed, each stage keeping its checkpoint with the lowest validation MAE,
and reports the test metrics of those checkpoints as mean and standard deviation
over seeds. Beside them: a ridge regression on mean-pooled MiniLM sentence
embeddings (its penalty chosen by validation MAE) and the published MMSA rows.
Raw results go to ``benchmarks/results/mosi.json``; a Markdown table is printed.

    python benchmarks/mosi.py                    # 5 seeds, 2 at a time
    python benchmarks/mosi.py --seeds 0 1 --jobs 1

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
from common import REPO, machine, mean_std, save

PIPELINE = REPO / "pipelines" / "mosi.yaml"
STAGES = {"text": "text only", "audio": "audio only", "fusion": "fused, frozen encoders",
          "finetune": "fused, fine-tuned"}
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
    from mmsent.main import build_cli

    configs = ["-c", str(PIPELINE.parent / "mosi" / "base.yaml"),
               "-c", str(PIPELINE.parent / "mosi" / "1_text.yaml")]
    cli = build_cli([*configs, f"--data.cache_dir={cache_dir}", "--trainer.logger=false"], run=False)
    cli.datamodule.prepare_data()


def run_seed(seed: int, output_dir: Path, cache_dir: str) -> dict:
    """Runs (or resumes) the whole pipeline for one seed in its own process.

    Args:
        seed (int): ``seed_everything`` of every stage.
        output_dir (Path): This seed's pipeline folder.
        cache_dir (str): The prepared dataset's cache folder.

    Returns:
        dict: The pipeline manifest.
    """
    command = [sys.executable, "-m", "mmsent", "pipeline", "run", str(PIPELINE), "--no-wandb",
               "--output-dir", str(output_dir), "--", f"--seed_everything={seed}",
               "--trainer.enable_progress_bar=false", f"--data.cache_dir={cache_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with (output_dir / "benchmark.log").open("w") as log:
        subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    manifest = json.loads((output_dir / "manifest.json").read_text())
    unfinished = [s for s in STAGES if manifest["stages"].get(s, {}).get("status") != "done"]
    if unfinished:
        raise RuntimeError(f"seed {seed}: stage(s) {unfinished} did not finish (interrupted?); "
                           f"see {output_dir / 'benchmark.log'}, then rerun to resume")
    print(f"seed {seed}: pipeline finished in {time.time() - started:.0f} s", flush=True)
    return manifest


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
        if stage in ("fusion", "finetune"):
            results[stage]["test"]["contribution/audio"] = [
                r["metrics"]["test"]["contribution/audio"] for r in records]
        results[stage]["seconds"] = [r["wall_time_s"] for r in records]
    return results


def validation_contribution(manifests: dict[int, dict], cache_dir: str) -> dict:
    """How much the audio lowers each fused stage's validation MAE, per seed.

    The pipeline reports the same ablation on the test split
    (``test/contribution/audio``); this is its validation counterpart.

    Args:
        manifests (dict[int, dict]): Seed -> pipeline manifest.
        cache_dir (str): The prepared dataset's cache folder.

    Returns:
        dict: Per fused stage, per seed: validation MAE with the audio masked minus
        the full validation MAE (positive: the audio helps).
    """
    import torch

    from mmsent.main import build_cli
    from mmsent.metrics import regression_metrics

    configs = [f"{PIPELINE.parent}/mosi/{name}" for name in ("base.yaml", "encoders.yaml", "3_fusion.yaml")]
    cli = build_cli([*[a for c in configs for a in ("-c", c)], f"--data.cache_dir={cache_dir}",
                     "--trainer.logger=false"], run=False)
    model, batches = cli.model.eval(), list(cli.datamodule.val_dataloader())
    labels = torch.cat([b["label"] for b in batches])

    def mae(masked: bool) -> float:
        with torch.no_grad():
            preds = [model({**b, "audio_present": b["audio_present"] & (not masked)}) for b in batches]
        return regression_metrics(torch.cat(preds), labels)["MAE"]

    result = {}
    for stage in ("fusion", "finetune"):
        result[stage] = []
        for manifest in manifests.values():
            checkpoint = torch.load(manifest["stages"][stage]["best_checkpoint"], weights_only=True)
            model.load_state_dict(checkpoint["state_dict"])
            result[stage].append(mae(True) - mae(False))
    return result


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
    from mmsent.data.tables import MOSISource
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


def markdown(results: dict, ridge: dict, seeds: list[int]) -> str:
    """The results table in Markdown.

    Args:
        results (dict): From :func:`stage_results`.
        ridge (dict): From :func:`ridge_baseline`.
        seeds (list[int]): The seeds run.

    Returns:
        str: The table, test split, mean ± std over seeds.
    """
    header = ["model", *METRICS, "val MAE", "time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, (acc, mae, corr) in PUBLISHED.items():
        row = {"Non0_acc_2": f"{acc:.2f}", "MAE": f"{mae:.3f}", "Corr": f"{corr:.3f}"}
        lines.append("| " + " | ".join([f"{name} (MMSA, published)", *[row.get(m, "-") for m in METRICS],
                                        "-", "-"]) + " |")
    ridge_cells = [cell(m, [ridge["test"][m]]).split(" ±")[0] for m in METRICS]
    lines.append("| " + " | ".join([f"ridge on mean-pooled MiniLM (alpha {ridge['alpha']:g})",
                                    *ridge_cells, f"{ridge['val']['MAE']:.3f}", "-"]) + " |")
    for stage, label in STAGES.items():
        stats = results[stage]
        cells = [cell(m, stats["test"][m]) for m in METRICS]
        lines.append("| " + " | ".join([f"mmsent: {label}", *cells, mean_std(stats["val"]["MAE"]),
                                        f"{statistics.mean(stats['seconds']):.0f}"]) + " |")
    return "\n".join(lines) + f"\n\nTest split, mean ± std over seeds {seeds}.\n\n{paired(results)}\n"


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
    return f"{STAGES[stage]} minus {STAGES[reference]}, per seed (test): " + "; ".join(parts)


def contribution_lines(results: dict, audio_val: dict) -> str:
    """The audio's contribution to each fused stage on validation and on test.

    Args:
        results (dict): From :func:`stage_results` (holds the test ablation).
        audio_val (dict): From :func:`validation_contribution`.

    Returns:
        str: Markdown lines, per seed, MAE with the audio masked minus full MAE.
    """
    title = ("\nAudio contribution, MAE with the audio masked minus full MAE, per seed "
             "(positive: the audio helps):\n")
    lines = [title]
    for stage, val in audio_val.items():
        test = results[stage]["test"]["contribution/audio"]
        lines.append(f"- {STAGES[stage]}: validation [{', '.join(f'{v:+.3f}' for v in val)}]; "
                     f"test [{', '.join(f'{v:+.3f}' for v in test)}]")
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
    results = stage_results(manifests)
    ridge = ridge_baseline(cache)
    audio = validation_contribution(manifests, cache)
    table = markdown(results, ridge, parsed.seeds) + contribution_lines(results, audio)
    payload = {"command": "python benchmarks/mosi.py " + " ".join(args or sys.argv[1:]),
               "machine": machine(), "seeds": parsed.seeds, "jobs": parsed.jobs,
               "wall_time_s": round(time.time() - started), "stages": results, "ridge": ridge,
               "published": PUBLISHED, "audio_contribution_val": audio, "table": table}
    path = save("mosi", payload)
    print(f"\n{table}\nmachine: {payload['machine']}; wall time {payload['wall_time_s']} s; "
          f"raw results: {path}")


if __name__ == "__main__":
    main()
