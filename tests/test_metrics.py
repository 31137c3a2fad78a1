"""The MMSA metrics against values worked out by hand."""

import math

import pytest
import torch

from mmsent.metrics import baseline_metrics, label_statistics, regression_metrics, sentiment_metrics
from mmsent.tasks.base import BaseTask

PREDS = torch.tensor([2.6, -0.4, 0.2, -1.6, 0.0, 1.2])
LABELS = torch.tensor([3.0, 0.0, -0.4, -2.0, 0.0, 1.4])


def test_binary_accuracies_follow_mmsa_zero_handling():
    values = regression_metrics(PREDS, LABELS)
    # Has0: positive means >= 0 on every sample.
    # truth  [T, T, F, F, T, T]; pred [T, F, T, F, T, T] -> 4 of 6 agree.
    assert values["Has0_acc_2"] == pytest.approx(4 / 6)
    # Non0: zero labels (2nd, 5th) dropped, positive means > 0.
    # truth [T, F, F, T]; pred [T, T, F, T] -> 3 of 4.
    assert values["Non0_acc_2"] == pytest.approx(3 / 4)


def test_multiclass_accuracies_clip_then_round():
    values = regression_metrics(PREDS, LABELS)
    # 7 classes: round(clip(x, -3, 3)): preds [3,-0,0,-2,0,1], labels [3,0,-0,-2,0,1] -> all equal.
    assert values["Mult_acc_7"] == pytest.approx(1.0)
    # 5 classes clip to [-2, 2] first: preds [2,-0,0,-2,0,1], labels [2,0,-0,-2,0,1].
    assert values["Mult_acc_5"] == pytest.approx(1.0)
    shifted = regression_metrics(torch.tensor([2.6, 1.6]), torch.tensor([3.0, 0.4]))
    # [3, 2] vs [3, 0] -> one of two.
    assert shifted["Mult_acc_7"] == pytest.approx(0.5)


def test_mae_and_correlation():
    values = regression_metrics(PREDS, LABELS)
    assert values["MAE"] == pytest.approx((0.4 + 0.4 + 0.6 + 0.4 + 0.0 + 0.2) / 6)
    expected = torch.corrcoef(torch.stack([PREDS, LABELS]))[0, 1].item()
    assert values["Corr"] == pytest.approx(expected, abs=1e-6)


def test_weighted_f1_by_hand():
    truth = torch.tensor([1.0, 1.0, 1.0, -1.0])
    pred = torch.tensor([1.0, -1.0, 1.0, 1.0])
    # positive: precision 2/3, recall 2/3 -> f1 2/3, support 3; negative: p 0, r 0 -> 0, support 1.
    values = regression_metrics(pred, truth)
    assert values["Has0_F1_score"] == pytest.approx((2 / 3 * 3 + 0 * 1) / 4)
    assert values["Non0_F1_score"] == pytest.approx((2 / 3 * 3 + 0 * 1) / 4)


def test_only_zero_labels_leave_the_non0_metrics_at_zero():
    values = regression_metrics(torch.tensor([0.5, -0.5]), torch.zeros(2))
    assert values["Non0_acc_2"] == 0.0 and values["Non0_F1_score"] == 0.0
    assert values["Has0_acc_2"] == 0.5


def test_constant_predictions_have_zero_correlation():
    values = regression_metrics(torch.zeros(4), torch.tensor([1.0, -1.0, 2.0, 0.5]))
    assert values["Corr"] == 0.0
    assert math.isfinite(values["MAE"])


def test_split_collection_prefixes_every_metric_with_its_split():
    metrics = sentiment_metrics("val/")
    metrics.update(PREDS[:2], LABELS[:2])
    metrics.update(PREDS[2:], LABELS[2:])
    assert metrics.compute() == pytest.approx({f"val/{k}": v for k, v in regression_metrics(PREDS, LABELS).items()})


def test_batches_give_the_figures_of_one_call_to_the_last_bit():
    # The checkpoints are chosen by val/MAE: its float sum runs over the whole split in
    # one order, whatever the batches, as the figures of earlier runs were computed.
    generator = torch.Generator().manual_seed(0)
    preds, labels = torch.randn(1000, generator=generator) * 3, torch.randn(1000, generator=generator) * 3
    metrics = sentiment_metrics()
    for start in range(0, 1000, 7):
        metrics.update(preds[start:start + 7], labels[start:start + 7])
    batched = {name: float(value) for name, value in metrics.compute().items()}
    assert batched == regression_metrics(preds, labels)
    assert batched["MAE"] == float((preds - labels).abs().mean())


def test_the_split_loss_weights_each_batch_by_its_size_and_a_nan_batch_stays_nan():
    loss = BaseTask().losses["val"]
    loss.update(torch.tensor(1.0), 3)
    loss.update(torch.tensor(2.0), 1)
    assert loss.compute().item() == (3 * 1.0 + 1 * 2.0) / 4
    loss.update(torch.tensor(math.nan), 2)
    assert math.isnan(loss.compute().item())

def test_label_statistics_and_trivial_predictors_by_hand():
    train = [2.0, 1.6, 1.4, -0.4, 0.0, 1.2, 2.6, 0.9, 1.0]
    stats = label_statistics(train)
    assert stats["median"] == 1.2 and abs(stats["mean"] - 10.3 / 9) < 1e-12
    assert stats["Has0_majority"] == 0.0 and stats["Non0_majority"] == 1.0
    assert stats["Mult5_majority"] == 1.0 and stats["Mult7_majority"] == 1.0
    target = torch.tensor([1.0, -1.0, 0.0, 3.0])
    base = baseline_metrics(stats, target)
    assert abs(base["MAE"] - (0.2 + 2.2 + 1.2 + 1.8) / 4) < 1e-6
    assert base["Corr"] == 0.0
    assert base["Has0_acc_2"] == 0.75 and abs(base["Non0_acc_2"] - 2 / 3) < 1e-6
    assert base["Mult_acc_7"] == 0.25 and base["Mult_acc_5"] == 0.25
    negative = label_statistics([-2.0, -1.0, 0.5])
    assert negative["Has0_majority"] == -1.0 and negative["Non0_majority"] == -1.0
