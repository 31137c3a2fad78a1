"""The one rule by which the tool kit's benchmarks say that one variant beats another.

Two variants are run with the same seeds (at least :data:`MIN_SEEDS`), so each seed
gives one paired difference ``a - b`` of a metric. The verdict is read off the 95 %
t-interval of the mean paired difference: "A beats B" (lower error) only when the whole
interval lies below 0, "B beats A" when it lies above 0, otherwise "no difference
detected"; an interval within ±:data:`MATTERS` is flagged as too small to matter. The
rule is fixed before the results and is the same for every table.

    python benchmarks/verdicts.py benchmarks/results/audio_dropout.json --baseline none --metric MAE
    python benchmarks/verdicts.py benchmarks/results/optimizers_finetune.json --stage finetune --baseline Nesterov
    python benchmarks/verdicts.py benchmarks/results/optimizers_mosi{,_seed1,_seed2}.json --stage finetune --baseline SGD
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from scipy.stats import t as student_t

MIN_SEEDS = 10
LEVEL = 0.95
MATTERS = 0.005
"""The smallest MAE difference that matters: an interval within ±MATTERS is called a
difference too small to matter, even when it excludes 0."""


def paired_interval(a: list[float], b: list[float], level: float = LEVEL) -> tuple[float, float, float]:
    """Mean of the paired differences ``a - b`` and its t-interval.

    Args:
        a (list[float]): One value per seed for variant A.
        b (list[float]): The same seeds' values for variant B, in the same order.
        level (float): The interval's coverage.

    Returns:
        tuple[float, float, float]: Mean difference, lower and upper end of the interval.

    Raises:
        ValueError: If the lists differ in length or hold fewer than two pairs.
    """
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"paired differences need two equally long lists of >= 2 values, got {len(a)} and {len(b)}")
    differences = [x - y for x, y in zip(a, b, strict=True)]
    mean = statistics.mean(differences)
    half = student_t.ppf(0.5 + level / 2, len(differences) - 1) * statistics.stdev(differences) / math.sqrt(len(a))
    return mean, float(mean - half), float(mean + half)


def verdict(name_a: str, a: list[float], name_b: str, b: list[float], lower_is_better: bool = True) -> str:
    """The rule's sentence for A against B.

    Args:
        name_a (str): Variant A's name.
        a (list[float]): A's values, one per seed.
        name_b (str): Variant B's name.
        b (list[float]): B's values for the same seeds, in the same order.
        lower_is_better (bool): True for errors (MAE), False for scores (Corr).

    Returns:
        str: E.g. ``"A beats B: A - B = -0.012 (95 % CI -0.020 to -0.004, 10 seeds)"``.
    """
    mean, low, high = paired_interval(a, b)
    interval = f"{name_a} - {name_b} = {mean:+.4f} (95 % CI {low:+.4f} to {high:+.4f}, {len(a)} seeds)"
    if len(a) < MIN_SEEDS:
        return f"not decided (fewer than {MIN_SEEDS} seeds): {interval}"
    if low > 0 or high < 0:
        a_better = (high < 0) == lower_is_better
        winner, loser = (name_a, name_b) if a_better else (name_b, name_a)
        size = f", by less than the {MATTERS} that matters" if -MATTERS <= low and high <= MATTERS else ""
        return f"{winner} beats {loser}{size}: {interval}"
    return f"no difference detected: {interval}"


def by_seed(runs: list[dict], key: str, variant_key: str = "variant") -> dict[str, dict[int, float]]:
    """Per variant, per seed, one metric of a results file's runs."""
    table: dict[str, dict[int, float]] = {}
    for run in runs:
        table.setdefault(str(run[variant_key]), {})[run["seed"]] = run[key]
    return table


def chosen_runs(payload: dict, stage: str) -> list[dict]:
    """An ``optimizers.py`` results file's reported runs of one stage at each optimizer's chosen
    rate, each with its optimizer as ``variant`` (the sweep's other rates left out).

    Args:
        payload (dict): The results file.
        stage (str): ``text`` or ``finetune``.

    Returns:
        list[dict]: The runs over the file's reported seeds.
    """
    chosen = payload["best_lr"][stage]
    return [{**run, "variant": run["optimizer"]} for run in payload["runs"]
            if run["stage"] == stage and run["lr"] == chosen[run["optimizer"]] and run["seed"] in payload["seeds"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+",
                        help="results JSONs with 'runs' of variant, seed and metrics; several files pair "
                             "their runs by (file, seed), e.g. one file per pipeline seed")
    parser.add_argument("--baseline", required=True, help="the variant every other one is compared with")
    parser.add_argument("--metric", nargs="+", default=["val_MAE", "MAE", "Corr"])
    parser.add_argument("--variant-key", default="variant")
    parser.add_argument("--stage", help="an optimizers.py file: compare its optimizers at their chosen rates on this stage")
    args = parser.parse_args()
    runs = []
    for index, path in enumerate(args.results):
        payload = json.loads(path.read_text())
        runs += [{**run, "seed": (index, run["seed"])}
                 for run in (chosen_runs(payload, args.stage) if args.stage else payload["runs"])]
    for metric in args.metric:
        values = by_seed(runs, metric, args.variant_key)
        base = values[args.baseline]
        for name, per_seed in values.items():
            if name == args.baseline:
                continue
            seeds = sorted(set(per_seed) & set(base))
            print(f"{metric}: " + verdict(name, [per_seed[s] for s in seeds], args.baseline,
                                          [base[s] for s in seeds], lower_is_better=metric != "Corr"))


if __name__ == "__main__":
    main()
