"""Multi-task loss: one cross-entropy per head, summed with task weights."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F


class MultiTaskLoss(nn.Module):
    """Weighted sum of per-head cross-entropies.

    Args:
        task_weights: weight of each head's loss.
        label_smoothing: cross-entropy label smoothing, shared by the heads.
    """

    def __init__(self, task_weights: Mapping[str, float], label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.task_weights = dict(task_weights)
        self.label_smoothing = label_smoothing

    def forward(
        self, logits: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {
            head: F.cross_entropy(
                logits[head].float(), batch[head], label_smoothing=self.label_smoothing
            )
            for head in self.task_weights
        }
        total = sum(self.task_weights[h] * loss for h, loss in parts.items())
        return total, parts
