"""Does the SaddlePointMonitor fire in a real unimodal run, what does it say, and what
does it cost when it does not fire?

The quickstart audio stage (generated default dataset) is fitted with the monitor at its
defaults (does it fire, and with which verdicts), and then, alternately, without the
monitor and with a monitor that can never fire (``min_rel_improvement`` below any
relative change), so the difference is the monitor's bookkeeping alone. Fit times
(``trainer.fit`` only) are compared by their medians over the repetitions.

    OMP_NUM_THREADS=1 python benchmarks/saddle_monitor.py --repeats 5 --epochs 6
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time

import torch
from common import machine, save
from quickstart_stages import QUIET, configs

MONITOR = "--trainer.callbacks+=mmsent.callbacks.SaddlePointMonitor"


def timed_fit(extra: list[str], epochs: int, root: str) -> tuple[float, list[dict], float]:
    """Fits the audio stage; returns the fit's seconds, the monitor's history and the
    best validation MAE."""
    from mmsent.cli import build_cli

    cli = build_cli([*configs("2_audio.yaml"), "--seed_everything=0", *QUIET, f"--trainer.max_epochs={epochs}",
                     f"--trainer.default_root_dir={root}", *extra], run=False)
    started = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = time.perf_counter() - started
    monitors = [c for c in cli.trainer.callbacks if type(c).__name__ == "SaddlePointMonitor"]
    history = monitors[0].history if monitors else []
    return seconds, history, float(cli.trainer.checkpoint_callback.best_model_score)


def bookkeeping_cost(steps: int = 20000) -> float:
    """Microseconds that a silent monitor's per-step bookkeeping costs.

    Calls ``on_train_batch_end`` of a monitor that never checks with a step's loss, the
    only work it does on a step without a check, independently of training noise.

    Args:
        steps (int): Calls to time.

    Returns:
        float: The median over five rounds, in microseconds per step.
    """
    from mmsent.callbacks import SaddlePointMonitor

    monitor = SaddlePointMonitor(min_rel_improvement=-1e30)
    outputs = {"loss": torch.tensor(0.5)}
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for step in range(steps):
            monitor.on_train_batch_end(None, None, outputs, None, step)
        rounds.append((time.perf_counter() - started) / steps * 1e6)
    return statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--every", type=int, default=50, help="steps between checks in the scheduled run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    payload = {"epochs": args.epochs, "repeats": args.repeats, "machine": machine(),
               "date": datetime.date.today().isoformat()}
    seconds, history, val = timed_fit([MONITOR], args.epochs, "runs/bench_saddle/default")
    payload["default"] = {"seconds": seconds, "val_MAE": val, "checks": history}
    print(json.dumps({"default_checks": len(history), "seconds": seconds}), flush=True)
    for record in history:
        print({k: record[k] for k in ("step", "reason", "lambda_min", "lambda_max", "gradient_norm",
                                      "verdict", "verdict_reason", "converged", "hessian_products")})
    seconds, history, val = timed_fit([MONITOR, f"--trainer.callbacks.init_args.every_n_steps={args.every}"],
                                      args.epochs, "runs/bench_saddle/scheduled")
    payload["scheduled"] = {"every_n_steps": args.every, "seconds": seconds, "val_MAE": val, "checks": history}
    print(json.dumps({"scheduled_checks": len(history), "seconds": seconds}), flush=True)
    for record in history:
        print({k: record[k] for k in ("step", "reason", "lambda_min", "lambda_max", "gradient_norm",
                                      "verdict", "verdict_reason", "converged", "hessian_products")})
    payload["bookkeeping_us_per_step"] = bookkeeping_cost()
    print(json.dumps({"bookkeeping_us_per_step": payload["bookkeeping_us_per_step"]}), flush=True)
    save("saddle_monitor", payload)
    silent = [MONITOR, "--trainer.callbacks.init_args.min_rel_improvement=-1e30"]
    times: dict[str, list[float]] = {"without": [], "silent_monitor": []}
    vals: dict[str, list[float]] = {"without": [], "silent_monitor": []}
    for repeat in range(args.repeats):
        for name, extra in (("without", []), ("silent_monitor", silent)):
            seconds, history, val = timed_fit(extra, args.epochs, f"runs/bench_saddle/{name}/{repeat}")
            assert not history, "the silent monitor fired"
            times[name].append(seconds)
            vals[name].append(val)
            print(json.dumps({"name": name, "repeat": repeat, "seconds": round(seconds, 2)}), flush=True)
        payload.update(times=times, val_MAE=vals)
        save("saddle_monitor", payload)
    without, silent_median = statistics.median(times["without"]), statistics.median(times["silent_monitor"])
    print(f"median fit seconds: without {without:.2f}, silent monitor {silent_median:.2f}, "
          f"overhead {100 * (silent_median / without - 1):+.1f} %; same val MAE: {vals['without'] == vals['silent_monitor']}")


if __name__ == "__main__":
    main()
