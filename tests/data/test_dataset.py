"""MultiViewDataset: view selection, damaged views skipped, reported and replaced."""

from __future__ import annotations

import shutil

import pytest
import torch

from mvcli.data.annotations import read_split
from mvcli.data.cache import CachedView, ClipCache
from mvcli.data.collate import ViewStack, collate_views
from mvcli.data.dataset import MultiViewDataset
from mvcli.data.video import ClipSpec
from mvcli.utils.errors import DataError

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
    labels = {"offence_severity": dead["offence_severity"], "action": dead["action"]}
    assert batch["failed"] == [
        {"action_id": second.action_id, "skipped_views": dead["skipped_views"], **labels}
    ]
    assert batch["action_id"] == [first.action_id, records[2].action_id]
    assert batch["offence_severity"].shape == (2,)


def test_unreadable_training_action_is_replaced_deterministically(synthetic_root, tmp_path):
    split = tmp_path / "Train"
    shutil.copytree(synthetic_root / "Train", split)
    records, _ = read_split(split)
    for view in records[0].views:
        view.write_bytes(b"")
    train = MultiViewDataset(records, SPEC, num_views=2, replace_unreadable=True, seed=3)
    sample = train[0]
    assert sample["video"] is not None
    assert sample["replaced"]["action_id"] == records[0].action_id
    assert len(sample["replaced"]["skipped_views"]) == len(records[0].views)
    assert sample["action_id"] != records[0].action_id
    # The same draw in any process (DDP ranks, workers, a resumed run).
    again = MultiViewDataset(records, SPEC, num_views=2, replace_unreadable=True, seed=3)
    assert again[0]["action_id"] == sample["action_id"]
    assert [train.replacement_index(0, k) for k in (1, 2, 3)] == [
        again.replacement_index(0, k) for k in (1, 2, 3)
    ]
    batch = collate_views([train[0], train[1]])
    assert batch["failed"] == [] and len(batch["action_id"]) == 2
    assert [r["action_id"] for r in batch["replaced"]] == [records[0].action_id]


def test_a_training_set_without_readable_views_stops_clearly(synthetic_root, tmp_path):
    split = tmp_path / "Train"
    shutil.copytree(synthetic_root / "Train", split)
    records, _ = read_split(split)
    for record in records:
        for view in record.views:
            view.write_bytes(b"")
    train = MultiViewDataset(records, SPEC, num_views=2, replace_unreadable=True)
    with pytest.raises(DataError, match="no readable view.*training views look unreadable"):
        train[0]


def test_with_a_cache_samples_carry_references_to_the_entries(synthetic_root, tmp_path):
    """Same views, skipped views, labels and draws as decoding; ``video`` a ViewStack of the
    entries (read by the collate function), equal to the decoded stack."""
    split = tmp_path / "Valid"
    shutil.copytree(synthetic_root / "Valid", split)
    records, _ = read_split(split)
    records[0].views[-1].write_bytes(b"")
    cache = ClipCache(tmp_path / "cache")
    for num_views, seed in ((None, 0), (2, 5)):
        plain = MultiViewDataset(records, SPEC, num_views=num_views)
        cached = MultiViewDataset(records, SPEC, num_views=num_views, decode=cache)
        for index in range(4):
            torch.manual_seed(seed + index)
            expected = plain[index]
            for _ in range(2):  # decoded and stored, then read from the cache
                torch.manual_seed(seed + index)
                sample = cached[index]
                assert isinstance(sample["video"], ViewStack)
                assert sample["video"].shape == expected["video"].shape
                assert torch.equal(sample["video"].tensor(), expected["video"])
                assert {k: v for k, v in sample.items() if k != "video"} == {
                    k: v for k, v in expected.items() if k != "video"
                }
            assert all(isinstance(p, CachedView) for p in sample["video"].parts)
