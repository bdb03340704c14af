"""Backbone + view pooling + one head per task, on uint8 video in, logits out.

Normalisation lives inside the network so an exported model takes the same uint8 clips the
data pipeline produces, with no preprocessing left for deployers to get wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mvcli.models.backbones import Backbone
from mvcli.models.pooling import build_pooling


class MultiViewNetwork(nn.Module):
    """Args:
    backbone: feature extractor for single clips.
    pooling: max, mean or attention over views.
    num_classes: classes per head.
    mean: per-channel mean in [0, 1] units.
    std: per-channel std in [0, 1] units.
    head_dropout: dropout before each head.
    """

    def __init__(
        self,
        backbone: Backbone,
        pooling: str,
        num_classes: Mapping[str, int],
        mean: Sequence[float],
        std: Sequence[float],
        head_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.backbone = backbone.module
        self.pooling = build_pooling(pooling, backbone.feature_dim)
        dim = backbone.feature_dim
        self.heads = nn.ModuleDict(
            {
                head: nn.Sequential(nn.LayerNorm(dim), nn.Dropout(head_dropout), nn.Linear(dim, n))
                for head, n in num_classes.items()
            }
        )
        # Fold the /255 into the affine so uint8 input needs one multiply-add.
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t), persistent=False)
        self.register_buffer("shift", -mean_t / std_t, persistent=False)

    def features(self, video: torch.Tensor, view_mask: torch.Tensor) -> torch.Tensor:
        """(B, V, C, T, H, W) video -> (B, V, F); padded views are never run."""
        b, v = view_mask.shape
        clips = video[view_mask]
        clips = clips.float() * self.scale + self.shift
        feats = self.backbone(clips)
        out = feats.new_zeros((b, v, feats.shape[-1]))
        out[view_mask] = feats
        return out

    def forward(self, video: torch.Tensor, view_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.pooling(self.features(video, view_mask), view_mask)
        return {head: layer(pooled) for head, layer in self.heads.items()}
