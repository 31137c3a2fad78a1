"""The pipeline report: every stage's metrics side by side, with its figures and table files."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd
import torch
import yaml
from matplotlib.figure import Figure

from mmsent.data.schema import ID_SEPARATOR
from mmsent.io import atomic_write, save_json
from mmsent.metrics import METRIC_NAMES, pearson
from mmsent.pipeline.figures import stage_predictions, write_figures

PERCENT = {"Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_5", "Mult_acc_7"}
TABLE_METRICS = ("MAE", "Corr", "Non0_acc_2", "Non0_F1_score", "Has0_acc_2", "Mult_acc_7")
LOWER_IS_BETTER = {"MAE"}
WORSE_MARK = "\N{DAGGER}"
# What a generative stage measures (mmsent.models.generative.sample_quality), in table order.
GENERATIVE_METRICS = ("frechet", "diversity", "conditional_diversity", "fidelity_MAE", "real_MAE",
                      "recon_error")


def report_rows(manifest: dict) -> list[dict]:
    """One row per finished stage.

    Args:
        manifest: The pipeline manifest.

    Returns:
        ``stage``, ``val`` and ``test`` (MMSA metric name -> value), ``best_achievable_MAE``
            where known, ``wall_time_s``.
    """
    rows = []
    for name, record in manifest.get("stages", {}).items():
        if record.get("status") != "done":
            continue
        metrics = record.get("metrics", {})
        test = metrics.get("test", {})
        row = {"stage": name, "wall_time_s": record.get("wall_time_s")}
        for split in ("val", "test"):
            row[split] = {k: v for k, v in metrics.get(split, {}).items() if k in METRIC_NAMES}
        best = test.get("best_achievable_MAE")
        if best is not None and math.isfinite(best):
            row["best_achievable_MAE"] = best
        extras = {"ablation": {k: v for k, v in test.items() if k.startswith(("without_", "contribution/"))},
                  "selection": record.get("selection"),
                  "generative": {k: v for k, v in test.items() if k in GENERATIVE_METRICS}}
        rows.append(row | {key: value for key, value in extras.items() if value})
    return rows


def stage_baselines(manifest: dict) -> dict[str, dict[str, float]]:
    """The trivial predictors' metrics, as the first finished stage scoring sentiment logged them.

    Every stage sees the same data, so one stage's ``<split>/baseline/<metric>`` serve all.

    Args:
        manifest: The pipeline manifest.

    Returns:
        ``{"val": {metric: value}, "test": {...}}``; empty when no stage logged them.
    """
    for record in manifest.get("stages", {}).values():
        metrics = record.get("metrics", {}) if record.get("status") == "done" else {}
        found = {split: {k.split("/", 1)[1]: v for k, v in metrics.get(split, {}).items()
                         if k.startswith("baseline/")} for split in ("val", "test")}
        if found["test"]:
            return found
    return {}


def own_score_correlations(manifest: dict) -> dict[str, dict]:
    """On generated data, each unimodal stage's correlation with its modality's noise-free score.

    The score is ``<modality>_score`` in the generated ``label.csv``; for a stage that adds
    fixed stages' predictions, its own model's part is compared.

    Args:
        manifest: The pipeline manifest.

    Returns:
        Stage -> ``{"modality": ..., "corr": ...}``; empty for data without such scores.
    """
    found = {}
    for name, table in stage_predictions(manifest).items():
        config_path = Path(manifest["stages"][name].get("config", ""))
        if not config_path.is_file():
            continue
        config = yaml.safe_load(config_path.read_text()) or {}
        modality = (config.get("model", {}).get("init_args") or {}).get("modality")
        root = ((config.get("data", {}).get("source") or {}).get("init_args") or {}).get("root")
        labels = Path(root) / "label.csv" if modality and root else None
        if labels is None or not labels.is_file():
            continue
        truth = pd.read_csv(labels, dtype={"video_id": str, "clip_id": str})
        column = f"{modality}_score"
        if column not in truth:
            continue
        truth["id"] = truth["video_id"] + ID_SEPARATOR + truth["clip_id"]
        merged = table.merge(truth[["id", column]], on="id")
        own = merged["own_prediction" if "own_prediction" in merged else "prediction"]
        corr = pearson(torch.tensor(own.to_numpy()), torch.tensor(merged[column].to_numpy()))
        found[name] = {"modality": modality, "corr": corr}
    return found


def _format(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" if name in PERCENT else f"{value:.3f}"


def worse_than_trivial(name: str, value: float | None, trivial: float | None) -> bool:
    """Whether a stage's metric is worse than the trivial predictor's on it.

    Args:
        name: The metric (MMSA's name).
        value: The stage's value.
        trivial: The trivial predictor's value.

    Returns:
        False when either is unknown or not a number.
    """
    if value is None or trivial is None or not (math.isfinite(value) and math.isfinite(trivial)):
        return False
    return value > trivial if name in LOWER_IS_BETTER else value < trivial


def _cell(name: str, value: float | None, trivial: float | None) -> str:
    marked = worse_than_trivial(name, value, trivial)
    return _format(name, value) + (f" {WORSE_MARK}" if marked else "")


def skipped_stages(manifest: dict) -> dict[str, str]:
    """The stages the data left nothing to do for, with the reason."""
    return {name: record.get("reason", "") for name, record in manifest.get("stages", {}).items()
            if record.get("status") == "skipped"}


def markdown_table(rows: list[dict], baselines: dict, own_scores: dict | None = None,
                   skipped: dict[str, str] | None = None) -> str:
    """The report as a Markdown table.

    Args:
        rows: From :func:`report_rows`.
        baselines: From :func:`stage_baselines`.
        own_scores: From :func:`own_score_correlations`.
        skipped: From :func:`skipped_stages`, listed under the table with their reasons.

    Returns:
        Markdown; accuracies and F1 in percent, cells worse than the trivial predictor marked.
    """
    trivial = {split: baselines.get(split, {}) for split in ("val", "test")}
    marked = False
    header = ["stage"] + [f"test {m}" for m in TABLE_METRICS] + ["val MAE", "best achievable MAE", "time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in scoring_rows(rows):
        cells = [row["stage"]] + [_cell(m, row["test"].get(m), trivial["test"].get(m)) for m in TABLE_METRICS]
        cells += [_cell("MAE", row["val"].get("MAE"), trivial["val"].get("MAE")),
                  _format("MAE", row.get("best_achievable_MAE")), f"{row.get('wall_time_s') or 0:.0f}"]
        marked = marked or any(cell.endswith(WORSE_MARK) for cell in cells)
        lines.append("| " + " | ".join(cells) + " |")
    if baselines:
        cells = ["*trivial predictor*"] + [_format(m, baselines["test"].get(m)) for m in TABLE_METRICS]
        cells += [_format("MAE", baselines.get("val", {}).get("MAE")), "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
        if marked:
            lines += ["", (f"{WORSE_MARK} worse than the trivial predictor on the same metric: that stage "
                           f"did not learn what the metric measures.")]
        lines += ["", ("The trivial predictor predicts the training median for MAE and Corr (a constant "
                  "correlates with nothing) and the training set's majority class for each accuracy "
                  "and F1: a stage that does not beat it on a metric has learned nothing it measures."), ""]
    if skipped:
        lines += ["", "Skipped stages (the data left them nothing to do):", ""]
        lines += [f"- {name}: {reason}" for name, reason in skipped.items()]
    contributions = [r for r in rows if "ablation" in r]
    if contributions:
        lines += ["", "Per-modality contribution (test MAE with the modality masked, minus full MAE):", ""]
        for row in contributions:
            parts = [f"{k.split('/')[1]} {v:+.3f}" for k, v in row["ablation"].items() if k.startswith("contribution/")]
            lines.append(f"- {row['stage']}: " + ", ".join(parts))
    lines += generative_table(rows)
    if own_scores:
        lines += ["", ("Unimodal stages against their own modality's noise-free score (generated data; "
                  "test Pearson correlation):"), ""]
        lines += [f"- {stage}: {v['corr']:.3f} with {v['modality']}_score" for stage, v in own_scores.items()]
    selections = [r for r in rows if "selection" in r]
    if selections:
        lines += ["", "Modality selection (validation, one-sided bootstrap over videos):", ""]
        lines += [f"- {row['stage']}: {selection_summary(row['selection'])}" for row in selections]
    return "\n".join(lines) + "\n"


def scoring_rows(rows: list[dict]) -> list[dict]:
    """The :func:`report_rows` of stages that predict sentiment (not a generative stage's)."""
    return [r for r in rows if r["test"] or "generative" not in r]


def generative_table(rows: list[dict]) -> list[str]:
    """Markdown lines: the generative stages' test sample quality; none without such stages."""
    generative = [r for r in rows if "generative" in r]
    if not generative:
        return []
    header = ["stage", *GENERATIVE_METRICS, "time (s)"]
    title = ("Generative stages, test split (Fréchet distance and diversity in the standardized "
             "embedding space; fidelity_MAE: a ridge probe's MAE on the samples against their scores, "
             "real_MAE: the same probe on real embeddings):")
    lines = ["", title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in generative:
        cells = [_format(m, row["generative"].get(m)) for m in GENERATIVE_METRICS]
        lines.append("| " + " | ".join([row["stage"], *cells, f"{row.get('wall_time_s') or 0:.0f}"]) + " |")
    return lines


def selection_summary(record: dict) -> str:
    """One line on what a stage's selection ``record`` kept, switched off and handed on, and why."""
    final = {t["modality"]: t for t in record["tests"]}  # the last test of each
    parts = []
    for modality in [*record["kept"], *record["switched_off"]]:
        verdict = "kept" if modality in record["kept"] else "switched off"
        test = final.get(modality)
        relative = f" = {100 * test['relative_gain']:+.1f} %" if test and "relative_gain" in test else ""
        evidence = f" (gain {test['gain']:+.3f} MAE{relative}, p {test['p_value']:.3f})" if test else ""
        parts.append(f"{modality} {verdict}{evidence}")
    if "handed_on" in record:
        parts.append(f"{record['handed_on']} model handed on (gain over the start "
                     f"{record['start_gain']:+.3f} MAE, p {record['start_p_value']:.3f})")
    unimodal = record.get("unimodal")
    if unimodal:
        verdict = {"fused": "the fused model is no worse, handed on",
                   "unimodal": f"the fused model was worse: the {unimodal['modality']} model handed on instead",
                   "fused, worse": "the fused model is WORSE and was handed on (its fusion cannot fall back)"}
        parts.append(f"validation MAE {unimodal['fused_val_MAE']:.3f} vs the best unimodal stage "
                     f"({unimodal['modality']}) {unimodal['val_MAE']:.3f}: {verdict[unimodal['handed_on']]}")
    return "; ".join(parts)


def plot(rows: list[dict], baselines: dict, path: Path) -> None:
    """A bar chart of test MAE and correlation per stage.

    Args:
        rows: From :func:`report_rows`.
        baselines: The trivial predictors' metrics per split, drawn as lines.
        path: The PNG to write.
    """
    rows = scoring_rows(rows)
    names = [r["stage"] for r in rows]
    figure = Figure(figsize=(10, 4))
    ax_mae, ax_corr = figure.subplots(1, 2)
    ax_mae.bar(names, [r["test"].get("MAE", 0) for r in rows], color="tab:blue")
    ax_mae.set_title("test MAE (lower is better)")
    best = [r["best_achievable_MAE"] for r in rows if "best_achievable_MAE" in r]
    if best:
        ax_mae.axhline(best[0], color="tab:green", linestyle="--", label="best achievable")
    if "MAE" in baselines.get("test", {}):
        ax_mae.axhline(baselines["test"]["MAE"], color="tab:red", linestyle=":", label="training median")
    ax_mae.legend(loc="upper right")
    ax_corr.bar(names, [r["test"].get("Corr", 0) for r in rows], color="tab:orange")
    ax_corr.set_title("test Pearson correlation")
    ax_corr.set_ylim(min(0.0, *[r["test"].get("Corr", 0) for r in rows]), 1.0)
    for ax in (ax_mae, ax_corr):
        ax.tick_params(axis="x", rotation=30)
    figure.tight_layout()
    atomic_write(path, lambda part: figure.savefig(part, dpi=100))


def figures_section(files: list[Path]) -> str:
    """Markdown that shows the figure ``files`` beside ``report.md``; empty without files."""
    if not files:
        return ""
    lines = ["", "## Test predictions", ""]
    for path in files:
        is_image = path.suffix == ".png"
        lines += [f"![{path.stem}]({path.name})" if is_image else f"[{path.name}]({path.name})", ""]
    return "\n".join(lines)


def write_report(manifest: dict, out_dir: Path) -> dict:
    """Prints the table and writes ``report.json``, ``report.md``, ``report.png`` and the figures.

    Args:
        manifest: The pipeline manifest.
        out_dir: The pipeline's output folder.

    Returns:
        The report as written to ``report.json``.
    """
    out_dir = Path(out_dir)
    rows = report_rows(manifest)
    baselines = stage_baselines(manifest)
    own_scores = own_score_correlations(manifest)
    skipped = skipped_stages(manifest)
    report = {"pipeline": manifest.get("pipeline"), "stages": rows, "baselines": baselines,
              "own_score_correlations": own_scores, "skipped": skipped}
    save_json(out_dir / "report.json", report)
    table = markdown_table(rows, baselines, own_scores, skipped)
    if rows:
        plot(rows, baselines, out_dir / "report.png")
    figures = figures_section(write_figures(manifest, out_dir))
    text = f"# {manifest.get('pipeline')} report\n\n{table}{figures}"
    atomic_write(out_dir / "report.md", lambda part: part.write_text(text))
    # The table is the run's result; where it was written, a notice.
    print(table)
    print(f"report written to {out_dir / 'report.md'}", file=sys.stderr)
    return report
