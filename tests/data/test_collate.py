"""collate_views: views padded to the batch's largest count, with a mask."""

from __future__ import annotations

import torch

from mvcli.data.annotations import read_split
from mvcli.data.collate import collate_views
from mvcli.data.dataset import MultiViewDataset
from mvcli.data.video import ClipSpec

SPEC = ClipSpec(num_frames=8, center_frame=12, height=32, width=56)


def test_collate_pads_views_with_mask(synthetic_root):
    records, _ = read_split(synthetic_root / "Test")
    dataset = MultiViewDataset(records, SPEC)
    samples = [dataset[i] for i in range(len(records))]
    batch = collate_views(samples)
    counts = [s["video"].shape[0] for s in samples]
    assert batch["video"].shape[:2] == (len(samples), max(counts))
    assert batch["view_mask"].sum(1).tolist() == counts
    for i, sample in enumerate(samples):
        assert torch.equal(batch["video"][i, : counts[i]], sample["video"])
        assert not batch["video"][i, counts[i] :].any()
    assert collate_views([{**samples[0], "video": None}])["video"] is None
