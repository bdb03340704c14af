"""Metrics of the MVFoul leaderboard, as torchmetrics so they sync across processes."""

from __future__ import annotations

import zlib

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.wrappers import MultitaskWrapper


class BalancedAccuracy(Metric):
    """Mean per-class recall over the classes present in the ground truth.

    The official evaluator divides by per-class support and returns NaN when a class is absent
    from the ground truth; absent classes are left out of the mean here instead, so a small
    split (the real sample has only two severity classes) still scores.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.add_state("correct", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("support", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if preds.ndim == target.ndim + 1:
            preds = preds.argmax(dim=-1)
        # Scatter-adds, not bincount or a boolean selection: both make the host wait for the
        # device (to size their output) at every update.
        target = target.long()
        self.support.index_add_(0, target, torch.ones_like(target))
        self.correct.index_add_(0, target, (preds == target).long())

    def compute(self) -> torch.Tensor:
        present = self.support > 0
        if not present.any():
            return torch.tensor(float("nan"))
        return (self.correct[present].float() / self.support[present]).mean()


def head_metrics(num_classes: int) -> MetricCollection:
    """Accuracy and balanced accuracy for one head."""
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "bacc": BalancedAccuracy(num_classes),
        }
    )


def stage_metrics(heads: dict[str, MetricCollection], stage: str) -> MultitaskWrapper:
    """One stage's copy of the heads' metrics, named ``{stage}/acc_{head}`` etc.

    Updated with ``{head: logits}, {head: targets}``; :func:`flat_compute` gives the names.
    """
    return MultitaskWrapper(
        {h: c.clone(prefix=f"{stage}/", postfix=f"_{h}") for h, c in heads.items()}
    )


def flat_compute(metrics: MultitaskWrapper) -> dict[str, torch.Tensor]:
    """``{stage}/{metric}_{head}`` -> value (MultitaskWrapper nests the values per head)."""
    return {name: value for head in metrics.compute().values() for name, value in head.items()}


def wrong_predictions(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A class other than ``target`` for each item: how an action that has no prediction (no
    readable view) is scored. The official evaluator counts it wrong on both heads."""
    return (target + 1) % num_classes


def leaderboard(values: dict[str, torch.Tensor], heads: list[str], prefix: str) -> torch.Tensor:
    """The challenge's ranking value: mean of the heads' balanced accuracies."""
    return torch.stack([values[f"{prefix}/bacc_{h}"] for h in heads]).mean()


class ActionPredictions(Metric):
    """Each evaluated action's target and predicted class, per head, for the bootstrap
    (:mod:`mvcli.task.bootstrap` resamples actions, which counts cannot do).

    List states concatenated across processes (rank by rank, every head alike), so the
    heads' entries of one action stay at the same position; :meth:`compute` orders them by
    action id, so a seeded bootstrap gives the same interval whatever the sharding. Updated
    like the stage metrics, plus the actions' ids: ``{head: logits or classes}, {head:
    targets}, ids``.
    """

    full_state_update = False

    def __init__(self, heads: list[str], **kwargs) -> None:
        super().__init__(**kwargs)
        self.heads = list(heads)
        self.add_state("order", [], dist_reduce_fx="cat")
        for head in self.heads:
            self.add_state(f"target_{head}", [], dist_reduce_fx="cat")
            self.add_state(f"predicted_{head}", [], dist_reduce_fx="cat")

    def update(
        self, preds: dict[str, torch.Tensor], target: dict[str, torch.Tensor], ids: list
    ) -> None:
        keys = [_order_key(i) for i in ids]
        self.order.append(torch.tensor(keys, dtype=torch.long, device=self.device))
        for head in self.heads:
            guess, truth = preds[head], target[head]
            if guess.ndim == truth.ndim + 1:
                guess = guess.argmax(dim=-1)
            getattr(self, f"target_{head}").append(truth.detach().long())
            getattr(self, f"predicted_{head}").append(guess.detach().long())

    def compute(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{head: (targets, predicted)}``, long tensors of one entry per action, in the
        order of the actions' ids."""
        order = torch.argsort(_cat(self.order), stable=True)
        return {
            head: (
                _cat(getattr(self, f"target_{head}"))[order],
                _cat(getattr(self, f"predicted_{head}"))[order],
            )
            for head in self.heads
        }


def _order_key(action_id) -> int:
    """A sortable integer of an action id: the number of ``action_12`` / ``12``, else a
    stable hash of the text (``zlib.crc32``, the same on every process)."""
    text = str(action_id)
    digits = text.rsplit("_", 1)[-1]
    return int(digits) if digits.isdigit() else (1 << 40) + zlib.crc32(text.encode())


def _cat(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    if isinstance(state, torch.Tensor):  # after a sync
        return state.long().flatten()
    return dim_zero_cat(state).long() if state else torch.zeros(0, dtype=torch.long)
