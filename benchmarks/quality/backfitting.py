"""Unimodal stages trained on each other's residuals (backfitting), on the generated data.

The generated label is, up to noise, a sum of three per-modality scores. A unimodal
stage trained on the label sees the other two modalities' parts as noise. Here each
step trains one modality's stage again, from scratch with its own quickstart
configuration, on the label minus the other modalities' current stage predictions
(in-sample: the other stages saw these training labels). After every step the three
current stages are combined by least squares fitted on the validation split (the
weights and a constant), and each stage's test predictions are correlated with its
own modality's noise-free score.

    OMP_NUM_THREADS=1 python benchmarks/quality/backfitting.py runs/quickstart_seeds_lstm/seed0 --out /tmp/backfit
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

# Run as a file, a script sees only its own folder; the repository root makes `benchmarks` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import machine, save
from mmsent.data.schema import ID_SEPARATOR, SPLITS

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {"text": "1_text.yaml", "audio": "2_audio.yaml", "video": "3_video.yaml"}


def stage_arguments(modality: str, root: Path, cache: str) -> list[str]:
    """The quickstart configuration of one unimodal stage, its data under ``root``."""
    folder = REPO / "pipelines" / "quickstart"
    return ["-c", str(folder / "base.yaml"), "-c", str(folder / CONFIGS[modality]),
            f"--data.source.init_args.root={root}", f"--data.cache_dir={cache}"]


def predict(modality: str, checkpoint: str, root: Path, cache: str) -> pd.Series:
    """One stage's predictions for every clip of every split, indexed by clip id."""
    from mmsent.cli import build_cli
    from mmsent.tasks.checkpoints import load_weights

    cli = build_cli([*stage_arguments(modality, root, cache), "--trainer.logger=false"], run=False)
    load_weights(cli.model, checkpoint)
    data = cli.datamodule
    data.prepare_data()
    data.setup("fit")
    data.setup("test")
    model = cli.model.eval()
    ids, values = [], []
    with torch.no_grad():
        for split in SPLITS:
            for batch in data.split_dataloader(split):
                ids += list(batch["id"])
                values.append(model(batch))
    return pd.Series(torch.cat(values).numpy(), index=ids)


def residual_dataset(table: pd.DataFrame, offsets: pd.Series, source: Path, folder: Path) -> Path:
    """A copy of the generated dataset whose label is the label minus ``offsets``.

    The media are linked, not copied; the residual is centred on its training median
    and kept inside the label range.
    """
    ids = table["video_id"] + ID_SEPARATOR + table["clip_id"]
    residual = table["label"].to_numpy() - offsets.loc[ids].to_numpy()
    residual -= np.median(residual[table["mode"].to_numpy() == "train"])
    folder.mkdir(parents=True, exist_ok=True)
    table.assign(label=np.clip(residual, -3, 3).round(4)).to_csv(folder / "label.csv", index=False)
    (folder / "generated.json").write_text((source / "generated.json").read_text())
    if not (folder / "Raw").exists():
        (folder / "Raw").symlink_to(source.resolve() / "Raw")
    return folder


def train(modality: str, root: Path, cache: str, seed: int, folder: Path) -> str:
    """Fits one unimodal stage with ``mmsent fit``; returns its best checkpoint."""
    command = [sys.executable, "-m", "mmsent", "fit", *stage_arguments(modality, root, cache),
               f"--seed_everything={seed}", f"--trainer.default_root_dir={folder}",
               f"--checkpoint.dirpath={folder / 'checkpoints'}", "--trainer.enable_progress_bar=false"]
    with (folder.parent / f"{folder.name}.log").open("w") as log:
        subprocess.run(command, check=True, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                       env={**os.environ, "WANDB_MODE": "disabled"})
    (best,) = (folder / "checkpoints").glob("best-*.ckpt")
    return str(best)


