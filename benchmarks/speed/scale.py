"""How the pipeline's cost grows with the data: generation, preparation and one epoch per stage.

For each number of generated clips (the quickstart dataset's settings, ``num_clips``
changed), each phase runs in its own process, one after the other, so its wall time
and its peak resident memory (``ru_maxrss``) are its own:

* ``generate``: writing the raw clips (mp4, wav, transcripts, labels),
* ``prepare``: decoding and featurizing them into the cache with the quickstart
  source's settings (``prepare_workers`` processes; 0: in the main process),
* ``<stage>``: one training epoch of a quickstart unimodal stage through
  ``Trainer.fit`` (validation off), timed from the training loader's ``iter()`` to
  the end of the epoch; its process's peak memory covers building and fitting.

Results go to ``benchmarks/results/scale.json`` (sizes an earlier run measured are
kept unless ``--fresh``) and a plot of seconds and peak memory against clips to
``benchmarks/figures/scale.png``. The ``prepare`` phase also reports the CPU seconds of
its process and its worker processes, and the cores they kept busy on average.

With ``--interrupt-after SECONDS``, preparation alone is measured instead: from a fresh
cache (``<out>/cache`` is emptied), stopped after that many seconds (SIGINT, then
SIGKILL of its process group), the finished shards counted, run again to the end, and
then once more from an empty cache for comparison (``scale_interrupted.json``).

    python benchmarks/speed/scale.py --sizes 1000 4000 --out runs/scale --stages text audio video
    python benchmarks/speed/scale.py --sizes 23000 --out runs/scale --prepare-workers 2 --interrupt-after 100
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

# Run as a file, a script sees only its own folder; the repository root makes `benchmarks` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import REPO, RESULTS, save_measurement

FIGURES = REPO / "benchmarks" / "figures"
STAGE_CONFIGS = {"text": "1_text.yaml", "audio": "2_audio.yaml", "video": "3_video.yaml"}


def data_arguments(clips: int, out: Path, prepare_workers: int) -> list[str]:
    """The quickstart configuration's data section pointed at ``clips`` generated clips under ``out``."""
    return [f"--data.source.init_args.root={out / f'clips{clips}'}", f"--data.source.init_args.num_clips={clips}",
            f"--data.cache_dir={out / 'cache'}", f"--data.prepare_workers={prepare_workers}"]


def build(args: list[str]):
    from mmsent.cli import build_cli

    return build_cli(args, run=False)


def run_phase(phase: str, clips: int, out: Path, prepare_workers: int) -> dict:
    """Runs one phase in this process.

    Args:
        phase (str): ``"generate"``, ``"prepare"`` or a stage name.
        clips (int): The number of generated clips.
        out (Path): Where clips and caches are written.
        prepare_workers (int): Processes preparing the cache.

    Returns:
        dict: ``seconds`` and ``peak_rss_mib`` (this process's, children excluded),
        plus ``train_clips`` for a stage.
    """
    import torch

    torch.set_num_threads(1)
    folder = REPO / "pipelines" / "quickstart"
    base = ["-c", str(folder / "base.yaml")]
    data = data_arguments(clips, out, prepare_workers)
    result = {}
    if phase == "generate":
        from mmsent.data.synthetic.writer import generate_raw_dataset

        started = time.perf_counter()
        generate_raw_dataset(out / f"clips{clips}", num_clips=clips, seed=0, num_workers=1)
        result["seconds"] = time.perf_counter() - started
    elif phase == "prepare":
        from mmsent.data import GeneratedSource, MultimodalDataModule

        source = GeneratedSource(str(out / f"clips{clips}"), num_clips=clips, seed=0, frames=8, frame_size=32,
                                 tokenizer="minilm")
        datamodule = MultimodalDataModule(source, cache_dir=str(out / "cache"), prepare_workers=prepare_workers)
        started, cpu = time.perf_counter(), cpu_seconds()
        datamodule.prepare_data()
        result["seconds"] = time.perf_counter() - started
        result["cpu_seconds"] = cpu_seconds() - cpu
        result["cores_busy"] = result["cpu_seconds"] / result["seconds"]
    else:
        from overhead import EpochTimer

        cli = build([*base, "-c", str(folder / STAGE_CONFIGS[phase]), *data, "--trainer.max_epochs=1",
                     "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
                     "--trainer.enable_progress_bar=false", "--trainer.logger=false",
                     f"--trainer.default_root_dir={out / 'fits'}", f"--checkpoint.dirpath={out / 'fits' / phase}"])
        timer = EpochTimer()
        cli.trainer.callbacks.append(timer)
        train_dataloader = cli.datamodule.train_dataloader
        cli.datamodule.train_dataloader = lambda: timer.time_iteration_of(train_dataloader())
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        result["seconds"] = timer.seconds
        result["train_clips"] = len(cli.datamodule.split("train"))
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def cpu_seconds() -> float:
    """User and system CPU seconds of this process and of its children that have ended
    (the preparation workers, once their pool has closed)."""
    return sum(getattr(resource.getrusage(who), field) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for field in ("ru_utime", "ru_stime"))


