"""CMU-MOSI with all-mpnet-base-v2: settings screened on validation, over seeds.

Runs ``pipelines/mosi_mpnet.yaml`` (or its text stage alone, ``--only text``) once per
seed, one process with one thread at a time, with the given overrides after ``--``.
Before the seeds, the token states the setting reads are computed and cached once
(timed on their own: the cost of freezing the lower layers is paid once per corpus),
so each stage's time is training and evaluation. Reported per stage: the validation
MAE of the selected checkpoint (what settings are chosen on), the test metrics (never
chosen on), the wall time per seed and the seconds per epoch (stage wall time over
epochs run). With ``--against NAME ...`` the setting is compared with earlier ones
seed by seed on validation MAE: the rule, fixed before the runs, keeps a change only
if it lowers the mean validation MAE by more than the standard error of the paired
differences. Raw results: ``benchmarks/results/mosi_mpnet_<name>.json``.

    export MMSENT_MOSI_DIR=/path/to/cmu-mosi
    # the text stage as configured: the top 2 of 12 layers fine-tuned over layer 10's cached states
    python benchmarks/quality/mosi_mpnet.py --name top2 --only text
    # everything frozen: mean-pooled last states under the same head
    python benchmarks/quality/mosi_mpnet.py --name frozen --only text --against top2 -- \\
        --data.source.init_args.text_layer=-1 --model.init_args.encoder.init_args.from_layer=-1
    # the whole pipeline (text, audio, fusion, fine-tuning)
    python benchmarks/quality/mosi_mpnet.py --name pipeline
    # pipelines/mosi.yaml (biLSTM over frozen states) with MPNet's last states instead of MiniLM's
    python benchmarks/quality/mosi_mpnet.py --name lstm --pipeline pipelines/mosi_mpnet_lstm.yaml
    # all of MPNet fine-tuned (pipelines/mosi_mpnet_whole.yaml), against the MiniLM pipeline's text stage
    python benchmarks/quality/mosi_mpnet.py --name whole --pipeline pipelines/mosi_mpnet_whole.yaml --against minilm pipeline
    # the CMU-MOSI table of BENCHMARKS.md from the raw results of the named settings
    python benchmarks/quality/mosi_mpnet.py --table frozen pipeline

Finished seeds are kept (``--output-dir``), so an interrupted run resumes. Seeds already in
the raw results file of the same name, setting and stages are kept there too, so
``--seeds 3 4`` adds two seeds to a row of seeds 0-2 without running them again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

# Run as a file, a script sees only its own folder; the repository root makes `benchmarks` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import REPO, machine, save
from benchmarks.peers.peer_mosi_seeds import summary as summary_of_peers
from benchmarks.quality.mosi import PUBLISHED, STAGES, run_seed

MPNET = REPO / "pipelines" / "mosi_mpnet.yaml"
REPORTED = ("Non0_acc_2", "MAE", "Corr")
# MMSA's names of the models the peer harness runs.
PEER_NAMES = {"lf_dnn": "LF_DNN", "tfn": "TFN", "lmf": "LMF", "mult": "MulT"}
RESULTS = Path(__file__).resolve().parents[1] / "results"
# MMSA's published Self-MM row on CMU-MOSI (thuiar/MMSA results table, BERT-base, three
# modalities): Non0_acc_2 / MAE / Corr.
SELF_MM = (85.46, 0.708, 0.796)
# The MiniLM pipeline's raw results (benchmarks/quality/mosi_finetuned_text.py), the row
# the MPNet settings are compared and tabled with.
MINILM_RESULTS = RESULTS / "mosi_finetuned_text_head128_batch8.json"
# Epochs each stage of pipelines/mosi_finetuned_text.yaml trains (its configs), to turn
# that benchmark's seconds per stage into seconds per epoch.
MINILM_EPOCHS = {"text": 6, "audio": None, "fusion": 2, "finetune": 1}


def cache_states(pipeline: Path, cache_dir: str, overrides: list[str]) -> float:
    """Computes (or finds) the cached token states the setting reads; returns the seconds taken.

    Args:
        pipeline (Path): The pipeline file; its text stage's configs give the source.
        cache_dir (str): The prepared dataset's cache folder.
        overrides (list[str]): The setting's overrides (``text_layer`` among them).

    Returns:
        float: Seconds, in a process of its own with one thread (near 0 when cached); 0
        when the text stage reads word-piece ids (no states to cache).
    """
    import yaml

    from mmsent.pipeline import load_pipeline

    source = {}
    for config in load_pipeline(pipeline).stage("text").configs:
        settings = yaml.safe_load(Path(config).read_text()) or {}
        source.update(settings.get("data", {}).get("source", {}).get("init_args", {}))
    if not source.get("text_features"):
        return 0.0
    layer = next((int(o.split("=", 1)[1]) for o in overrides if o.startswith("--data.source.init_args.text_layer=")),
                 source.get("text_layer", -1))
    code = ("import sys; from mmsent.data.cache import prepare; from mmsent.data.mosi import MOSISource; "
            "prepare(MOSISource(text_features=sys.argv[1], text_layer=int(sys.argv[2]), "
            "max_text_length=int(sys.argv[3])), sys.argv[4])")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = time.time()
    subprocess.run([sys.executable, "-c", code, source["text_features"], str(layer),
                    str(source.get("max_text_length", 64)), cache_dir],
                   cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.time() - started


def epochs_run(stage: dict) -> int:
    """int: How many epochs a stage trained, from its last checkpoint."""
    import torch

    return int(torch.load(stage["last_checkpoint"], map_location="cpu", weights_only=True)["epoch"]) + 1


def stage_records(manifest: dict, stages: list[str]) -> dict:
    """Per stage: validation MAE, test metrics, wall time, epochs and seconds per epoch.

    Args:
        manifest (dict): The seed's pipeline manifest.
        stages (list[str]): The stages run.

    Returns:
        dict: ``{stage: {"val_MAE", "test": {...}, "seconds", "epochs", "s_per_epoch"}}``, and
        for a fused stage ``"selection"``: the modalities switched off, the model handed on
        (``"start"`` or ``"trained"``), and the validation gain over the start with its p-value.
    """
    records = {}
    for name in stages:
        stage = manifest["stages"][name]
        epochs = epochs_run(stage)
        records[name] = {"val_MAE": stage["metrics"]["val"]["MAE"],
                         "test": {k: stage["metrics"]["test"][k] for k in REPORTED},
                         "seconds": stage["wall_time_s"], "epochs": epochs,
                         "s_per_epoch": stage["wall_time_s"] / epochs}
        if stage.get("selection"):
            chosen = stage["selection"]
            records[name]["selection"] = {"switched_off": chosen["switched_off"], "handed_on": chosen["handed_on"],
                                          "start_gain": chosen["start_gain"],
                                          "start_p_value": chosen["start_p_value"]}
    return records


def earlier_seeds(name: str, pipeline: str, overrides: list[str], stages: list[str]) -> dict[int, dict]:
    """Per-seed records of an earlier run of the same setting, from its raw results file.

    Args:
        name (str): The setting's name (``mosi_mpnet_<name>.json``).
        pipeline (str): The pipeline file, as given on the command line.
        overrides (list[str]): The setting's overrides.
        stages (list[str]): The stages run.

    Returns:
        dict[int, dict]: Seed -> :func:`stage_records`; empty when there is no such file,
        or when it holds another pipeline, other overrides or other stages.
    """
    path = RESULTS / f"mosi_mpnet_{name}.json"
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    rows = {int(s): r for s, r in earlier["per_seed"].items()}
    if earlier["pipeline"] != pipeline or earlier["overrides"] != overrides or any(
            list(r) != stages for r in rows.values()):
        return {}
    return rows


def mean_std(values: list[float]) -> list[float]:
    """list[float]: ``[mean, sample std]`` (std 0 for one value)."""
    return [statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def summary(per_seed: dict[int, dict], stages: list[str]) -> dict:
    """Mean and standard deviation over seeds, per stage.

    Args:
        per_seed (dict[int, dict]): Seed -> :func:`stage_records`.
        stages (list[str]): The stages run.

    Returns:
        dict: ``{stage: {"val_MAE": [m, s], "test_<metric>": [m, s], "seconds": ..., "s_per_epoch": ...}}``.
    """
    out = {}
    for name in stages:
        rows = [r[name] for r in per_seed.values()]
        out[name] = {"val_MAE": mean_std([r["val_MAE"] for r in rows]),
                     **{f"test_{k}": mean_std([r["test"][k] for r in rows]) for k in REPORTED},
                     "seconds": mean_std([r["seconds"] for r in rows]),
                     "s_per_epoch": mean_std([r["s_per_epoch"] for r in rows])}
    return out


def compare(per_seed: dict[int, dict], reference: dict, stage: str) -> dict | None:
    """Paired validation-MAE comparison with an earlier setting on their common seeds.

    Args:
        per_seed (dict[int, dict]): This setting's seeds.
        reference (dict): The earlier setting's raw results file (``per_seed`` keyed by str).
        stage (str): The stage compared.

    Returns:
        dict | None: Seeds, mean difference (this minus reference; negative is better),
        its standard error, and whether the rule keeps the change; None without two
        common seeds.
    """
    theirs = {int(s): r for s, r in reference["per_seed"].items()}
    common = sorted(set(per_seed) & set(theirs))
    if len(common) < 2:
        return None
    diffs = [per_seed[s][stage]["val_MAE"] - theirs[s][stage]["val_MAE"] for s in common]
    error = statistics.stdev(diffs) / math.sqrt(len(diffs))
    mean = statistics.mean(diffs)
    return {"against": reference["name"], "seeds": common, "val_MAE_diff": mean, "standard_error": error,
            "kept": mean < -error}


def reference_results(name: str) -> dict:
    """An earlier setting's raw results, for :func:`compare`.

    Args:
        name (str): A setting of this script, or ``"minilm"``: the MiniLM pipeline
            (:data:`MINILM_RESULTS`), its text stage per seed.

    Returns:
        dict: ``{"name", "per_seed": {seed: {stage: {"val_MAE": ...}}}}`` at least.
    """
    if name != "minilm":
        return json.loads((RESULTS / f"mosi_mpnet_{name}.json").read_text())
    minilm = json.loads(MINILM_RESULTS.read_text())
    val = minilm["stages"]["minilm"]["text"]["val"]["MAE"]
    return {"name": name, "per_seed": {str(seed): {"text": {"val_MAE": mae}} for seed, mae in zip(minilm["seeds"], val)}}


def _cells(acc: list[float], mae: list[float], corr: list[float]) -> list[str]:
    def fmt(values, scale, digits):
        values = [scale * v for v in values]
        if len(values) == 1:
            return f"{values[0]:.{digits}f}"
        return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"
    return [fmt(acc, 100, 1), fmt(mae, 1, 3), fmt(corr, 1, 3)]


def _span(seeds: list[int]) -> str:
    """str: Seeds as ``0-4`` when consecutive, else listed."""
    if len(seeds) > 1 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


def table(names: list[str]) -> str:
    """The CMU-MOSI comparison table in Markdown, from raw result files only.

    Rows: MMSA's published TFN, MulT, MISA and Self-MM; MMSA's models as run here over
    seeds by ``benchmarks/peers/peer_mosi_seeds.py``; the MiniLM pipeline (``mosi_finetuned_text.py``);
    then every stage of each named setting of this script.

    Args:
        names (list[str]): Settings of this script (``mosi_mpnet_<name>.json``).

    Returns:
        str: The table.
    """
    head = ["model", "seeds", "Non0_acc_2", "MAE", "Corr", "val MAE", "s per seed", "s per epoch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, (acc, mae, corr) in {**PUBLISHED, "Self-MM": SELF_MM}.items():
        lines.append(f"| {model} (MMSA, published) | - | {acc:.2f} | {mae:.3f} | {corr:.3f} | - | - | - |")
    peers = RESULTS / "peer_mosi_seeds.json"
    for model, row in (summary_of_peers(json.loads(peers.read_text())) if peers.is_file() else {}).items():
        cells = [f"{scale * row[k][0]:.{digits}f}" + (f" ± {scale * row[k][1]:.{digits}f}" if len(row["seeds"]) > 1 else "")
                 for k, scale, digits in (("Non0_acc_2", 100, 1), ("MAE", 1, 3), ("Corr", 1, 3))]
        lines.append(f"| {PEER_NAMES.get(model, model)} (MMSA 2.2.1 run here, MiniLM states + audio, "
                     f"`peer_mosi_seeds.py`) | {_span(row['seeds'])} | " + " | ".join(cells)
                     + f" | - | {row['wall_s'][0]:.0f} | {row['epoch_s'][0]:.2f} |")
    minilm = json.loads(MINILM_RESULTS.read_text())
    stages = minilm["stages"]["minilm"]
    per_seed = [sum(stages[s]["seconds"][i] for s in STAGES) for i in range(len(minilm["seeds"]))]
    for stage in ("text", "finetune"):
        test = stages[stage]["test"]
        epochs = MINILM_EPOCHS[stage]
        lines.append(f"| MiniLM fine-tuned (`mosi_finetuned_text.yaml`): {STAGES[stage]} | "
                     f"{min(minilm['seeds'])}-{max(minilm['seeds'])} | "
                     + " | ".join(_cells(test["Non0_acc_2"], test["MAE"], test["Corr"]))
                     + f" | {statistics.mean(stages[stage]['val']['MAE']):.3f} | {statistics.mean(per_seed):.0f} | "
                     f"{statistics.mean(stages[stage]['seconds']) / epochs:.1f} |")
    for name in names:
        result = json.loads((RESULTS / f"mosi_mpnet_{name}.json").read_text())
        rows = result["per_seed"]
        seeds = _span([int(s) for s in rows])
        for stage in rows[next(iter(rows))]:
            values = [r[stage] for r in rows.values()]
            total = statistics.mean(sum(r[s]["seconds"] for s in r) for r in rows.values())
            lines.append(f"| all-mpnet-base-v2 `{name}`: {STAGES[stage]} | {seeds} | "
                         + " | ".join(_cells(*[[v["test"][k] for v in values] for k in REPORTED]))
                         + f" | {statistics.mean(v['val_MAE'] for v in values):.3f} | {total:.0f} | "
                         f"{statistics.mean(v['s_per_epoch'] for v in values):.1f} |")
    return "\n".join(lines)


def main(args: list[str] | None = None) -> None:
    """Runs the benchmark.

    Args:
        args (list[str] | None): Command-line arguments; None reads ``sys.argv``.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if argv[:1] == ["--table"]:
        print(table(argv[1:]))
        return
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the setting's name, for folders and the results file")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--only", choices=list(STAGES), help="run this stage alone")
    parser.add_argument("--pipeline", default=str(MPNET.relative_to(REPO)), help="the pipeline file")
    parser.add_argument("--against", nargs="+", default=[],
                        help="earlier settings' names to compare with on validation MAE "
                             "(minilm: the MiniLM pipeline's text stage)")
    parser.add_argument("--output-dir", default="runs/benchmark-mosi-mpnet")
    parser.add_argument("--cache-dir", default="data/cache")
    parsed = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    started = time.time()
    cache = str(REPO / parsed.cache_dir)
    pipeline = REPO / parsed.pipeline
    cache_seconds = cache_states(pipeline, cache, overrides)
    print(f"token states cached in {cache_seconds:.0f} s", flush=True)
    stages = [parsed.only] if parsed.only else list(STAGES)
    per_seed = earlier_seeds(parsed.name, parsed.pipeline, overrides, stages)
    earlier = json.loads((RESULTS / f"mosi_mpnet_{parsed.name}.json").read_text()) if per_seed else {}
    runs = earlier.get("runs", [{k: earlier[k] for k in ("command", "date", "seeds", "wall_time_s")}] if earlier else [])
    for seed in parsed.seeds:
        manifest = run_seed(seed, REPO / parsed.output_dir / parsed.name / f"seed{seed}", cache,
                            tuple(overrides), pipeline=pipeline, only=parsed.only)
        per_seed[seed] = stage_records(manifest, stages)
    per_seed = dict(sorted(per_seed.items()))
    stats = summary(per_seed, stages)
    payload = {"name": parsed.name, "command": "python benchmarks/quality/mosi_mpnet.py " + " ".join(argv),
               "machine": machine(), "date": datetime.now(UTC).isoformat(timespec="minutes"), "threads": 1,
               "pipeline": parsed.pipeline, "seeds": sorted(per_seed), "overrides": overrides, "cache_seconds": round(cache_seconds),
               "wall_time_s": round(time.time() - started), "per_seed": per_seed, "summary": stats}
    # Each run that added seeds to this file: its command, date, seeds and wall time.
    payload["runs"] = [*runs, {k: payload[k] for k in ("command", "date", "wall_time_s")} | {"seeds": parsed.seeds}]
    if parsed.against:
        payload["comparisons"] = [compare(per_seed, reference_results(name), stages[0]) for name in parsed.against]
    path = save(f"mosi_mpnet_{parsed.name}", payload)
    for name in stages:
        cells = ", ".join(f"{k} {m:.4f} ± {s:.4f}" for k, (m, s) in stats[name].items())
        per = ", ".join(f"{s}: {r[name]['val_MAE']:.3f}" for s, r in per_seed.items())
        print(f"{parsed.name} {name}: {cells}\n  val MAE per seed: {per}")
    for name, comparison in zip(parsed.against, payload.get("comparisons", [])):
        print(f"against {name}: {comparison}")
    print(f"raw results: {path}")


if __name__ == "__main__":
    main()
