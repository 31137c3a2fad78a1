"""Seconds per training epoch: the DataModule's loader against the same batches in memory.

For each unimodal stage, one process with one thread trains the stage's model in a
plain loop (loss, backward, optimizer step) over three sources of the same batches,
alternated within each repeat so load on the shared machine hits all of them alike:

* ``loader``: the project's training DataLoader (batched reads from the cache),
* ``rows``: the former reader, one Arrow row at a time with numpy formatting and
  per-row collation (:func:`mmsent.data.collate`), for the before/after figure,
* ``memory``: the batches of one epoch of the loader, already collated in memory,
* ``copied``: those batches with every tensor copied afresh before its step: the
  least any loader that builds new batch tensors pays (allocation, a write and a
  read of fresh memory), which tells the loader's own cost from the copy's.

The figure of merit is ``memory / loader`` seconds (the loader's share of the
in-memory throughput; target >= 0.90): the ratio of the medians over repeats, and
the median of each repeat's own ratio (steadier on a loaded machine). Raw results go to
``benchmarks/results/data_loading_<pipeline>.json``.

    python benchmarks/speed/data_loading.py --pipeline quickstart
    MMSENT_MOSI_DIR=/path/to/cmu-mosi python benchmarks/speed/data_loading.py --pipeline mosi
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from functools import partial

os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys
from pathlib import Path

import torch

# Run as a file, a script sees only its own folder; the repository root makes `benchmarks` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from torch.utils.data import DataLoader

from benchmarks.common import REPO, save_measurement
from mmsent.data import collate

STAGES = {"quickstart": {"text": "1_text.yaml", "audio": "2_audio.yaml", "video": "3_video.yaml"},
          "mosi": {"text": "1_text.yaml", "audio": "2_audio.yaml"}}


def build_stage(pipeline: str, stage: str, config: str, overrides: tuple[str, ...] = ()):
    """The stage's model and DataModule as ``mmsent fit`` builds them.

    Args:
        pipeline (str): ``"quickstart"`` or ``"mosi"``.
        stage (str): The modality the stage trains (the only one its batches hold,
            as under ``mmsent fit``).
        config (str): The stage's config file in ``pipelines/<pipeline>/``.
        overrides (tuple[str, ...]): Further ``mmsent fit`` arguments (data paths).

    Returns:
        tuple: The LightningModule and the prepared DataModule.
    """
    from mmsent.cli import build_cli

    folder = REPO / "pipelines" / pipeline
    cli = build_cli(["-c", str(folder / "base.yaml"), "-c", str(folder / config),
                     "--trainer.logger=false", f"--data.modalities=[{stage}]", *overrides], run=False)
    cli.datamodule.prepare_data()
    cli.datamodule.setup("fit")
    return cli.model, cli.datamodule


def row_loader(datamodule) -> DataLoader:
    """The former training loader: one Arrow row at a time, collated per row."""
    spec = datamodule.spec
    columns = ["id", "transcript", "label", "clean_label"]
    for modality in spec.modalities:
        columns += [modality, f"{modality}_present"]
    rows = datamodule.split("train")
    return DataLoader(rows.select_columns(columns).with_format("numpy"),
                      batch_size=datamodule.batch_size, shuffle=True,
                      drop_last=len(rows) > datamodule.batch_size,
                      collate_fn=partial(collate, spec=spec))


class CopiedBatches:
    """Batches held in memory, each tensor cloned as it is handed out."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    def __iter__(self):
        for batch in self.batches:
            yield {key: value.clone() if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


def epoch_seconds(model, optimizer, batches) -> float:
    """Trains one pass over ``batches`` in a plain loop; returns the wall seconds."""
    torch.manual_seed(0)
    started = time.perf_counter()
    for batch in batches:
        loss = model.compute_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def measure(pipeline: str, stage: str, config: str, repeats: int, overrides: tuple[str, ...] = ()) -> dict:
    """Times the three sources of one stage's training batches, alternated."""
    model, datamodule = build_stage(pipeline, stage, config, overrides)
    model.train()
    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    loader = datamodule.train_dataloader()
    torch.manual_seed(0)
    in_memory = list(loader)
    # Loader and memory sit next to each other in either order, so the load of the
    # shared machine changes least between the two sides of the ratio.
    sources = {"loader": loader, "memory": in_memory, "copied": CopiedBatches(in_memory),
               "rows": row_loader(datamodule)}
    epoch_seconds(model, optimizer, in_memory)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in sources}
    for repeat in range(repeats):
        order = list(sources) if repeat % 2 == 0 else list(reversed(sources))
        for name in order:
            times[name].append(epoch_seconds(model, optimizer, sources[name]))
    medians = {name: statistics.median(values) for name, values in times.items()}
    held = sorted(datamodule.dataset("train").in_memory)
    return {"stage": stage, "clips": len(datamodule.split("train")), "batches": len(in_memory),
            "held_in_memory": held, "seconds": times, "median_seconds": medians,
            "loader_vs_memory": medians["memory"] / medians["loader"],
            "paired_loader_vs_memory": statistics.median(m / lo for m, lo in zip(times["memory"], times["loader"])),
            "rows_vs_memory": medians["memory"] / medians["rows"],
            "copied_vs_memory": medians["memory"] / medians["copied"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", choices=sorted(STAGES), default="quickstart")
    parser.add_argument("--stages", nargs="*", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data-root", default=None, help="the generated quickstart data (default: the config's)")
    parser.add_argument("--cache-dir", default=None, help="the prepared cache (default: the config's)")
    args = parser.parse_args()
    overrides = tuple(f"--{key}={value}" for key, value in (("data.source.init_args.root", args.data_root),
                                                             ("data.cache_dir", args.cache_dir)) if value)
    torch.set_num_threads(1)
    stages = STAGES[args.pipeline]
    results = []
    for stage in args.stages or list(stages):
        result = measure(args.pipeline, stage, stages[stage], args.repeats, overrides)
        results.append(result)
        m = result["median_seconds"]
        print(f"{args.pipeline} {stage}: loader {m['loader']:.3f} s, rows {m['rows']:.3f} s, "
              f"memory {m['memory']:.3f} s, copied {m['copied']:.3f} s per epoch; loader reaches "
              f"{result['loader_vs_memory']:.2f} of in-memory (per repeat: {result['paired_loader_vs_memory']:.2f}; "
              f"rows: {result['rows_vs_memory']:.2f})",
              flush=True)
    path = save_measurement(f"data_loading_{args.pipeline}",
                            f"python benchmarks/speed/data_loading.py --pipeline {args.pipeline} --repeats {args.repeats}",
                            results)
    print(f"raw results: {path}")


if __name__ == "__main__":
    main()
