"""Losses and class weights against values computed by hand; class weights in a real fit."""

from __future__ import annotations

import logging
import math
import warnings

import pytest
import torch
from torch.nn import functional as F

from mvcli.cli import main
from mvcli.task.losses import HeadLoss, MultiTaskLoss, class_weights, focal_loss
from tests.conftest import CONFIGS, tiny_args

COUNTS = [10, 5, 0, 1]  # class 2 absent from training; N = 16


@pytest.mark.parametrize(
    ("strategy", "raw"),
    [
        ("inverse", [1 / 10, 1 / 5, 0.0, 1 / 1]),
        ("sqrt_inverse", [1 / math.sqrt(10), 1 / math.sqrt(5), 0.0, 1.0]),
        ("effective_number", [0.1 / (1 - 0.9**10), 0.1 / (1 - 0.9**5), 0.0, 0.1 / (1 - 0.9)]),
    ],
)
def test_class_weights_by_hand(strategy, raw):
    # Scaled so that the average training sample weighs 1: sum_c n_c w_c = N.
    scale = 16 / sum(n * w for n, w in zip(COUNTS, raw, strict=True))
    weights = class_weights(COUNTS, strategy, beta=0.9)
    assert weights.tolist() == pytest.approx([scale * w for w in raw], rel=1e-6)
    assert torch.isfinite(weights).all() and weights[2] == 0.0
    assert sum(n * w for n, w in zip(COUNTS, weights.tolist(), strict=True)) == pytest.approx(16)


def test_class_weights_capped():
    # inverse: 0.1, 0.2, -, 1.0; capped at 4 x 0.1 = 0.4; then scaled by 16 / 2.4.
    weights = class_weights(COUNTS, "inverse", max_weight_ratio=4.0)
    assert weights.tolist() == pytest.approx([16 / 24, 2 * 16 / 24, 0.0, 4 * 16 / 24])
    present = weights[weights > 0]
    assert float(present.max() / present.min()) == pytest.approx(4.0)


def test_class_weights_reject_nonsense():
    with pytest.raises(ValueError, match="no class"):
        class_weights([0, 0, 0])
    with pytest.raises(ValueError, match="beta"):
        class_weights(COUNTS, "effective_number", beta=1.0)
    with pytest.raises(ValueError, match="max_weight_ratio"):
        class_weights(COUNTS, max_weight_ratio=0.5)


LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
TARGET = torch.tensor([0, 2])


def _p(row: list[float], c: int) -> float:
    return math.exp(row[c]) / sum(math.exp(v) for v in row)


def test_focal_loss_by_hand():
    p0, p1 = _p([2.0, 0.0, -1.0], 0), _p([0.5, 1.5, 0.0], 2)
    fl = [(1 - p0) ** 2 * -math.log(p0), (1 - p1) ** 2 * -math.log(p1)]
    assert focal_loss(LOGITS, TARGET, gamma=2.0).item() == pytest.approx(sum(fl) / 2, rel=1e-5)
    alpha = torch.tensor([0.25, 1.0, 2.0])
    weighted = (0.25 * fl[0] + 2.0 * fl[1]) / (0.25 + 2.0)
    assert focal_loss(LOGITS, TARGET, 2.0, alpha).item() == pytest.approx(weighted, rel=1e-5)


def test_focal_with_gamma_zero_is_cross_entropy():
    alpha = torch.tensor([0.25, 1.0, 2.0])
    for smoothing in (0.0, 0.2):
        for weight in (None, alpha):
            ce = F.cross_entropy(LOGITS, TARGET, weight=weight, label_smoothing=smoothing)
            fl = focal_loss(LOGITS, TARGET, 0.0, weight, smoothing)
            torch.testing.assert_close(fl, ce)


def test_weighted_cross_entropy_by_hand():
    loss = HeadLoss(3, "weighted")
    loss.set_class_weights(torch.tensor([0.5, 1.0, 3.0]))
    p0, p1 = _p([2.0, 0.0, -1.0], 0), _p([0.5, 1.5, 0.0], 2)
    expected = (0.5 * -math.log(p0) + 3.0 * -math.log(p1)) / (0.5 + 3.0)
    assert loss(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-6)
    assert HeadLoss(3, "plain")(LOGITS, TARGET).item() == pytest.approx(
        (-math.log(p0) - math.log(p1)) / 2, rel=1e-6
    )


