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

With ``--validate`` each fit keeps its validation pass, which Lightning runs inside
the timed epoch (before ``on_train_epoch_end``), so the figure is a whole epoch as a
pipeline run pays it; the plain loop has no counterpart then (``--sides fit``).
``--pipeline`` names the pipeline in ``pipelines/`` whose stages, configs and
handed-on checkpoints are used.

    python benchmarks/speed/overhead.py --data-root data/generated/quickstart --cache-dir data/cache \\
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

import sys

import pytorch_lightning as pl
import torch

# Run as a file, a script sees only its own folder; the repository root makes `benchmarks` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import REPO, save_measurement
from benchmarks.speed.data_loading import epoch_seconds
from mmsent.data.datamodule import model_modalities
from mmsent.pipeline.spec import Stage, load_pipeline


def pipeline_stages(pipeline: str) -> dict[str, Stage]:
    """The stages of ``pipelines/<pipeline>.yaml`` by name, as the runner reads them (``extends`` merged)."""
    return {stage.name: stage for stage in load_pipeline(REPO / "pipelines" / f"{pipeline}.yaml").stages}


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
    """``mmsent fit`` arguments of one stage of ``args.pipeline`` for a run of ``args.epochs``.

    Validation is off unless ``args.validate``; the sanity check is off either way.
    """
    spec = pipeline_stages(args.pipeline)[stage]
    cli_args = []
    for config in spec.configs:
        cli_args += ["-c", str(config)]
    if spec.checkpoints:
        stages = json.loads((Path(args.run) / "manifest.json").read_text())["stages"]
        cli_args += [f"--{key}={stages[source]['best_checkpoint']}" for key, source in spec.checkpoints.items()]
    validation = [] if args.validate else ["--trainer.limit_val_batches=0"]
    return cli_args + [f"--data.source.init_args.root={args.data_root}", f"--data.cache_dir={args.cache_dir}",
                       f"--trainer.max_epochs={args.epochs}", *validation,
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


def add_fit_options(parser: argparse.ArgumentParser) -> None:
    """Adds the options :func:`fit_seconds` reads: pipeline, data, run, epochs, validation."""
    parser.add_argument("--pipeline", default="quickstart", help="a pipeline in pipelines/ (quickstart, mosi)")
    parser.add_argument("--stages", nargs="*", default=None, help="stages of the pipeline (default: all)")
    parser.add_argument("--epochs", type=int, default=1,
                        help="epochs per run; the last one is timed (2: a steady epoch, after the first "
                             "checkpoint hashed its frozen weights)")
    parser.add_argument("--data-root", default="data/generated/quickstart")
    parser.add_argument("--cache-dir", default="data/cache")
    parser.add_argument("--run", default="runs/quickstart",
                        help="a finished run of the pipeline, whose checkpoints the fused stages start from")
    parser.add_argument("--root", default="/tmp/mmsent-overhead", help="where the fits write")
    parser.add_argument("--validate", action="store_true",
                        help="keep each fit's validation pass, inside the timed epoch")


def checked_stages(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The stages asked for, all of the pipeline's by default; an unknown one is a parser error."""
    known = list(pipeline_stages(args.pipeline))
    stages = args.stages or known
    unknown = [stage for stage in stages if stage not in known]
    if unknown:
        parser.error(f"--stages: {unknown} not in pipelines/{args.pipeline}.yaml (its stages: {known})")
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_fit_options(parser)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sides", nargs="+", default=["fit", "plain"], choices=["fit", "plain"],
                        help="fit: mmsent fit; plain: the hand-written loop (never validates)")
    args = parser.parse_args()
    stages = checked_stages(parser, args)
    torch.set_num_threads(1)
    results = []
    sides = {name: side for name, side in {"fit": fit_seconds, "plain": plain_seconds}.items() if name in args.sides}
    for stage in stages:
        times = {name: [] for name in sides}
        for repeat in range(args.repeats):
            for name in (list(sides) if repeat % 2 == 0 else list(reversed(sides))):
                times[name].append(sides[name](stage, args, f"{args.root}/{stage}"))
        medians = {name: statistics.median(values) for name, values in times.items()}
        result = {"stage": stage, "seconds": times, "median_seconds": medians}
        line = f"{args.pipeline} {stage}: " + ", ".join(f"{name} {value:.3f} s" for name, value in medians.items())
        if len(sides) == 2:
            result["plain_vs_fit"] = medians["plain"] / medians["fit"]
            line += f" per epoch; mmsent reaches {result['plain_vs_fit']:.2f} of plain PyTorch"
        results.append(result)
        print(line, flush=True)
    name = (f"overhead_{args.pipeline}{'' if args.epochs == 1 else f'_epoch{args.epochs}'}"
            f"{'_validated' if args.validate else ''}")
    path = save_measurement(name,
                            f"python benchmarks/speed/overhead.py --pipeline {args.pipeline} --stages {' '.join(stages)} "
                            f"--repeats {args.repeats} --epochs {args.epochs} --sides {' '.join(args.sides)}"
                            f"{' --validate' if args.validate else ''}",
                            results)
    print(f"raw results: {path}")


if __name__ == "__main__":
    main()
