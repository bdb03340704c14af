"""MultiViewDataset + collate: view selection, damaged views, padding and masks."""

from __future__ import annotations

import shutil

import torch

from mvcli.data.annotations import read_split
from mvcli.data.collate import collate_views
from mvcli.data.dataset import MultiViewDataset
from mvcli.data.video import ClipSpec

SPEC = ClipSpec(num_frames=8, center_frame=12, height=32, width=56)


def test_eval_serves_every_view_and_train_draws_num_views(synthetic_root):
    records, _ = read_split(synthetic_root / "Valid")
    full = MultiViewDataset(records, SPEC)
    sample = full[0]
    assert sample["video"].shape == (len(records[0].views), 3, 8, 32, 56)
    assert sample["video"].dtype == torch.uint8
    train = MultiViewDataset(records, SPEC, num_views=2)
    rich = next(i for i, r in enumerate(records) if len(r.views) > 2)  # the set has some
    drawn = {tuple(train[rich]["views"]) for _ in range(20)}
    assert all(len(v) == 2 for v in drawn)
    assert len(drawn) > 1  # drawn at random


def test_real_sample_action_4_loads_three_views(sample_root):
    records, _ = read_split(sample_root / "Test")
    dataset = MultiViewDataset(records, ClipSpec(num_frames=8, height=56, width=100))
    sample = dataset[4]
    assert sample["views"] == ["clip_0.mp4", "clip_1.mp4", "clip_3.mp4"]
    assert sample["video"].shape == (3, 3, 8, 56, 100)
    assert sample["skipped_views"] == []


def test_damaged_views_are_skipped_and_reported(synthetic_root, tmp_path, caplog):
    split = tmp_path / "Valid"
    shutil.copytree(synthetic_root / "Valid", split)
    records, _ = read_split(split)
    first, second = records[0], records[1]
    first.views[0].write_bytes(b"")  # 0-byte view
    for view in second.views:
        view.write_text("not a video")
    dataset = MultiViewDataset(records, SPEC)
    sample = dataset[0]
    assert sample["skipped_views"][0]["view"] == first.views[0].name
    assert sample["video"].shape[0] == len(first.views) - 1
    assert str(first.views[0]) in caplog.text
    dead = dataset[1]
    assert dead["video"] is None and len(dead["skipped_views"]) == len(second.views)
    # Training replaces a damaged view by another one of the same action.
    train = MultiViewDataset(records, SPEC, num_views=len(first.views) - 1)
    assert all(train[0]["video"].shape[0] == len(first.views) - 1 for _ in range(5))

    batch = collate_views([dataset[0], dataset[1], dataset[2]])
    assert batch["failed"] == [
        {"action_id": second.action_id, "skipped_views": dead["skipped_views"]}
    ]
    assert batch["action_id"] == [first.action_id, records[2].action_id]
    assert batch["offence_severity"].shape == (2,)


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
