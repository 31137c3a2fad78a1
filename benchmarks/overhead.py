"""Lightning's overhead: one training epoch through ``mmsent fit`` against a plain PyTorch loop.

For each quickstart stage, in one process with one thread, alternated within each
repeat: (a) the stage's ``Trainer.fit`` as ``mmsent fit`` builds it (its logger,
checkpointing and per-step logging included; validation switched off so both sides
do the same work), its epoch timed from the training loader's ``iter()`` to the end
of the epoch, the checkpoint written then included; (b) a hand-written loop (loss,
backward, optimizer step) over the same DataLoader, model, batch size and thread
count. Each side starts from a freshly built model and trains ``--epochs`` epochs,
the last one timed (1: the first epoch, whose checkpoint hashes the frozen weights
it leaves out; 2: a steady epoch). The fused stages start from the unimodal
(fusion) and fused (fine-tune) checkpoints of a finished quickstart run, as the
pipeline hands them on. Figure of merit: ``plain / fit`` seconds (target >= 0.95).
Medians.

    python benchmarks/overhead.py --data-root data/generated/quickstart --cache-dir data/cache \\
        --run runs/quickstart
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytorch_lightning as pl
import torch
from common import REPO, save_measurement
from data_loading import epoch_seconds

from mmsent.data.datamodule import model_modalities

CONFIGS = {"text": ["1_text.yaml"], "audio": ["2_audio.yaml"], "video": ["3_video.yaml"],
           "fusion": ["4_fusion.yaml"], "finetune": ["4_fusion.yaml", "5_finetune.yaml"]}
HANDED_ON = {"fusion": {"model.init_args.text_checkpoint": "text", "model.init_args.audio_checkpoint": "audio",
                        "model.init_args.video_checkpoint": "video"},
             "finetune": {"model.init_args.init_checkpoint": "fusion"}}


class EpochTimer(pl.Callback):
    """Wall seconds of the last training epoch, from its loader's ``iter()`` to its end.

    Lightning creates the first epoch's iterator and fetches its first batch before
    ``on_train_epoch_start``; starting there would leave that batch out, which the
    plain loop pays, so the first epoch's clock starts at that ``iter()`` (see
    :meth:`time_iteration_of`); later epochs create theirs after the hook. The epoch
    ends after every callback's ``on_train_epoch_end`` but this one's (appended
    last), so the checkpoint written then is counted.
    """

    def time_iteration_of(self, loader):
        """Returns ``loader``, its next ``iter()`` starting the clock."""
        make_iterator = loader._get_iterator

        def timed():
            self.started = time.perf_counter()
            return make_iterator()

        loader._get_iterator = timed
        return loader

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch > 0:
            self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.started


def stage_arguments(stage: str, args: argparse.Namespace, root: str) -> list[str]:
    """``mmsent fit`` arguments of one quickstart stage for a run of ``args.epochs`` without validation."""
    folder = REPO / "pipelines" / "quickstart"
    cli_args = ["-c", str(folder / "base.yaml")]
    for config in CONFIGS[stage]:
        cli_args += ["-c", str(folder / config)]
    if stage in HANDED_ON:
        stages = json.loads((Path(args.run) / "manifest.json").read_text())["stages"]
        cli_args += [f"--{key}={stages[source]['best_checkpoint']}" for key, source in HANDED_ON[stage].items()]
    return cli_args + [f"--data.source.init_args.root={args.data_root}", f"--data.cache_dir={args.cache_dir}",
                       f"--trainer.max_epochs={args.epochs}", "--trainer.limit_val_batches=0",
                       "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
                       f"--trainer.default_root_dir={root}", f"--checkpoint.dirpath={root}/checkpoints"]


def build(stage: str, args: argparse.Namespace, root: str):
    from mmsent.cli import build_cli

    return build_cli(stage_arguments(stage, args, root), run=False)


def fit_seconds(stage: str, args: argparse.Namespace, root: str) -> float:
    cli = build(stage, args, root)
    timer = EpochTimer()
    cli.trainer.callbacks.append(timer)
    train_dataloader = cli.datamodule.train_dataloader
    cli.datamodule.train_dataloader = lambda: timer.time_iteration_of(train_dataloader())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return timer.seconds


def plain_seconds(stage: str, args: argparse.Namespace, root: str) -> float:
    cli = build(stage, args, root)
    model, datamodule = cli.model, cli.datamodule
    datamodule.modalities = model_modalities(model)
    datamodule.prepare_data()
    datamodule.setup("fit")
    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    model.train()
    loader = datamodule.train_dataloader()
    for _ in range(args.epochs - 1):
        epoch_seconds(model, optimizer, loader)
    return epoch_seconds(model, optimizer, loader)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1,
                        help="epochs per run; the last one is timed (2: a steady epoch, after the first "
                             "checkpoint hashed its frozen weights)")
    parser.add_argument("--data-root", default="data/generated/quickstart")
    parser.add_argument("--cache-dir", default="data/cache")
    parser.add_argument("--run", default="runs/quickstart",
                        help="a finished quickstart pipeline run, whose checkpoints the fused stages start from")
    parser.add_argument("--root", default="/tmp/mmsent-overhead", help="where the fits write")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    sides = {"fit": fit_seconds, "plain": plain_seconds}
    for stage in args.stages:
        times = {name: [] for name in sides}
        for repeat in range(args.repeats):
            for name in (list(sides) if repeat % 2 == 0 else list(reversed(sides))):
                times[name].append(sides[name](stage, args, f"{args.root}/{stage}"))
        medians = {name: statistics.median(values) for name, values in times.items()}
        ratio = medians["plain"] / medians["fit"]
        results.append({"stage": stage, "seconds": times, "median_seconds": medians, "plain_vs_fit": ratio})
        print(f"quickstart {stage}: fit {medians['fit']:.3f} s, plain {medians['plain']:.3f} s per epoch; "
              f"mmsent reaches {ratio:.2f} of plain PyTorch", flush=True)
    path = save_measurement(f"overhead_quickstart{'' if args.epochs == 1 else f'_epoch{args.epochs}'}",
                            f"python benchmarks/overhead.py --stages {' '.join(args.stages)} --repeats {args.repeats} "
                            f"--epochs {args.epochs}",
                            results)
    print(f"raw results: {path}")


if __name__ == "__main__":
    main()
