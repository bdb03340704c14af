"""View pooling: (B, V, F) features + (B, V) mask -> (B, F). Padded views never contribute."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

PoolingName = Literal["max", "mean", "attention"]


class MaxPool(nn.Module):
    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        fill = torch.finfo(features.dtype).min
        return features.masked_fill(~mask[..., None], fill).amax(dim=1)


class MeanPool(nn.Module):
    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.to(features.dtype)[..., None]
        return (features * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class AttentionPool(nn.Module):
    """A learned score per view, softmax over the real views of each action."""

    def __init__(self, dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.score(features).squeeze(-1)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=1)
        return (weights[..., None] * features).sum(1)


def build_pooling(name: str, dim: int) -> nn.Module:
    if name == "max":
        return MaxPool()
    if name == "mean":
        return MeanPool()
    if name == "attention":
        return AttentionPool(dim)
    raise ValueError(f"unknown pooling {name!r}; choose max, mean or attention")
