"""The LR range test's curve and suggestion, and Lightning's LR finder as a callback that
applies it the mvcli way.

Lightning's finder (``lightning.pytorch.tuner.lr_finder``) records one smoothed loss per
step: an exponential moving average of the losses, started from zero, divided by
``1 - beta**(global_step + 1)`` to undo that start. But ``global_step`` has already counted
the step's optimizer step, so the k-th point (from 0) is divided by ``1 - beta**(k + 2)``
instead of ``1 - beta**(k + 1)``: the first points read about half the real losses, the
curve rises over the smallest LRs, and Lightning's suggestion (the steepest gradient, in LR
units, past the first 10 points) lands on that rise (Lightning issue 14167). On the demo it
suggests 6.9e-6 where 6e-3 trains to a perfect test score.

:func:`lr_curve` undoes Lightning's smoothing exactly (:func:`raw_losses`: the per-step
losses, since each smoothed value is a known mix of the previous average and the new loss),
smooths them again with the right correction (:func:`smooth`) and suggests **a tenth of the
LR at the smoothed curve's minimum** (the tried LR nearest to it). The smoothed loss is
lowest where the raw losses start to climb, the edge of divergence; a tenth keeps a margin
below it (the classic range-test rule, fastai's ``minimum``). It reads the whole curve, so a
single noisy batch (the raw losses jump by half their value from step to step here) barely
moves it, whereas steepest-slope rules land on that noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateFinder as _LearningRateFinder
from lightning.pytorch.utilities.parsing import lightning_hasattr, lightning_setattr
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from mvcli.utils.errors import UsageError

# Lightning's smoothing factor (``_LRCallback(beta=0.98)``, not an option of the finder).
BETA = 0.98
# The suggestion is the LR at the smoothed minimum divided by this.
MARGIN = 10.0


def raw_losses(smoothed: Sequence[float], start_step: int = 0, beta: float = BETA) -> list[float]:
    """The per-step losses behind Lightning's smoothed LR-finder losses.

    Lightning computes ``avg = beta * avg + (1 - beta) * loss`` (``avg`` from 0) and records
    ``avg / (1 - beta**(global_step + 1))`` with ``global_step`` already past the step, i.e.
    ``start_step + k + 1`` for the k-th point. A NaN point (a step that returned no loss)
    leaves ``avg`` as it was and stays NaN here.

    Args:
        smoothed: Lightning's ``results["loss"]``.
        start_step: the trainer's ``global_step`` when the finder started.
        beta: the smoothing factor.
    """
    raw, avg = [], 0.0
    for k, value in enumerate(smoothed):
        if math.isnan(value):
            raw.append(math.nan)
            continue
        new = value * (1 - beta ** (start_step + k + 2))
        raw.append((new - beta * avg) / (1 - beta))
        avg = new
    return raw


def smooth(losses: Sequence[float], beta: float = BETA) -> list[float]:
    """Exponential moving average of ``losses`` from 0, divided by ``1 - beta**n`` after its
    n-th loss (so the first value is the first loss). NaN losses are skipped (NaN out)."""
    out, avg, n = [], 0.0, 0
    for loss in losses:
        if math.isnan(loss):
            out.append(math.nan)
            continue
        n += 1
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta**n))
    return out


@dataclass(frozen=True)
class LRCurve:
    """An LR range test: the LRs tried, the raw and smoothed losses, the suggestion.

    Attributes:
        lrs: the LR of each step.
        raw: the loss of each step (NaN: none).
        smoothed: the bias-corrected moving average of ``raw``.
        minimum: index of the smoothed curve's (finite) minimum; None when it has none past
            its first point (the loss never falls).
        index: index of the suggestion: the tried LR nearest (in log scale) to
            ``lrs[minimum] / MARGIN``; None with ``minimum``.
    """

    lrs: list[float]
    raw: list[float]
    smoothed: list[float]
    minimum: int | None
    index: int | None

    @property
    def suggestion(self) -> float | None:
        return None if self.index is None else self.lrs[self.index]

    def to_dict(self) -> dict:
        """The curve as JSON-ready values (``null`` for NaN and infinite losses)."""

        def finite(values: list[float]) -> list[float | None]:
            return [v if math.isfinite(v) else None for v in values]

        return {
            "suggestion": self.suggestion,
            "lr_at_minimum": None if self.minimum is None else self.lrs[self.minimum],
            "rule": f"a tenth ({MARGIN:g}x below) of the LR at the smoothed loss's minimum",
            "beta": BETA,
            "lr": self.lrs,
            "loss": finite(self.raw),
            "smoothed_loss": finite(self.smoothed),
        }

    def plot(self, log_x: bool = True) -> Any:
        """The loss-vs-LR figure: the smoothed curve, the raw losses faintly, the suggestion
        (red) and the minimum (grey) marked on the curve."""
        import matplotlib.pyplot as plt

        figure, ax = plt.subplots()
        ax.plot(self.lrs, self.raw, ".", color="tab:blue", alpha=0.25, label="loss per step")
        ax.plot(self.lrs, self.smoothed, color="tab:blue", label=f"smoothed (beta {BETA})")
        finite = [v for v in self.smoothed if math.isfinite(v)]
        if finite:  # the raw losses of the diverging end would squash the curve
            low = min([*finite, *(v for v in self.raw if math.isfinite(v))])
            ax.set_ylim(low - 0.05 * (max(finite) - low), max(finite) * 1.2)
        if self.minimum is not None and self.index is not None:
            ax.plot(self.lrs[self.minimum], self.smoothed[self.minimum], "o", color="grey",
                    label=f"minimum {self.lrs[self.minimum]:.3g}")  # fmt: skip
            ax.plot(self.lrs[self.index], self.smoothed[self.index], "o", color="red",
                    markersize=9, label=f"suggestion {self.suggestion:.3g}")  # fmt: skip
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel("Learning rate")
        ax.set_ylabel("Loss")
        ax.legend()
        return figure


def lr_curve(
    lrs: Sequence[float], lightning_losses: Sequence[float], start_step: int = 0
) -> LRCurve:
    """The curve and suggestion of an LR range test from Lightning's finder results
    (``results["lr"]``, ``results["loss"]``); ``start_step``: the trainer's ``global_step``
    when the finder started. See the module's docstring for the rule."""
    lrs = [float(lr) for lr in lrs]
    raw = raw_losses([float(v) for v in lightning_losses], start_step)
    smoothed = smooth(raw)
    finite = [k for k, value in enumerate(smoothed) if math.isfinite(value)]
    if not finite:
        return LRCurve(lrs, raw, smoothed, None, None)
    minimum = min(finite, key=lambda k: smoothed[k])
    if minimum == finite[0]:
        return LRCurve(lrs, raw, smoothed, None, None)
    target = lrs[minimum] / MARGIN
    index = min(
        (k for k in finite if k <= minimum and lrs[k] > 0),
        key=lambda k: abs(math.log(lrs[k] / target)),
    )
    return LRCurve(lrs, raw, smoothed, minimum, index)