def test_per_head_losses_smoothing_and_task_weights():
    g = torch.Generator().manual_seed(0)
    logits = {
        "offence_severity": torch.randn(6, 4, generator=g),
        "action": torch.randn(6, 8, generator=g),
    }
    batch = {
        "offence_severity": torch.tensor([0, 1, 1, 3, 2, 1]),
        "action": torch.tensor([7, 0, 1, 1, 4, 2]),
    }
    criterion = MultiTaskLoss(
        {"offence_severity": 2.0, "action": 0.5},
        label_smoothing={"offence_severity": 0.1, "action": 0.0},
        kinds={"offence_severity": "focal", "action": "weighted"},
        focal_gamma=1.5,
        focal_alpha={"offence_severity": [1.0, 1.0, 2.0, 4.0]},
    )
    w = torch.linspace(0.5, 2.0, 8)
    assert criterion.heads_needing_class_weights == ["action"]
    criterion.set_class_weights("action", w)
    total, parts = criterion(logits, batch)
    os_ = focal_loss(logits["offence_severity"], batch["offence_severity"], 1.5,
                     torch.tensor([1.0, 1.0, 2.0, 4.0]), 0.1)  # fmt: skip
    action = F.cross_entropy(logits["action"], batch["action"], weight=w)
    torch.testing.assert_close(parts["offence_severity"], os_)
    torch.testing.assert_close(parts["action"], action)
    torch.testing.assert_close(total, 2.0 * os_ + 0.5 * action)
    with pytest.raises(ValueError, match="every head"):
        MultiTaskLoss({"offence_severity": 1.0, "action": 1.0}, kinds={"action": "focal"})
    with pytest.raises(ValueError, match="focal_alpha"):
        MultiTaskLoss({"action": 1.0}, focal_alpha={"action": [1.0]}, kinds="focal")


# -- MultiTaskLoss with plain heads -------------------------------------------------------
def _logits_and_batch():
    g = torch.Generator().manual_seed(0)
    logits = {
        "offence_severity": torch.randn(5, 4, generator=g, requires_grad=True),
        "action": torch.randn(5, 8, generator=g, requires_grad=True),
    }
    batch = {
        "offence_severity": torch.tensor([0, 3, 1, 1, 2]),
        "action": torch.tensor([7, 0, 2, 5, 5]),
        "view_mask": torch.ones(5, 2, dtype=torch.bool),  # other batch keys are ignored
    }
    return logits, batch


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_multitask_loss_is_weighted_sum_of_cross_entropies(smoothing):
    weights = {"offence_severity": 0.7, "action": 1.3}
    logits, batch = _logits_and_batch()
    total, parts = MultiTaskLoss(weights, label_smoothing=smoothing)(logits, batch)
    expected = {h: F.cross_entropy(logits[h], batch[h], label_smoothing=smoothing) for h in weights}
    assert set(parts) == set(weights)
    for head in weights:
        torch.testing.assert_close(parts[head], expected[head])
    torch.testing.assert_close(total, 0.7 * expected["offence_severity"] + 1.3 * expected["action"])
    total.backward()
    assert all(logits[h].grad is not None for h in weights)


def test_multitask_loss_only_weighted_heads_and_float32():
    logits, batch = _logits_and_batch()
    half = {h: v.detach().to(torch.bfloat16) for h, v in logits.items()}
    total, parts = MultiTaskLoss({"action": 2.0})(half, batch)
    assert set(parts) == {"action"}
    assert total.dtype == torch.float32
    expected = 2.0 * F.cross_entropy(half["action"].float(), batch["action"])
    torch.testing.assert_close(total, expected)


