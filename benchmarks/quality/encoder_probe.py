"""How much of its own modality's noise-free score each encoder of a fused model holds.

On the generated default dataset, ``label.csv`` records each clip's per-modality score
(``text_score``, ``audio_score``, ``video_score``). For each encoder of a fused
checkpoint, a ridge regression from its embedding to its own modality's score is fitted
on the training split and its test predictions are correlated with the true score (a
linear probe). Given the label's weights, the probes bound what the fused model's error
can be: ``error variance ~ sum_m w_m^2 var(score_m) (1 - r_m^2) + noise``.

    OMP_NUM_THREADS=1 python benchmarks/quality/encoder_probe.py runs/quickstart_seeds/seed{0,1,2,3,4}
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

# Run as a file, a script sees only its own folder; the repository root makes `benchmarks` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import machine, save
from benchmarks.quickstart_stages import collect_embeddings
from mmsent.data.schema import ID_SEPARATOR

STAGES = ("fusion", "finetune")


def ridge_probe(train: np.ndarray, target: np.ndarray, test: np.ndarray, penalty: float = 1e-2) -> np.ndarray:
    """Test predictions of a ridge regression (with intercept) fitted on the training rows."""
    design = np.c_[train, np.ones(len(train))]
    weights = np.linalg.solve(design.T @ design + penalty * np.eye(design.shape[1]), design.T @ target)
    return np.c_[test, np.ones(len(test))] @ weights


def probe_stage(run: Path, stage: str) -> dict[str, float]:
    """The probe correlations of one stage's selected model in a pipeline run folder.

    Args:
        run (Path): A quickstart pipeline output folder (``manifest.json`` in it).
        stage (str): ``fusion`` or ``finetune``.

    Returns:
        dict[str, float]: Modality -> test correlation of the probe with its own score.
    """
    from mmsent.cli import build_cli
    from mmsent.tasks.checkpoints import load_weights

    record = json.loads((run / "manifest.json").read_text())["stages"][stage]
    cli = build_cli(["-c", record["config"], "--trainer.logger=false"], run=False)
    load_weights(cli.model, record["best_checkpoint"])
    data = cli.datamodule
    data.prepare_data()
    data.setup("fit")
    data.setup("test")
    scores = pd.read_csv(Path(data.source.root) / "label.csv", dtype={"video_id": str, "clip_id": str})
    scores.index = scores["video_id"] + ID_SEPARATOR + scores["clip_id"]
    train = collect_embeddings(cli.model.model, data.split_dataloader("train"))
    test = collect_embeddings(cli.model.model, data.split_dataloader("test"))
    found = {}
    for modality in cli.model.model.encoders:
        column = f"{modality}_score"
        predicted = ridge_probe(train[modality].numpy(), scores.loc[train["id"], column].to_numpy(),
                                test[modality].numpy())
        found[modality] = float(np.corrcoef(predicted, scores.loc[test["id"], column].to_numpy())[0, 1])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="quickstart pipeline output folders, one per seed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {str(run): {stage: probe_stage(run, stage) for stage in STAGES} for run in args.runs}
    for stage in STAGES:
        for modality in ("text", "audio", "video"):
            values = [r[stage][modality] for r in results.values() if modality in r[stage]]
            if values:
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                print(f"{stage} {modality}: probe corr {statistics.mean(values):.3f} ± {spread:.3f} "
                      f"({', '.join(f'{v:.3f}' for v in values)})")
    print("raw results:", save("encoder_probe", {"machine": machine(), "date": datetime.date.today().isoformat(),
                                                 "runs": results}))


if __name__ == "__main__":
    main()