def evaluate(predictions: dict[str, pd.Series], table: pd.DataFrame) -> dict:
    """Late fusion fitted on validation, and each stage's test correlation with its own score."""
    indexed = table.set_index(table["video_id"] + ID_SEPARATOR + table["clip_id"])

    def design(split):
        ids = indexed.index[indexed["mode"] == split]
        columns = [predictions[m].loc[ids].to_numpy() for m in CONFIGS]
        return np.c_[np.stack(columns, 1), np.ones(len(ids))], indexed.loc[ids, "label"].to_numpy(), ids

    val, val_label, _ = design("valid")
    test, test_label, test_ids = design("test")
    weights = np.linalg.lstsq(val, val_label, rcond=None)[0]
    own = {m: float(np.corrcoef(predictions[m].loc[test_ids], indexed.loc[test_ids, f"{m}_score"])[0, 1])
           for m in CONFIGS}
    return {"val_MAE": float(np.abs(val @ weights - val_label).mean()),
            "test_MAE": float(np.abs(test @ weights - test_label).mean()),
            "weights": [round(float(w), 4) for w in weights], "own_corr": own}


def backfit(run: Path, steps: list[str], out: Path) -> list[dict]:
    """Runs the steps from one quickstart pipeline run's unimodal stages.

    Args:
        run (Path): A finished quickstart pipeline run (its manifest names the stages'
            checkpoints and its configs the seed and the data).
        steps (list[str]): Modalities to retrain, in order.
        out (Path): Scratch folder for the residual datasets, caches and fits.

    Returns:
        list[dict]: One record per step (the first: the run's own stages).
    """
    manifest = json.loads((run / "manifest.json").read_text())["stages"]
    config = (run / "text" / "lightning_logs" / "version_0" / "config.yaml").read_text()
    seed = int(next(line.split(":")[1] for line in config.splitlines() if line.startswith("seed_everything:")))
    source = REPO / "data" / "generated" / "quickstart"
    cache = str(REPO / "data" / "cache")
    table = pd.read_csv(source / "label.csv", dtype={"video_id": str, "clip_id": str})
    checkpoints = {m: manifest[m]["best_checkpoint"] for m in CONFIGS}
    predictions = {m: predict(m, checkpoints[m], source, cache) for m in CONFIGS}
    records = [{"step": "stages 1-3", **evaluate(predictions, table)}]
    print(json.dumps(records[-1]), flush=True)
    for index, modality in enumerate(steps):
        offsets = sum(predictions[m] for m in CONFIGS if m != modality)
        root = residual_dataset(table, offsets, source, out / f"data{index}_{modality}")
        checkpoints[modality] = train(modality, root, str(out / "cache"), seed, out / f"fit{index}_{modality}")
        predictions[modality] = predict(modality, checkpoints[modality], root, str(out / "cache"))
        records.append({"step": f"{modality} on the others' residual", **evaluate(predictions, table)})
        print(json.dumps(records[-1]), flush=True)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="quickstart pipeline output folders, one per seed")
    parser.add_argument("--steps", nargs="+", default=["text", "audio", "video", "text"], choices=list(CONFIGS))
    parser.add_argument("--text-config", default=CONFIGS["text"],
                        help="the text stage's file in pipelines/quickstart (1_text_minilm.yaml: MiniLM fine-tuned)")
    parser.add_argument("--out", type=Path, default=Path("runs/backfitting"))
    parser.add_argument("--name", default="backfitting")
    args = parser.parse_args()
    torch.set_num_threads(1)
    CONFIGS["text"] = args.text_config
    results = {str(run): backfit(run, args.steps, args.out / run.name) for run in args.runs}
    payload = {"command": "python benchmarks/quality/backfitting.py " + " ".join(sys.argv[1:]), "machine": machine(),
               "date": datetime.date.today().isoformat(), "steps": args.steps, "text_config": args.text_config, "runs": results}
    print(f"raw results: {save(args.name, payload)}")


if __name__ == "__main__":
    main()
