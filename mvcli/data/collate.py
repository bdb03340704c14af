"""Pads a list of samples with different view counts into one batch dict with a view mask."""

from __future__ import annotations

import torch

from mvcli.data.taxonomy import HEADS
from mvcli.utils import compat

LABEL_KEYS = tuple(HEADS)
# A sample's views axis, counted from the end: (V, C, T, H, W) or (A, V, C, T, H, W).
VIEW_DIM = -5


def collate_views(samples: list[dict]) -> dict:
    """Batch samples; actions without any readable view go to ``failed`` instead.

    Returns:
        ``video`` uint8 (B, V, C, T, H, W) zero-padded to the largest view count ((B, A, V,
        C, T, H, W) for samples with test-time copies: :mod:`mvcli.data.tta`), ``view_mask``
        bool (B, V), labels (B,) when present, ``action_id``, ``views``, ``skipped_views``,
        ``failed`` (list of dicts naming the dropped actions, why, and their labels if any),
        ``replaced`` (unreadable training actions served by another one, see
        :class:`~mvcli.data.dataset.MultiViewDataset`).
    """
    ok = [s for s in samples if s["video"] is not None]
    # Failed actions keep their labels: evaluation counts them as wrong predictions.
    failed = [
        {
            "action_id": s["action_id"],
            "skipped_views": s["skipped_views"],
            **{k: s[k] for k in LABEL_KEYS if k in s},
        }
        for s in samples
        if s["video"] is None
    ]
    batch: dict = {"failed": failed, "replaced": [s["replaced"] for s in ok if "replaced" in s]}
    batch["action_id"] = [s["action_id"] for s in ok]
    batch["views"] = [s["views"] for s in ok]
    batch["skipped_views"] = [s["skipped_views"] for s in ok]
    if not ok:
        batch["video"] = None
        return batch
    # The views axis: first, or after the copies axis of test-time augmented samples.
    max_views = max(s["video"].shape[VIEW_DIM] for s in ok)
    first = ok[0]["video"]
    shape = (*first.shape[:VIEW_DIM], max_views, *first.shape[VIEW_DIM + 1 :])
    video = _empty((len(ok), *shape), first)
    mask = torch.zeros((len(ok), max_views), dtype=torch.bool)
    for i, sample in enumerate(ok):
        v = sample["video"].shape[VIEW_DIM]
        video[i, ..., :v, :, :, :, :] = sample["video"]
        video[i, ..., v:, :, :, :, :] = 0  # padding: only these views are zeroed
        mask[i, :v] = True
    batch["video"] = video
    batch["view_mask"] = mask
    for key in LABEL_KEYS:
        if all(key in s for s in ok):
            batch[key] = torch.tensor([s[key] for s in ok], dtype=torch.long)
    return batch


def _empty(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Uninitialised batch memory; in a DataLoader worker, shared memory straight away (as
    torch's default_collate does), which saves a copy of the whole batch on its way out."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=like.dtype)
    return compat.shared_empty(shape, like)
