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
from mvcli.models.speed import (
    SpeedOptions,
    checkpointed_backbone,
    compile_in_place,
    to_memory_format,
)


class MultiViewNetwork(nn.Module):
    """Args:
    backbone: feature extractor for single clips.
    pooling: max, mean or attention over views.
    num_classes: classes per head.
    mean: per-channel mean in [0, 1] units.
    std: per-channel std in [0, 1] units.
    head_dropout: dropout before each head.
    speed: compile, memory format and activation checkpointing
        (:class:`mvcli.models.speed.SpeedOptions`); the weights and their names do not
        depend on them.
    """

    def __init__(
        self,
        backbone: Backbone,
        pooling: str,
        num_classes: Mapping[str, int],
        mean: Sequence[float],
        std: Sequence[float],
        head_dropout: float = 0.0,
        speed: SpeedOptions | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone.module
        self.speed = SpeedOptions.of(speed)
        # Training forward with checkpointed blocks (None: the backbone's own forward).
        self.checkpointed = checkpointed_backbone(backbone, self.speed.checkpointing)
        to_memory_format(self.backbone, self.speed.memory_format)
        compile_in_place(
            [m for m in (self.backbone, self.checkpointed) if m is not None], self.speed
        )
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

    def features(
        self,
        video: torch.Tensor,
        view_mask: torch.Tensor,
        num_views: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """(B, V, C, T, H, W) video -> (B, V, F); padded views are never run.

        ``num_views``: each action's count of real views, known on the host, when its views
        come first and padding after (as ``collate_views`` lays them out): the real clips are
        then picked without the host waiting for the device, which selecting by the mask
        needs (to learn how many there are).
        """
        b, v = view_mask.shape
        if num_views is None:
            index = view_mask.flatten().nonzero().flatten()
        else:
            index = clip_index(num_views, b, v).to(video.device, non_blocking=True)
        clips = video.flatten(0, 1)[index]
        clips = clips.float() * self.scale + self.shift
        if self.speed.memory_format == "channels_last_3d":
            clips = clips.contiguous(memory_format=torch.channels_last_3d)
        if self.checkpointed is not None and self.training and torch.is_grad_enabled():
            feats = self.checkpointed(clips)
        else:
            feats = self.backbone(clips)
        out = feats.new_zeros((b * v, feats.shape[-1]))
        out[index] = feats
        return out.view(b, v, -1)

    def forward(
        self,
        video: torch.Tensor,
        view_mask: torch.Tensor,
        num_views: Sequence[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Logits per head; ``num_views``: see :meth:`features`."""
        pooled = self.pooling(self.features(video, view_mask, num_views), view_mask)
        return {head: layer(pooled) for head, layer in self.heads.items()}


def clip_index(num_views: Sequence[int], batch: int, views: int) -> torch.Tensor:
    """Positions of the real clips in the flattened (B * V) views, from each action's count of
    real views (first in its row)."""
    counts = list(num_views)
    if len(counts) != batch or any(not 0 <= n <= views for n in counts):
        raise ValueError(
            f"num_views {counts} does not fit a view mask of {batch} actions x {views} views"
        )
    return torch.tensor([i * views + j for i, n in enumerate(counts) for j in range(n)])
