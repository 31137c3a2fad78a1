"""The field's regression metrics for sentiment scores, with MMSA's definitions.

MMSA (thuiar/MMSA, ``utils/metricsTop.py``) is what MOSI/MOSEI papers report, so
the names and definitions here match it exactly:

* ``Has0_acc_2`` / ``Has0_F1_score``: binary, positive means ``>= 0``, every sample.
* ``Non0_acc_2`` / ``Non0_F1_score``: binary, positive means ``> 0``, samples whose
  label is exactly 0 are left out.
* ``Mult_acc_5`` / ``Mult_acc_7``: clip to ``[-2, 2]`` / ``[-3, 3]``, round, exact match.
* ``MAE`` and ``Corr`` (Pearson), over the whole split at once. F1 is weighted by class support.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import BinaryAccuracy, MulticlassAccuracy, MulticlassF1Score
from torchmetrics.functional import pearson_corrcoef
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.wrappers import LambdaInputTransformer

METRIC_NAMES: tuple[str, ...] = (
    "Has0_acc_2",
    "Has0_F1_score",
    "Non0_acc_2",
    "Non0_F1_score",
    "Mult_acc_5",
    "Mult_acc_7",
    "MAE",
    "Corr",
)
IGNORED = -1  # the class of a sample a binary Non0 metric leaves out (label exactly 0)


def pearson(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Pearson correlation, 0 when either side is constant.

    Args:
        pred (torch.Tensor): Predictions, shape ``(N,)``.
        target (torch.Tensor): Labels, shape ``(N,)``.

    Returns:
        float: The correlation coefficient.
    """
    pred, target = pred.double(), target.double()
    # torchmetrics answers a constant side with a warning and nan; MMSA's tables read 0.
    if len(pred) < 2 or bool((pred == pred[0]).all()) or bool((target == target[0]).all()):
        return 0.0
    return float(pearson_corrcoef(pred, target))


