"""Lightning's tuner callbacks from YAML; mvcli's LearningRateFinder keeps the LR ratios; the
LR range test's curve and suggestion (mvcli.callbacks.tuning.lr_curve)."""

from __future__ import annotations

import math

import pytest
from lightning.pytorch.callbacks import BatchSizeFinder

from mvcli.callbacks.tuning import BETA, LearningRateFinder, lr_curve, raw_losses, smooth
from mvcli.cli import main
from tests.conftest import CONF, CONFIGS, tiny_args


def _common(root, runs) -> list[str]:
    return ["--config", str(CONFIGS / "demo.yaml"), *tiny_args(root, runs),
            "--trainer.enable_progress_bar", "false"]  # fmt: skip


def test_tuner_callbacks_update_the_optimizer_lr_and_the_batch_size(synthetic_root, tmp_path):
    args = [*_common(synthetic_root, tmp_path), "--config", str(CONF / "tuners.yaml"),
            "--trainer.max_epochs", "2", "--trainer.limit_val_batches", "1",
            "--model.backbone_lr_ratio", "0.5"]  # fmt: skip
    cli = main(["fit", *args])
    finder = next(c for c in cli.trainer.callbacks if isinstance(c, LearningRateFinder))
    sizes = next(c for c in cli.trainer.callbacks if isinstance(c, BatchSizeFinder))
    # From init_val 2 (one trial), not the config's 4: the data module's batch size was set.
    assert cli.datamodule.hparams.batch_size == sizes.optimal_batch_size == 2
    # The suggestion is the curve's (from the raw losses), not Lightning's own.
    assert finder.curve is not None and len(finder.curve.lrs) == 14
    suggestion = finder.curve.suggestion
    assert suggestion is not None and cli.model.lr == suggestion
    groups = {g["name"]: g["initial_lr"] for g in cli.trainer.optimizers[0].param_groups}
    # heads at the suggestion, each backbone stage's group (one per stage) at half of it
    stages = {cli.model.stage_group(s) for s in cli.model.backbone_stage_parameters()}
    assert stages == {"backbone.stem", "backbone.layer1", "backbone.layer2"}
    assert groups == {"heads": suggestion} | dict.fromkeys(stages, suggestion * 0.5)


# -- the curve and its suggestion -------------------------------------------------------------
# Raw losses 2, 2, 1, 8 with beta 0.5. Lightning's average: 1, 1.5, 1.25, 4.625, divided by
# 1 - 0.5**(k + 2) (global_step already past the step): 4/3, 12/7, 4/3, 4.625/(31/32): the
# curve rises over a flat loss and its first point reads two thirds of it. Corrected, divided
# by 1 - 0.5**(k + 1): 2, 2, 10/7, 4.625/(15/16) = 74/15.
LIGHTNING_CURVE = [4 / 3, 12 / 7, 4 / 3, 4.625 * 32 / 31]


def test_raw_losses_undo_lightnings_smoothing_with_its_off_by_one() -> None:
    assert raw_losses(LIGHTNING_CURVE, beta=0.5) == pytest.approx([2, 2, 1, 8])
    # From global_step 2 on, Lightning divides by 1 - 0.5**(k + 4): the first point is 1/(15/16).
    assert raw_losses([16 / 15], start_step=2, beta=0.5) == pytest.approx([2])
    # A step without a loss (NaN) leaves the average as it was.
    assert raw_losses([4 / 3, math.nan, 1.5 / 0.9375], beta=0.5) == pytest.approx(
        [2, math.nan, 2], nan_ok=True
    )


def test_smooth_is_bias_corrected_from_the_first_loss() -> None:
    assert smooth([2, 2, 1, 8], beta=0.5) == pytest.approx([2, 2, 10 / 7, 74 / 15])
    assert smooth([3, math.nan, 3]) == pytest.approx([3, math.nan, 3], nan_ok=True)


def test_lr_curve_suggests_a_tenth_of_the_minimum() -> None:
    # Lightning's default beta: losses flat, then falling to a minimum at lr 1, then climbing.
    lrs = [10.0**e for e in range(-6, 3)]
    raw = [4.0, 4.0, 4.0, 3.0, 2.0, 1.0, 0.5, 50.0, 100.0]
    avg, lightning = 0.0, []
    for k, loss in enumerate(raw):
        avg = BETA * avg + (1 - BETA) * loss
        lightning.append(avg / (1 - BETA ** (k + 2)))
    assert lightning[1] > lightning[0]  # the off-by-one rise on a flat loss
    curve = lr_curve(lrs, lightning)
    assert curve.raw == pytest.approx(raw)
    assert curve.smoothed == pytest.approx(smooth(raw))
    assert curve.smoothed[:3] == pytest.approx([4.0, 4.0, 4.0])
    assert (curve.minimum, curve.index) == (6, 5)
    assert curve.suggestion == pytest.approx(0.1)


def test_lr_curve_without_a_fall_suggests_nothing() -> None:
    rising = [1.0, 2.0, 3.0]
    avg, lightning = 0.0, []
    for k, loss in enumerate(rising):
        avg = BETA * avg + (1 - BETA) * loss
        lightning.append(avg / (1 - BETA ** (k + 2)))
    curve = lr_curve([1e-3, 1e-2, 1e-1], lightning)
    assert curve.suggestion is None and curve.minimum is None
    assert lr_curve([1e-3], [math.nan]).suggestion is None
