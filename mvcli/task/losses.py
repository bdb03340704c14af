"""Multi-task loss: one loss per head (plain / class-weighted cross-entropy or focal), summed
with task weights; its options (:class:`LossConfig`, the ``model.loss`` section); and the
class weights, computed from training label counts (:func:`apply_class_weights`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torch.nn import functional as F

from mvcli.commandline.limits import AtLeastOne, UnitIntervalClosedOpen
from mvcli.data.taxonomy import HEADS, NUM_CLASSES

LossName = Literal["plain", "weighted", "focal"]
ClassWeighting = Literal["inverse", "sqrt_inverse", "effective_number"]
LOSSES: tuple[str, ...] = LossName.__args__


@dataclass(frozen=True)
class LossConfig:
    """The training loss (``model.loss.*``): one loss per head, summed with task weights.

    Args:
        kind: loss of every head, or per head (``{offence_severity: focal, action:
            weighted}``): ``plain`` cross-entropy, ``weighted`` cross-entropy with class
            weights computed from the training labels (``class_weighting``), or ``focal``.
        task_weights: loss weight per head (``offence_severity``, ``action``); unset: 1 each.
        label_smoothing: label smoothing, for every head or per head.
        focal_gamma: focal-loss focusing parameter, for every head or per head.
        focal_alpha: per-class alpha of focal heads: ``{head: class_weights}`` (the class
            weights of ``class_weighting``) or ``{head: [a_0, a_1, ...]}``; unset: none.
        class_weighting: how class weights are computed from the training label counts n_c:
            ``inverse`` (1/n_c), ``sqrt_inverse`` (1/sqrt(n_c)) or ``effective_number``
            ((1-beta)/(1-beta^n_c)); scaled so the average training sample weighs 1; a class
            absent from training gets 0. Logged once at the start of a fit.
        effective_beta: beta of ``effective_number`` weighting, in [0, 1).
        max_weight_ratio: cap on the largest / smallest class weight of a head.
        allow_double_balancing: silence the warning given when a head has class-weighted
            loss and the training sampler also balances its classes (``data.sampler``).
    """

    kind: LossName | dict[str, LossName] = "plain"
    task_weights: dict[str, float] | None = None
    label_smoothing: float | dict[str, float] = 0.0
    focal_gamma: float | dict[str, float] = 2.0
    focal_alpha: dict[str, Literal["class_weights"] | list[float]] | None = None
    class_weighting: ClassWeighting = "inverse"
    effective_beta: UnitIntervalClosedOpen = 0.999
    max_weight_ratio: AtLeastOne | None = None
    allow_double_balancing: bool = False

    @classmethod
    def of(cls, value: LossConfig | Mapping[str, Any] | None) -> LossConfig:
        """A LossConfig from itself, its ``asdict`` form (hparams, checkpoints) or None."""
        if value is None:
            return cls()
        return value if isinstance(value, cls) else cls(**dict(value))

    def to_dict(self) -> dict[str, Any]:
        """Plain values (what hparams and checkpoints keep)."""
        return asdict(self)


@runtime_checkable
class TrainingLabelCounts(Protocol):
    """What class-weighted losses need from the data module (MVFoulDataModule has both)."""

    @property
    def class_counts(self) -> dict[str, list[int]]:
        """Training actions per class of each head."""

    @property
    def balanced_heads(self) -> tuple[str, ...]:
        """Heads whose classes the training sampler already balances."""


def class_weights(
    counts: Sequence[int],
    strategy: ClassWeighting = "inverse",
    beta: float = 0.999,
    max_weight_ratio: float | None = None,
) -> torch.Tensor:
    """Per-class loss weights from the number of training samples of each class.

    ``inverse``: w_c ~ 1 / n_c; ``sqrt_inverse``: w_c ~ 1 / sqrt(n_c); ``effective_number``:
    w_c ~ (1 - beta) / (1 - beta ** n_c) (Cui et al., 2019: "Class-Balanced Loss Based on
    Effective Number of Samples"). ``max_weight_ratio`` caps the largest weight at that many
    times the smallest. The weights are then scaled so that the average *training sample*
    has weight 1 (sum_c n_c w_c = sum_c n_c; sklearn's "balanced" for ``inverse``), so the
    loss keeps the scale of plain cross-entropy.

    A class absent from the training labels (n_c = 0) gets weight 0, never inf or NaN: it
    cannot be a training target, and a zero weight also keeps label smoothing from putting
    mass on it.

    Args:
        counts: training samples per class.
        strategy: how counts become weights.
        beta: ``effective_number`` hyperparameter in [0, 1).
        max_weight_ratio: largest allowed max/min weight ratio among present classes (>= 1).
    """
    n = torch.as_tensor(list(counts), dtype=torch.float64)
    if n.ndim != 1 or (n < 0).any():
        raise ValueError(f"class counts must be a list of non-negative numbers, got {counts}")
    present = n > 0
    if not present.any():
        raise ValueError("no class has a training sample: cannot compute class weights")
    w = torch.zeros_like(n)
    if strategy == "inverse":
        w[present] = 1.0 / n[present]
    elif strategy == "sqrt_inverse":
        w[present] = n[present].rsqrt()
    elif strategy == "effective_number":
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"effective_beta must be in [0, 1), got {beta}")
        w[present] = (1.0 - beta) / (1.0 - beta ** n[present])
    else:
        raise ValueError(f"unknown class weighting {strategy!r}")
    if max_weight_ratio is not None:
        if max_weight_ratio < 1.0:
            raise ValueError(f"max_weight_ratio must be >= 1, got {max_weight_ratio}")
        w[present] = w[present].clamp(max=max_weight_ratio * w[present].min())
    w = w * n.sum() / (n * w).sum()
    return w.float()


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Multi-class focal loss (Lin et al., 2017), mean over the batch.

    Per sample: sum_c q_c * alpha_c * (1 - p_c) ** gamma * (-log p_c), where q is the
    (label-smoothed) one-hot target, or ``target`` itself when it holds class probabilities
    (B, C) (mixup/cutmix soft targets). With per-class ``alpha`` the mean is weighted like
    :func:`torch.nn.functional.cross_entropy`'s (divided by sum_i alpha_{y_i}, for soft
    targets sum_i q_i . alpha), so ``gamma=0`` gives exactly (weighted, label-smoothed)
    cross-entropy for class-index targets.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    num_classes = logp.shape[-1]
    q = _probabilities(target, num_classes) * (1.0 - label_smoothing)
    q = q + label_smoothing / num_classes
    modulating = (1.0 - logp.exp()).clamp(min=0.0).pow(gamma) if gamma else 1.0
    terms = -q * modulating * logp
    if alpha is None:
        return terms.sum(-1).mean()
    alpha = alpha.to(terms)
    if target.is_floating_point():
        return (terms * alpha).sum() / (target.float() @ alpha).sum()
    return (terms * alpha).sum() / alpha[target].sum()


def _weighted_soft_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, label_smoothing: float
) -> torch.Tensor:
    """Class-weighted cross-entropy of soft targets, normalised as torch normalises class
    indices (by sum_i q_i . w, not by the batch size), so one-hot targets give the same value.
    """
    num_classes = logits.shape[-1]
    q = _probabilities(target, num_classes)
    smoothed = q * (1.0 - label_smoothing) + label_smoothing / num_classes
    weight = weight.to(logits)
    terms = -(smoothed * weight * F.log_softmax(logits, dim=-1)).sum()
    return terms / (q @ weight).sum()


def _probabilities(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices (B,) -> one-hot (B, C); class probabilities (B, C) pass through."""
    if target.is_floating_point():
        if target.shape[-1] != num_classes:
            raise ValueError(f"soft targets need {num_classes} classes, got {tuple(target.shape)}")
        return target.float()
    return F.one_hot(target, num_classes).float()


class HeadLoss(nn.Module):
    """The loss of one head.

    Args:
        num_classes: classes of the head.
        kind: ``plain`` cross-entropy, ``weighted`` cross-entropy (class weights) or ``focal``.
        label_smoothing: label smoothing.
        focal_gamma: focusing parameter of the focal loss.
        focal_alpha: per-class focal weights: None, the class weights (``class_weights``) or
            an explicit list.
    """

    def __init__(
        self,
        num_classes: int,
        kind: LossName = "plain",
        label_smoothing: float = 0.0,
        focal_gamma: float = 2.0,
        focal_alpha: Literal["class_weights"] | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"unknown loss {kind!r}; choose one of {', '.join(LOSSES)}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if focal_gamma < 0:
            raise ValueError(f"focal_gamma must be >= 0, got {focal_gamma}")
        self.kind = kind
        self.label_smoothing = label_smoothing
        self.focal_gamma = focal_gamma
        self.alpha_from_weights = focal_alpha == "class_weights"
        # Persistent: a checkpoint evaluates with the weights it was trained with.
        self.register_buffer("class_weights", torch.ones(num_classes))
        alpha = None
        if focal_alpha is not None and not self.alpha_from_weights:
            alpha = torch.as_tensor(list(focal_alpha), dtype=torch.float32)
            if alpha.shape != (num_classes,) or (alpha < 0).any() or not alpha.sum() > 0:
                raise ValueError(
                    f"focal_alpha needs {num_classes} non-negative values, got {focal_alpha}"
                )
        self.register_buffer("alpha", alpha, persistent=False)

    @property
    def needs_class_weights(self) -> bool:
        return self.kind == "weighted" or (self.kind == "focal" and self.alpha_from_weights)

    def set_class_weights(self, weights: torch.Tensor) -> None:
        self.class_weights.copy_(weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``target``: class indices (B,) or class probabilities (B, C) (soft targets)."""
        logits = logits.float()
        if target.is_floating_point():
            target = _probabilities(target, logits.shape[-1])  # checked: one value per class
        if self.kind == "focal":
            alpha = self.class_weights if self.alpha_from_weights else self.alpha
            return focal_loss(logits, target, self.focal_gamma, alpha, self.label_smoothing)
        weight = self.class_weights if self.kind == "weighted" else None
        if weight is not None and target.is_floating_point():
            return _weighted_soft_cross_entropy(logits, target, weight, self.label_smoothing)
        return F.cross_entropy(logits, target, weight=weight, label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        extra = f", gamma={self.focal_gamma}" if self.kind == "focal" else ""
        return f"kind={self.kind}, label_smoothing={self.label_smoothing}{extra}"


def per_head(value, heads: Sequence[str], name: str) -> dict:
    """A value given once for every head, or as a mapping head -> value (all heads named)."""
    if isinstance(value, Mapping):
        if set(value) != set(heads):
            raise ValueError(
                f"model.loss.{name} must name every head {list(heads)}, got {list(value)}"
            )
        return {h: value[h] for h in heads}
    return {h: value for h in heads}


class MultiTaskLoss(nn.Module):
    """Weighted sum of per-head losses.

    Args:
        task_weights: weight of each head's loss (its keys are the heads).
        label_smoothing: label smoothing, for every head or per head.
        kinds: loss per head (default: ``plain`` cross-entropy for all).
        focal_gamma: focal gamma, for every head or per head.
        focal_alpha: per head: None, ``class_weights`` or a list of per-class alphas.
        num_classes: classes per head (needed for class weights; default: taxonomy's).
    """

    def __init__(
        self,
        task_weights: Mapping[str, float],
        label_smoothing: float | Mapping[str, float] = 0.0,
        kinds: LossName | Mapping[str, LossName] = "plain",
        focal_gamma: float | Mapping[str, float] = 2.0,
        focal_alpha: Mapping[str, object] | None = None,
        num_classes: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.task_weights = dict(task_weights)
        heads = list(self.task_weights)
        num_classes = dict(num_classes or NUM_CLASSES)
        smoothing = per_head(label_smoothing, heads, "label_smoothing")
        kinds = per_head(kinds, heads, "kind")
        gammas = per_head(focal_gamma, heads, "focal_gamma")
        alphas = dict(focal_alpha or {})
        unknown = set(alphas) - {h for h in heads if kinds[h] == "focal"}
        if unknown:
            raise ValueError(
                f"model.loss.focal_alpha names heads without a focal loss: {sorted(unknown)}"
            )
        self.losses = nn.ModuleDict(
            {
                h: HeadLoss(num_classes[h], kinds[h], smoothing[h], gammas[h], alphas.get(h))
                for h in heads
            }
        )

    @property
    def heads_needing_class_weights(self) -> list[str]:
        return [h for h, loss in self.losses.items() if loss.needs_class_weights]

    def set_class_weights(self, head: str, weights: torch.Tensor) -> None:
        self.losses[head].set_class_weights(weights)

    def forward(
        self, logits: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # Mixup/cutmix put class probabilities of both heads in batch["soft_targets"].
        soft = batch.get("soft_targets") or {}
        parts = {
            head: loss(logits[head], soft.get(head, batch[head]))
            for head, loss in self.losses.items()
        }
        total = sum(self.task_weights[h] * loss for h, loss in parts.items())
        return total, parts


def apply_class_weights(
    criterion: MultiTaskLoss, config: LossConfig, data: TrainingLabelCounts
) -> dict[str, torch.Tensor]:
    """Class weights of the heads that need them, from the training label counts of ``data``:
    computed (:func:`class_weights` with ``config``'s weighting), set on ``criterion``, logged
    once, and a warning when the training sampler balances the same heads (unless
    ``config.allow_double_balancing``). Returns the weights set (none: ``{}``)."""
    heads = criterion.heads_needing_class_weights
    if not heads:
        return {}
    counts = data.class_counts
    weights = {
        h: class_weights(
            counts[h], config.class_weighting, config.effective_beta, config.max_weight_ratio
        )
        for h in heads
    }
    for head, w in weights.items():
        criterion.set_class_weights(head, w)
    absent = {h: [HEADS[h][i] for i, n in enumerate(counts[h]) if n == 0] for h in heads}
    note = "".join(f"\n  absent from training ({h}, weight 0): {a}" for h, a in absent.items() if a)
    rank_zero_info(
        f"class weights ({config.class_weighting}) from training label counts "
        f"{ {h: list(counts[h]) for h in heads} }:\n" + format_class_weights(weights, HEADS) + note
    )
    double = sorted(set(data.balanced_heads) & set(heads))
    if double and not config.allow_double_balancing:
        rank_zero_warn(
            f"double balancing: head(s) {double} have a class-weighted loss and the training "
            "sampler (data.sampler) also balances their classes, so rare classes are boosted "
            "twice. Use one of the two, or set model.loss.allow_double_balancing=true if this "
            "is intended."
        )
    return weights


def format_class_weights(weights: Mapping[str, torch.Tensor], names: Mapping[str, Sequence[str]]):
    """One line per head: ``head: name=w, ...`` (what is logged once at the start of a fit)."""
    lines = []
    for head, w in weights.items():
        labels = names.get(head) or [str(i) for i in range(len(w))]
        values = ", ".join(f"{n}={v:.3g}" for n, v in zip(labels, w.tolist(), strict=True))
        lines.append(f"  {head}: {values}")
    return "\n".join(lines)


__all__ = [
    "ClassWeighting",
    "HeadLoss",
    "LossConfig",
    "LossName",
    "MultiTaskLoss",
    "TrainingLabelCounts",
    "apply_class_weights",
    "class_weights",
    "focal_loss",
    "format_class_weights",
]