def interrupted_preparation(clips: int, out: Path, prepare_workers: int, after: float) -> dict:
    """Preparation stopped after ``after`` seconds, then run again, then run from scratch.

    Args:
        clips (int): The number of generated clips (generated first if missing).
        out (Path): Where clips and the cache are written; ``<out>/cache`` is emptied.
        prepare_workers (int): Processes preparing the cache.
        after (float): Seconds before the first run is stopped.

    Returns:
        dict: The shards finished when it was stopped, of how many, and the ``prepare``
        records of the resumed and the uninterrupted runs.
    """
    from mmsent.data.cache import prepare

    if not (out / f"clips{clips}").exists():
        measure("generate", clips, out, prepare_workers)
    cache = out / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    command = [sys.executable, str(Path(__file__)), "--phase", "prepare", "--sizes", str(clips), "--out", str(out),
               "--prepare-workers", str(prepare_workers)]
    first = subprocess.Popen(command, cwd=Path(__file__).parent, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(after)
    for stop in (signal.SIGINT, signal.SIGKILL):
        try:
            os.killpg(first.pid, stop)
        except ProcessLookupError:
            break
        time.sleep(5)
    first.wait()
    finished = len(list(cache.glob("*/shards/*/problems.json")))
    resumed = measure("prepare", clips, out, prepare_workers)
    shutil.rmtree(cache, ignore_errors=True)
    uninterrupted = measure("prepare", clips, out, prepare_workers)
    shards = math.ceil(clips / inspect.signature(prepare).parameters["chunk_size"].default)
    return {"clips": clips, "stopped_after_s": after, "shards_finished": finished, "shards": shards,
            "resumed": resumed, "uninterrupted": uninterrupted}


def measure(phase: str, clips: int, out: Path, prepare_workers: int) -> dict:
    """Runs one phase in a fresh process; returns its record (with the process's wall seconds)."""
    command = [sys.executable, str(Path(__file__)), "--phase", phase, "--sizes", str(clips), "--out", str(out),
               "--prepare-workers", str(prepare_workers)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parent, check=False)
    if done.returncode:
        raise RuntimeError(f"{phase} at {clips} clips failed:\n{done.stderr[-3000:]}")
    record = json.loads(done.stdout.strip().splitlines()[-1])
    return {"phase": phase, "clips": clips, "process_seconds": time.perf_counter() - started, **record}


def plot(records: list[dict], path: Path) -> None:
    """Seconds against clips, one line per phase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, mem) = plt.subplots(1, 2, figsize=(10, 4))
    for phase in dict.fromkeys(r["phase"] for r in records):
        rows = sorted((r for r in records if r["phase"] == phase), key=lambda r: r["clips"])
        clips = [r["clips"] for r in rows]
        ax.plot(clips, [r["seconds"] for r in rows], marker="o", label=phase)
        mem.plot(clips, [r["peak_rss_mib"] for r in rows], marker="o", label=phase)
    # Log-log: linear growth is a line of slope 1, whatever the phase's scale.
    ax.set(xscale="log", yscale="log", xlabel="generated clips", ylabel="seconds (one epoch for a stage)",
           title="Time (log-log)")
    mem.set(xlabel="generated clips", ylabel="peak resident memory (MiB)", title="Memory")
    for axis in (ax, mem):
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[1000, 4000])
    parser.add_argument("--stages", nargs="*", default=["text", "audio"], choices=list(STAGE_CONFIGS))
    parser.add_argument("--out", default="runs/scale", help="where generated clips and their caches go")
    parser.add_argument("--prepare-workers", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="drop the sizes an earlier run measured")
    parser.add_argument("--plot-only", action="store_true", help="redraw the figure from the saved results")
    parser.add_argument("--interrupt-after", type=float, default=None,
                        help="measure an interrupted preparation instead, stopped after this many seconds")
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    if args.phase:
        print(json.dumps(run_phase(args.phase, args.sizes[0], out, args.prepare_workers)))
        return
    if args.interrupt_after is not None:
        runs = [interrupted_preparation(clips, out, args.prepare_workers, args.interrupt_after) for clips in args.sizes]
        for run in runs:
            print(f"{run['clips']} clips: stopped after {run['stopped_after_s']:.0f} s with {run['shards_finished']} "
                  f"of {run['shards']} shards; resumed {run['resumed']['seconds']:.1f} s, uninterrupted "
                  f"{run['uninterrupted']['seconds']:.1f} s", flush=True)
        command = (f"python benchmarks/speed/scale.py --sizes {' '.join(map(str, args.sizes))} --prepare-workers "
                   f"{args.prepare_workers} --interrupt-after {args.interrupt_after:g}")
        print(f"raw results: {save_measurement('scale_interrupted', command, runs)}")
        return
    # Sizes measured before (in an earlier run, same stages) stay in the results and the plot.
    earlier = RESULTS / "scale.json"
    records = [r for r in json.loads(earlier.read_text())["results"] if r["clips"] not in args.sizes] \
        if earlier.exists() and not args.fresh else []
    if args.plot_only:
        plot(json.loads(earlier.read_text())["results"], FIGURES / "scale.png")
        return
    for clips in args.sizes:
        for phase in ["generate", "prepare", *args.stages]:
            records.append(measure(phase, clips, out, args.prepare_workers))
            r = records[-1]
            print(f"{clips} clips, {phase}: {r['seconds']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    sizes = sorted({r["clips"] for r in records})
    command = (f"python benchmarks/speed/scale.py --sizes {' '.join(map(str, sizes))} --stages "
               f"{' '.join(args.stages)} --prepare-workers {args.prepare_workers}")
    path = save_measurement("scale", command, records)
    plot(records, FIGURES / "scale.png")
    print(f"raw results: {path}; figure: {FIGURES / 'scale.png'}")


if __name__ == "__main__":
    main()
