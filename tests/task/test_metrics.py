"""BalancedAccuracy, head metrics and the leaderboard value against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from mvcli.task.metrics import BalancedAccuracy, head_metrics, leaderboard

# Class 0: 1 of 2 right, class 1: 2 of 3, class 2: 0 of 1; class 3 is predicted once but
# never in the ground truth, so it is left out of the mean (not a 0/0 NaN).
TARGET = torch.tensor([0, 0, 1, 1, 1, 2])
PREDS = torch.tensor([0, 1, 1, 1, 0, 3])
EXPECTED = (1 / 2 + 2 / 3 + 0 / 1) / 3


def _one_hot_logits(preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(len(preds), num_classes, generator=g)
    logits[torch.arange(len(preds)), preds] = 10.0
    return logits


def test_balanced_accuracy_by_hand():
    metric = BalancedAccuracy(num_classes=4)
    metric.update(PREDS, TARGET)
    value = metric.compute()
    assert not torch.isnan(value)
    assert value.item() == pytest.approx(EXPECTED)
    # Plain accuracy (3/6) would differ: classes are weighted equally, not samples.
    assert value.item() != pytest.approx(3 / 6)


def test_balanced_accuracy_perfect_and_all_wrong():
    metric = BalancedAccuracy(num_classes=3)
    metric.update(torch.tensor([2, 0, 0]), torch.tensor([2, 0, 0]))
    assert metric.compute().item() == pytest.approx(1.0)
    metric.reset()
    metric.update(torch.tensor([1, 1, 1]), torch.tensor([2, 0, 0]))
    assert metric.compute().item() == pytest.approx(0.0)


def test_balanced_accuracy_accumulates_over_updates():
    one_shot = BalancedAccuracy(num_classes=4)
    one_shot.update(PREDS, TARGET)
    chunked = BalancedAccuracy(num_classes=4)
    for start, stop in [(0, 1), (1, 4), (4, 4), (4, 6)]:
        chunked.update(PREDS[start:stop], TARGET[start:stop])
    assert chunked.compute().item() == pytest.approx(one_shot.compute().item())
    assert chunked.compute().item() == pytest.approx(EXPECTED)
    # Not the mean of per-batch values (batch 1 alone scores 1.0).
    per_batch = BalancedAccuracy(num_classes=4)
    per_batch.update(PREDS[:1], TARGET[:1])
    assert per_batch.compute().item() == pytest.approx(1.0)


def test_balanced_accuracy_takes_logits():
    from_labels = BalancedAccuracy(num_classes=4)
    from_labels.update(PREDS, TARGET)
    from_logits = BalancedAccuracy(num_classes=4)
    from_logits.update(_one_hot_logits(PREDS, 4), TARGET)
    assert from_logits.compute().item() == pytest.approx(from_labels.compute().item())
    probabilities = BalancedAccuracy(num_classes=4)
    probabilities.update(_one_hot_logits(PREDS, 4).softmax(-1), TARGET)
    assert probabilities.compute().item() == pytest.approx(EXPECTED)


def test_balanced_accuracy_without_ground_truth_is_nan():
    metric = BalancedAccuracy(num_classes=4)
    empty = torch.zeros(0, dtype=torch.long)
    metric.update(empty, empty)
    assert math.isnan(metric.compute().item())


def test_balanced_accuracy_reset():
    metric = BalancedAccuracy(num_classes=4)
    metric.update(PREDS, TARGET)
    metric.reset()
    metric.update(torch.tensor([3]), torch.tensor([3]))
    assert metric.compute().item() == pytest.approx(1.0)


def test_head_metrics_and_leaderboard():
    metrics = head_metrics(4)
    metrics.update(_one_hot_logits(PREDS, 4), TARGET)
    values = metrics.compute()
    assert values["acc"].item() == pytest.approx(3 / 6)
    assert values["bacc"].item() == pytest.approx(EXPECTED)
    board = leaderboard(
        {"val/bacc_a": torch.tensor(0.25), "val/bacc_b": torch.tensor(0.75)}, ["a", "b"], "val"
    )
    assert board.item() == pytest.approx(0.5)
