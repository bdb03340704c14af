"""Shared by the data tests: a synthetic augmentation batch."""

from __future__ import annotations

import torch


def _batch(b=6, v=3, t=8, h=16, w=24, seed=0, padded=True) -> dict:
    g = torch.Generator().manual_seed(seed)
    video = torch.randint(0, 256, (b, v, 3, t, h, w), dtype=torch.uint8, generator=g)
    mask = torch.ones(b, v, dtype=torch.bool)
    if padded:
        mask[0, -1] = mask[1, 1:] = False
        video[~mask] = 0
    return {
        "video": video,
        "view_mask": mask,
        "offence_severity": torch.arange(b) % 4,
        "action": torch.arange(b) % 8,
    }