class LearningRateFinder(_LearningRateFinder):
    """Runs the LR range test when fit starts and suggests the LR by :func:`lr_curve` (the
    raw losses, a correct smoothing, a tenth of the minimum's LR; Lightning's own suggestion
    rests on a mis-corrected curve). With ``update_attr`` the suggestion becomes the heads'
    LR (``model.lr``, the optimizer's ``lr``) and the optimizer and scheduler are built again
    from it, so every parameter group keeps its LR ratio (``backbone_lr_ratio``) and the
    scheduler starts from the new LRs. (Lightning's own class sets every group to its
    suggestion and leaves the scheduler's base LRs as they were.)

    The curve is ``curve`` (an :class:`LRCurve`; its ``suggestion``), the finder's
    ``optimal_lr`` keeps Lightning's record (its ``results["loss"]`` and ``suggestion()``
    are Lightning's).

    Args:
        min_lr: smallest LR tried.
        max_lr: largest LR tried.
        num_training_steps: steps (LRs) tried.
        mode: how the LR grows: ``exponential`` or ``linear``.
        early_stop_threshold: stop once Lightning's smoothed loss exceeds this multiple of
            its best (None: never).
        update_attr: apply the suggestion (above).
        attr_name: the model's LR attribute; empty: ``lr`` or ``learning_rate``.
    """

    def __init__(
        self,
        min_lr: float = 1e-8,
        max_lr: float = 1,
        num_training_steps: int = 100,
        mode: str = "exponential",
        early_stop_threshold: float | None = 4.0,
        update_attr: bool = True,
        attr_name: str = "",
    ) -> None:
        # Lightning never applies its own suggestion: on_fit_start applies the curve's.
        super().__init__(min_lr, max_lr, num_training_steps, mode, early_stop_threshold,
                         update_attr=False, attr_name=attr_name)  # fmt: skip
        self.update_attr = update_attr
        self.attr_name = attr_name
        self.log_x = mode.lower() == "exponential"
        self.curve: LRCurve | None = None

    def lr_attr(self, pl_module: LightningModule) -> str:
        """The model's LR attribute (``attr_name``, else ``lr`` or ``learning_rate``)."""
        names = [self.attr_name] if self.attr_name else ["lr", "learning_rate"]
        for name in names:
            if lightning_hasattr(pl_module, name):
                return name
        raise UsageError(f"LearningRateFinder: the model has no LR attribute {' or '.join(names)}")

    def lr_find(self, trainer: Trainer, pl_module: LightningModule) -> None:
        start = trainer.global_step
        super().lr_find(trainer, pl_module)
        results = self.optimal_lr.results if self.optimal_lr is not None else {}
        if results.get("lr"):
            self.curve = lr_curve(results["lr"], results["loss"], start_step=start)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        attr = self.lr_attr(pl_module) if self.update_attr else ""
        super().on_fit_start(trainer, pl_module)
        if self.update_attr and self.curve is not None and self.curve.suggestion is not None:
            lightning_setattr(pl_module, attr, self.curve.suggestion)
            trainer.strategy.setup_optimizers(trainer)
            rank_zero_info(f"LearningRateFinder: heads' LR set to {self.curve.suggestion:.3g}")