class WholeSplit(Metric):
    """A metric computed over every prediction and label of an epoch at once, on the
    CPU: its float sums run in one order whatever the batches and the device, as the
    checkpoints' criterion ``val/MAE`` must.

    Args:
        score (Callable[[torch.Tensor, torch.Tensor], torch.Tensor]): ``(preds, targets) -> value``.
    """

    full_state_update = False

    def __init__(self, score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.score = score
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        """Adds a batch.

        Args:
            preds (torch.Tensor): Predicted scores.
            targets (torch.Tensor): True scores.
        """
        self.preds.append(preds.detach().flatten().float())
        self.targets.append(targets.detach().flatten().float())

    def compute(self) -> torch.Tensor:
        """torch.Tensor: The score over the epoch, float32 (as Lightning logs a float)."""
        return torch.as_tensor(self.score(dim_zero_cat(self.preds).cpu(), dim_zero_cat(self.targets).cpu()),
                               dtype=torch.float32)


def _has0(scores: torch.Tensor) -> torch.Tensor:
    return (scores >= 0).long()


def _positive(scores: torch.Tensor) -> torch.Tensor:
    return (scores > 0).long()


def _non0(labels: torch.Tensor) -> torch.Tensor:
    return torch.where(labels == 0, IGNORED, _positive(labels))


def _classes(bound: int):
    def rounded(scores: torch.Tensor) -> torch.Tensor:
        return torch.round(scores.float().clamp(-bound, bound)).long() + bound
    return rounded


def sentiment_metrics(prefix: str | None = None) -> MetricCollection:
    """Every metric of :data:`METRIC_NAMES`, updated with ``(preds, targets)`` scores.

    Args:
        prefix (str | None): Put before every name, e.g. ``"val/"``.

    Returns:
        MetricCollection: Accuracies and F1 as fractions in ``[0, 1]``.
    """
    def classes(metric: Metric, pred, target=None) -> LambdaInputTransformer:
        return LambdaInputTransformer(metric, pred, target or pred)

    return MetricCollection({
        "Has0_acc_2": classes(BinaryAccuracy(), _has0),
        "Has0_F1_score": classes(MulticlassF1Score(2, average="weighted"), _has0),
        "Non0_acc_2": classes(BinaryAccuracy(ignore_index=IGNORED), _positive, _non0),
        "Non0_F1_score": classes(MulticlassF1Score(2, average="weighted", ignore_index=IGNORED), _positive, _non0),
        "Mult_acc_5": classes(MulticlassAccuracy(5, average="micro"), _classes(2)),
        "Mult_acc_7": classes(MulticlassAccuracy(7, average="micro"), _classes(3)),
        "MAE": WholeSplit(lambda preds, targets: (preds - targets).abs().mean()),
        "Corr": WholeSplit(pearson),
    }, prefix=prefix, compute_groups=[["MAE", "Corr"]])


def regression_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Computes every MMSA regression metric (:func:`sentiment_metrics`) at once.

    Args:
        pred (torch.Tensor): Predicted scores, shape ``(N,)``.
        target (torch.Tensor): True scores in ``[-3, 3]``, shape ``(N,)``.

    Returns:
        dict[str, float]: One value per name in :data:`METRIC_NAMES`; accuracies and F1
        as fractions in ``[0, 1]``.
    """
    metrics = sentiment_metrics()
    metrics.update(pred.detach().float().flatten().cpu(), target.detach().float().flatten().cpu())
    return {name: float(value) for name, value in metrics.compute().items()}


# Per accuracy or F1 metric, the label statistic that predicts the training set's majority class.
MAJORITY_KEYS = {"Has0_acc_2": "Has0_majority", "Has0_F1_score": "Has0_majority",
                 "Non0_acc_2": "Non0_majority", "Non0_F1_score": "Non0_majority",
                 "Mult_acc_5": "Mult5_majority", "Mult_acc_7": "Mult7_majority"}


def label_statistics(labels) -> dict[str, float]:
    """What the trivial predictors of the training labels predict.

    Args:
        labels: The training scores, any array-like of shape ``(N,)``.

    Returns:
        dict[str, float]: ``median`` (the best constant under L1), ``mean`` (under MSE),
        and per class metric a score in the majority class (``Has0_majority``,
        ``Non0_majority``, ``Mult5_majority``, ``Mult7_majority``).

    Raises:
        ValueError: If there is no label.
    """
    values = np.asarray(labels, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("no training label to compute label statistics from")
    non_zero = values[values != 0]
    stats = {"median": float(np.median(values)), "mean": float(values.mean()),
             "Has0_majority": 0.0 if (values >= 0).mean() >= 0.5 else -1.0,
             "Non0_majority": 1.0 if non_zero.size == 0 or (non_zero > 0).mean() >= 0.5 else -1.0}
    for name, bound in (("Mult5_majority", 2.0), ("Mult7_majority", 3.0)):
        classes, counts = np.unique(np.round(np.clip(values, -bound, bound)), return_counts=True)
        stats[name] = float(classes[np.argmax(counts)])
    return stats


def baseline_metrics(statistics: dict[str, float], target: torch.Tensor) -> dict[str, float]:
    """Every metric of the trivial predictors: the training median, or the majority class.

    Args:
        statistics (dict[str, float]): From :func:`label_statistics` on the training labels.
        target (torch.Tensor): The true scores of the split scored, shape ``(N,)``.

    Returns:
        dict[str, float]: One value per name in :data:`METRIC_NAMES`.
    """
    target = target.detach().float().flatten().cpu()
    scores = {"MAE": statistics["median"], "Corr": statistics["median"],
              **{name: statistics[key] for name, key in MAJORITY_KEYS.items()}}
    return {name: regression_metrics(torch.full_like(target, scores[name]), target)[name]
            for name in METRIC_NAMES}