def _fit(root, runs, *extra):
    args = ["fit", "--config", str(CONFIGS / "demo.yaml"), "--config", str(CONFIGS / "debug.yaml"),
            *tiny_args(root, runs), "--trainer.enable_progress_bar", "false", *extra]  # fmt: skip
    return main(args)


def test_fit_computes_class_weights_from_training_labels(synthetic_root, tmp_path, caplog):
    with caplog.at_level(logging.INFO), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cli = _fit(synthetic_root, tmp_path, "--model.loss.kind", "weighted",
                   "--model.loss.class_weighting", "sqrt_inverse")  # fmt: skip
    assert not any("double balancing" in str(w.message) for w in record)  # natural sampler
    counts = cli.datamodule.class_counts
    for head in ("offence_severity", "action"):
        expected = class_weights(counts[head], "sqrt_inverse")
        torch.testing.assert_close(cli.model.criterion.losses[head].class_weights, expected)
    logged = [
        r.getMessage() for r in caplog.records if "class weights (sqrt_inverse)" in r.getMessage()
    ]
    assert len(logged) == 1 and "Tackling=" in logged[0]


def test_double_balancing_is_warned_once_unless_asked(synthetic_root, tmp_path):
    both = ["--model.loss.kind", "{offence_severity: plain, action: weighted}",
            "--data.sampler", "balanced_action"]  # fmt: skip
    with pytest.warns(UserWarning, match="double balancing") as record:
        _fit(synthetic_root, tmp_path, *both)
    assert sum("double balancing" in str(w.message) for w in record) == 1
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _fit(synthetic_root, tmp_path, *both, "--model.loss.allow_double_balancing", "true")
    assert not any("double balancing" in str(w.message) for w in record)


# -- soft targets (mixup / cutmix) -----------------------------------------------------------
@pytest.mark.parametrize("kind", ["plain", "weighted", "focal"])
def test_one_hot_soft_targets_equal_class_indices(kind):
    torch.manual_seed(0)
    logits, target = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 1, 0])
    loss = HeadLoss(
        4, kind, label_smoothing=0.1, focal_alpha="class_weights" if kind == "focal" else None
    )
    loss.set_class_weights(torch.tensor([0.5, 1.0, 2.0, 4.0]))
    soft = F.one_hot(target, 4).float()
    torch.testing.assert_close(loss(logits, soft), loss(logits, target))


def test_mixed_targets_mix_the_losses():
    """Cross-entropy is linear in the target: lam*CE(y1) + (1-lam)*CE(y2)."""
    torch.manual_seed(0)
    logits = torch.randn(5, 8)
    y1, y2, lam = torch.randint(0, 8, (5,)), torch.randint(0, 8, (5,)), 0.3
    soft = lam * F.one_hot(y1, 8).float() + (1 - lam) * F.one_hot(y2, 8).float()
    loss = HeadLoss(8)
    expected = lam * loss(logits, y1) + (1 - lam) * loss(logits, y2)
    torch.testing.assert_close(loss(logits, soft), expected)


def test_multitask_loss_reads_soft_targets_of_both_heads():
    torch.manual_seed(0)
    logits = {"offence_severity": torch.randn(3, 4), "action": torch.randn(3, 8)}
    batch = {"offence_severity": torch.tensor([0, 1, 2]), "action": torch.tensor([3, 4, 5])}
    criterion = MultiTaskLoss({"offence_severity": 1.0, "action": 1.0})
    hard, _ = criterion(logits, batch)
    soft = {h: F.one_hot(batch[h], n).float() for h, n in (("offence_severity", 4), ("action", 8))}
    same, _ = criterion(logits, batch | {"soft_targets": soft})
    torch.testing.assert_close(same, hard)
    soft["action"] = torch.full((3, 8), 1 / 8)
    mixed, parts = criterion(logits, batch | {"soft_targets": soft})
    assert not torch.isclose(mixed, hard)
    torch.testing.assert_close(parts["action"], -logits["action"].log_softmax(-1).mean(-1).mean())
    with pytest.raises(ValueError, match="soft targets need 8 classes"):
        criterion(logits, batch | {"soft_targets": {"action": torch.ones(3, 4) / 4}})
