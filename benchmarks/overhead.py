"""Lightning's overhead: one training epoch through ``mmsent fit`` against a plain PyTorch loop.

For each unimodal stage, in one process with one thread, alternated within each
repeat: (a) the stage's ``Trainer.fit`` for one epoch as ``mmsent fit`` builds it
(its logger, checkpointing and per-step logging included; validation switched off
so both sides do the same work), timed from the start to the end of the training
epoch; (b) a hand-written loop (loss, backward, optimizer step) over the same
DataLoader, model class, batch size and thread count. Each side starts from a freshly
built model. Figure of merit: ``plain / fit`` seconds (target >= 0.95). Medians.

    python benchmarks/overhead.py --pipeline quickstart
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytorch_lightning as pl
import torch
from common import REPO, save_measurement
from data_loading import STAGES, epoch_seconds


class EpochTimer(pl.Callback):
    """Wall seconds of the training epoch alone."""

    def on_train_epoch_start(self, trainer, pl_module):
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.started


def build(pipeline: str, stage: str, config: str, root: str):
    from mmsent.cli import build_cli

    folder = REPO / "pipelines" / pipeline
    return build_cli(["-c", str(folder / "base.yaml"), "-c", str(folder / config), "--trainer.max_epochs=1",
                      "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
                      "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={root}"], run=False)


def fit_seconds(pipeline, stage, config, root) -> float:
    cli = build(pipeline, stage, config, root)
    timer = EpochTimer()
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return timer.seconds


def plain_seconds(pipeline, stage, config, root) -> float:
    cli = build(pipeline, stage, config, root)
    model, datamodule = cli.model, cli.datamodule
    datamodule.prepare_data()
    datamodule.setup("fit")
    datamodule.modalities = [stage]
    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    model.train()
    return epoch_seconds(model, optimizer, datamodule.train_dataloader())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", choices=sorted(STAGES), default="quickstart")
    parser.add_argument("--stages", nargs="*", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--root", default="/tmp/mmsent-overhead")
    args = parser.parse_args()
    torch.set_num_threads(1)
    stages = STAGES[args.pipeline]
    results = []
    for stage in args.stages or list(stages):
        sides = {"fit": fit_seconds, "plain": plain_seconds}
        times = {name: [] for name in sides}
        for repeat in range(args.repeats):
            for name in (list(sides) if repeat % 2 == 0 else list(reversed(sides))):
                times[name].append(sides[name](args.pipeline, stage, stages[stage], f"{args.root}/{stage}"))
        medians = {name: statistics.median(values) for name, values in times.items()}
        ratio = medians["plain"] / medians["fit"]
        results.append({"stage": stage, "seconds": times, "median_seconds": medians, "plain_vs_fit": ratio})
        print(f"{args.pipeline} {stage}: fit {medians['fit']:.3f} s, plain {medians['plain']:.3f} s per epoch; "
              f"mmsent reaches {ratio:.2f} of plain PyTorch", flush=True)
    path = save_measurement(f"overhead_{args.pipeline}",
                            f"python benchmarks/overhead.py --pipeline {args.pipeline} --repeats {args.repeats}",
                            results)
    print(f"raw results: {path}")


if __name__ == "__main__":
    main()
