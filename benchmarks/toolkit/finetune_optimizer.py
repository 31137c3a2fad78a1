"""Stage 5 with plain SGD against stage 5 with Adam, from the same stage-4 start.

Reads a finished pipeline (its file and output folder), takes the fine-tuning
stage's configs and the fusion stage's best checkpoint, and fine-tunes with each
optimizer over several seeds:

* ``sgd``: the stage as configured (SGD, one learning rate and schedule per modality);
* ``adam``: Adam at one learning rate for every parameter, no groups or schedules;
* ``sgd xK`` (with ``--sgd-scales K ...``): the configured SGD with every group's
  learning rate multiplied by K, schedules kept.

    python benchmarks/toolkit/finetune_optimizer.py --pipeline pipelines/quickstart.yaml --seeds 0 1 2

Results are kept per variant: a run with ``--variants`` replaces only those.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Run as a file, a script sees only its own folder; the repository root makes `benchmarks` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import (
    RESULTS,
    fit_and_test,
    machine,
    mean_std,
    save,
    stacked_setting,
)
from mmsent.pipeline import Pipeline, load_pipeline

METRICS = ("MAE", "Corr", "Non0_acc_2", "Mult_acc_7")


def stage_args(pipeline: Pipeline, output_dir: str | None, stage: str, source: str) -> tuple[list[str], dict]:
    """The CLI arguments of a stage, with its input checkpoints from the manifest.

    Args:
        pipeline (Pipeline): The loaded pipeline file.
        output_dir (str | None): Its output folder (default: the file's).
        stage (str): The stage to rerun.
        source (str): The stage whose best checkpoint it starts from.

    Returns:
        tuple[list[str], dict]: The arguments and the source stage's manifest record.
    """
    folder = Path(output_dir) if output_dir else pipeline.output_dir
    manifest = json.loads((folder / "manifest.json").read_text())
    record = manifest["stages"][source]
    target = pipeline.stage(stage)
    args = [arg for config in target.configs for arg in ("-c", str(config))] + pipeline.args + target.args
    for key, name in target.checkpoints.items():
        args.append(f"--{key}={manifest['stages'][name]['best_checkpoint']}")
    return args, record


def scaled_groups(configs: list[Path], scale: float) -> str:
    """The stage's parameter groups with every learning rate scaled, as a CLI argument.

    Args:
        configs (list[Path]): The stage's config files, later ones winning.
        scale (float): The factor.

    Returns:
        str: ``--model.init_args.param_groups=<json>``.
    """
    groups = stacked_setting(configs, "model", "param_groups", {})
    scaled = {name: {**options, "lr": options["lr"] * scale} for name, options in groups.items()}
    return "--model.init_args.param_groups=" + json.dumps(scaled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="pipelines/quickstart.yaml")
    parser.add_argument("--output-dir", default=None, help="the pipeline's output folder")
    parser.add_argument("--stage", default="finetune")
    parser.add_argument("--source", default="fusion")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--adam-lr", type=float, default=1e-3)
    parser.add_argument("--sgd-scales", type=float, nargs="*", default=[],
                        help="also run SGD with every group's learning rate scaled by these")
    parser.add_argument("--variants", nargs="*", default=None, help="run only these (e.g. 'sgd x3')")
    parser.add_argument("--runs", default="runs/benchmarks/finetune_optimizer")
    parser.add_argument("--table-only", action="store_true", help="print the saved results' table")
    options = parser.parse_args()
    name = Path(options.pipeline).stem
    saved = RESULTS / f"finetune_optimizer_{name}.json"
    if options.table_only:
        print(table(json.loads(saved.read_text())))
        return
    pipeline = load_pipeline(options.pipeline)
    base, start = stage_args(pipeline, options.output_dir, options.stage, options.source)
    # The optimizers are compared as they train, not after the selection's choice.
    base.append("--selection=null")
    variants = {
        "sgd": [],
        "adam": ["--model.init_args.optimizer=torch.optim.Adam",
                 f"--model.init_args.optimizer.init_args.lr={options.adam_lr}",
                 "--model.init_args.param_groups=null"],
    }
    for scale in options.sgd_scales:
        variants[f"sgd x{scale:g}"] = [scaled_groups(pipeline.stage(options.stage).configs, scale)]
    if options.variants is not None:
        variants = {variant: variants[variant] for variant in options.variants}
    start_metrics = start["metrics"]
    previous = json.loads(saved.read_text()) if saved.is_file() else {}
    # Results of other variants are kept only when they started from the same stage 4.
    results = previous["results"] if previous.get("stage4") == start_metrics else {}
    payload = {"machine": machine(), "seeds": options.seeds, "stage4": start_metrics, "results": results}
    for variant, extra in variants.items():
        results[variant] = []
        for seed in options.seeds:
            args = base + extra + [f"--seed_everything={seed}", "--trainer.logger=false",
                                   "--trainer.enable_progress_bar=false",
                                   f"--trainer.default_root_dir={options.runs}/{name}/{variant.replace(' ', '_')}/seed{seed}"]
            results[variant].append(fit_and_test(args))
            # Saved after every run so that an interrupted benchmark keeps what it measured.
            save(saved.stem, payload)
    print(table(payload))


def table(payload: dict) -> str:
    """The Markdown table of a benchmark's results.

    Args:
        payload (dict): What :func:`main` saved.

    Returns:
        str: The machine line and the table.
    """
    start = payload["stage4"]
    lines = [f"machine: {payload['machine']}", "",
             "| stage 5 optimizer | " + " | ".join(f"test {m}" for m in METRICS) + " | val MAE |",
             "|---" * (len(METRICS) + 2) + "|",
             "| (stage 4 start) | " + " | ".join(f"{start['test'][m]:.3f}" for m in METRICS)
             + f" | {start['val']['MAE']:.3f} |"]
    for variant, runs in payload["results"].items():
        cells = [mean_std([r[m] for r in runs]) for m in (*METRICS, "val_MAE")]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

if __name__ == "__main__":
    main()
