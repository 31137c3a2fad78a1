"""Figures of a stage's test predictions, the same in ``report.md`` and in W&B.

Every function returns a :class:`matplotlib.figure.Figure` (never touching pyplot's global
state), a table or an image array.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mmsent.io import atomic_write

LABEL_BOUND = 3.0
CLASSES = np.arange(-3, 4)
PREDICTIONS_FILE = "predictions.csv"
PREDICTION_COLUMNS = ("id", "text", "label", "prediction")
PANEL_SIZE = 4.0


def seven_classes(scores: Iterable[float]) -> np.ndarray:
    """The classes -3..3 of ``scores`` as ``Mult_acc_7`` counts them: clipped, halves to even."""
    return np.rint(np.clip(np.asarray(scores, dtype=float), -LABEL_BOUND, LABEL_BOUND)).astype(int)


def confusion_matrix(labels: Iterable[float], predictions: Iterable[float]) -> np.ndarray:
    """Counts of true class (rows) against predicted class (columns), classes -3..3.

    Args:
        labels: True scores.
        predictions: Predicted scores.

    Returns:
        A ``(7, 7)`` integer matrix; its trace over its sum is ``Mult_acc_7``.
    """
    offset = int(LABEL_BOUND)
    matrix = np.zeros((len(CLASSES), len(CLASSES)), dtype=int)
    np.add.at(matrix, (seven_classes(labels) + offset, seven_classes(predictions) + offset), 1)
    return matrix


def predictions_table(outputs: Iterable[Mapping]) -> pd.DataFrame:
    """One row per sample from what ``predict_step`` returned for each batch.

    Args:
        outputs: Batches with ``id``, ``transcript``, ``label``, ``prediction`` and maybe
            ``own_prediction`` (a stage that adds fixed stages' predictions to its own).

    Returns:
        Columns ``id``, ``text``, ``label``, ``prediction`` (and ``own_prediction``).
    """
    frames = [pd.DataFrame({
        "id": [str(i) for i in batch["id"]],
        "text": [str(t) for t in batch["transcript"]],
        "label": np.asarray(batch["label"], dtype=float).reshape(-1),
        "prediction": np.asarray(batch["prediction"], dtype=float).reshape(-1),
        **({"own_prediction": np.asarray(batch["own_prediction"], dtype=float).reshape(-1)}
           if "own_prediction" in batch else {})}) for batch in outputs]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PREDICTION_COLUMNS)


def read_predictions(path: str | Path) -> pd.DataFrame:
    """Reads a stage's ``predictions.csv``, ids as strings."""
    return pd.read_csv(path, dtype={"id": str, "text": str}, keep_default_na=False)


def merge_predictions(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Every stage's predictions side by side, one row per test sample.

    Args:
        tables: Stage name -> its predictions, in stage order.

    Returns:
        ``id``, ``text``, ``label``, then ``pred_<stage>`` per stage (NaN where none).
    """
    if not tables:
        return pd.DataFrame(columns=["id", "text", "label"])
    samples = pd.concat([t[["id", "text", "label"]] for t in tables.values()])
    merged = samples.drop_duplicates("id").set_index("id")
    for stage, table in tables.items():
        merged[f"pred_{stage}"] = table.set_index("id")["prediction"]
    return merged.reset_index()


def stage_predictions(manifest: Mapping) -> dict[str, pd.DataFrame]:
    """Stage -> test predictions, for the finished stages of ``manifest`` whose file exists."""
    tables = {}
    for name, record in manifest.get("stages", {}).items():
        path = record.get("predictions")
        if record.get("status") == "done" and path and Path(path).is_file():
            tables[name] = read_predictions(path)
    return tables


def contributions(manifest: Mapping) -> dict[str, dict[str, float]]:
    """Stage -> modality -> test MAE added by masking it, for stages of ``manifest`` that ran it."""
    found = {}
    for name, record in manifest.get("stages", {}).items():
        test = record.get("metrics", {}).get("test", {})
        values = {k.split("/", 1)[1]: v for k, v in test.items() if k.startswith("contribution/")}
        if values:
            found[name] = values
    return found


def _grid(count: int, columns: int = 3) -> tuple[Figure, list]:
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(PANEL_SIZE * columns, PANEL_SIZE * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel().tolist()
    for spare in axes[count:]:
        spare.set_visible(False)
    return figure, axes[:count]


def draw_scatter(ax, labels: Iterable[float], predictions: Iterable[float], title: str = "") -> None:
    """Draws predicted against true score with the identity line.

    Args:
        ax: The matplotlib axes to draw on.
        labels: True scores.
        predictions: Predicted scores.
        title: The panel title; the MAE is appended.
    """
    labels, predictions = np.asarray(labels, dtype=float), np.asarray(predictions, dtype=float)
    ax.scatter(labels, predictions, s=10, alpha=0.6, color="tab:blue")
    ax.plot([-LABEL_BOUND, LABEL_BOUND], [-LABEL_BOUND, LABEL_BOUND], color="grey", linestyle="--", lw=1)
    ax.set(xlim=(-LABEL_BOUND - 0.2, LABEL_BOUND + 0.2), ylim=(-LABEL_BOUND - 0.2, LABEL_BOUND + 0.2),
           xlabel="true score", ylabel="predicted score", aspect="equal")
    mae = float(np.abs(predictions - labels).mean()) if len(labels) else float("nan")
    ax.set_title(f"{title} (MAE {mae:.3f})".strip())


def draw_confusion(ax, labels: Iterable[float], predictions: Iterable[float], title: str = "") -> None:
    """Draws the 7-class confusion matrix with counts in the cells.

    Args:
        ax: The matplotlib axes to draw on.
        labels: True scores.
        predictions: Predicted scores.
        title: The panel title; ``Mult_acc_7`` is appended.
    """
    matrix = confusion_matrix(labels, predictions)
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(CLASSES))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=CLASSES, yticklabels=CLASSES,
           xlabel="predicted class", ylabel="true class")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), count in np.ndenumerate(matrix):
        if count:
            ax.text(column, row, str(count), ha="center", va="center", fontsize=8,
                    color="white" if count > threshold else "black")
    accuracy = matrix.trace() / max(matrix.sum(), 1)
    ax.set_title(f"{title} (Mult_acc_7 {100 * accuracy:.1f}%)".strip())


def stage_panels(tables: Mapping[str, pd.DataFrame], draw) -> Figure:
    """One panel per stage, each drawn from the stage's test predictions.

    Args:
        tables: Stage -> predictions.
        draw: :func:`draw_scatter` or :func:`draw_confusion`.

    Returns:
        The figure.
    """
    figure, axes = _grid(len(tables))
    for ax, (stage, table) in zip(axes, tables.items(), strict=True):
        draw(ax, table["label"], table["prediction"], stage)
    return figure


def contribution_figure(values: Mapping[str, Mapping[str, float]]) -> Figure:
    """Grouped bars of ``values`` (stage -> modality -> contribution), a group per modality."""
    modalities = list(dict.fromkeys(m for per_stage in values.values() for m in per_stage))
    figure = Figure(figsize=(max(4.0, 1.6 * len(modalities) * max(1, len(values))), 3.5),
                    layout="constrained")
    ax = figure.subplots()
    width = 0.8 / max(1, len(values))
    positions = np.arange(len(modalities))
    for index, (stage, per_stage) in enumerate(values.items()):
        heights = [per_stage.get(m, np.nan) for m in modalities]
        ax.bar(positions + index * width - 0.4 + width / 2, heights, width, label=stage)
    ax.axhline(0.0, color="grey", lw=1)
    ax.set(xticks=positions, xticklabels=modalities,
           ylabel="test MAE increase when masked", title="per-modality contribution")
    ax.legend()
    return figure


def frame_strip(video, count: int = 3, min_height: int = 96) -> np.ndarray:
    """A few frames of one clip side by side, first to last (the cue is the motion).

    Args:
        video: Frames ``(3, T, H, W)`` in [-1, 1], as the DataModule serves them.
        count: Frames to show, evenly spaced over the clip.
        min_height: Small frames are enlarged by whole pixels to at least this.

    Returns:
        An ``(s * H, s * count * W, 3)`` uint8 image, ``s`` the enlargement.
    """
    frames = np.asarray(video, dtype=np.float32)
    picks = np.linspace(0, frames.shape[1] - 1, num=min(count, frames.shape[1])).round().astype(int)
    strip = np.concatenate([frames[:, t] for t in picks], axis=2).transpose(1, 2, 0)
    scale = max(1, math.ceil(min_height / strip.shape[0]))
    strip = strip.repeat(scale, axis=0).repeat(scale, axis=1)
    return ((strip + 1.0) * 127.5).clip(0, 255).astype(np.uint8)


def write_figures(manifest: Mapping, out_dir: str | Path) -> list[Path]:
    """Saves ``scatter.png``, ``confusion.png``, ``contributions.png`` and ``predictions.csv``.

    Args:
        manifest: The pipeline manifest.
        out_dir: The report folder.

    Returns:
        The files written (none when no stage recorded predictions).
    """
    out_dir = Path(out_dir)
    tables = stage_predictions(manifest)
    written = []
    if tables:
        merged = merge_predictions(tables)
        atomic_write(out_dir / PREDICTIONS_FILE, lambda part: merged.to_csv(part, index=False))
        written.append(out_dir / PREDICTIONS_FILE)
        for name, draw in (("scatter.png", draw_scatter), ("confusion.png", draw_confusion)):
            figure = stage_panels(tables, draw)
            atomic_write(out_dir / name, lambda part, figure=figure: figure.savefig(part, dpi=100))
            written.append(out_dir / name)
    values = contributions(manifest)
    if values:
        figure = contribution_figure(values)
        atomic_write(out_dir / "contributions.png", lambda part: figure.savefig(part, dpi=100))
        written.append(out_dir / "contributions.png")
    return written
