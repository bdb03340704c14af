"""collate_views: views padded to the batch's largest count, with a mask; cached views read once,
straight into the batch; batch memory reused only when nothing refers to it."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from mvcli.data.annotations import read_split
from mvcli.data.cache import CachedView, ClipCache, read_payload_into
from mvcli.data.collate import BatchMemory, ViewCollate, ViewStack, collate_views
from mvcli.data.datamodule import MVFoulDataModule
from mvcli.data.dataset import MultiViewDataset
from mvcli.data.video import ClipSpec
from tests.conftest import TINY

SPEC = ClipSpec(num_frames=8, center_frame=12, height=32, width=56)
BATCH_KEYS = ("action_id", "views", "skipped_views", "failed", "replaced", "offence_severity")


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


def _assert_same_batch(batch: dict, expected: dict) -> None:
    assert torch.equal(batch["video"], expected["video"])
    assert torch.equal(batch["view_mask"], expected["view_mask"])
    for key in (*BATCH_KEYS, "action"):
        value, reference = batch.get(key), expected.get(key)
        if isinstance(reference, torch.Tensor):
            assert torch.equal(value, reference), key
        else:
            assert value == reference, key


def test_cached_batches_are_bit_identical_to_decoded_ones(synthetic_root, tmp_path):
    """Mixed view counts (padding), labels, an unreadable action, hits and misses in one
    batch, in reused memory: the same batches as decoding and stacking."""
    split = tmp_path / "Valid"
    shutil.copytree(synthetic_root / "Valid", split)
    records, _ = read_split(split)
    for view in records[1].views:  # an action left without a readable view: "failed"
        view.write_bytes(b"")
    cache = ClipCache(tmp_path / "cache")
    plain = MultiViewDataset(records, SPEC)
    cached = MultiViewDataset(records, SPEC, decode=cache)
    cache(records[0].views[0], SPEC)  # a hit beside misses in the first batch
    collate = ViewCollate(BatchMemory(keep=2))
    padded = False
    for attempt in ("misses then hits", "hits"):
        for start in range(0, len(records), 5):
            indices = range(start, min(start + 5, len(records)))
            samples = [cached[i] for i in indices]
            assert all(isinstance(s["video"], ViewStack | None) for s in samples)
            parts = [p for s in samples if s["video"] is not None for p in s["video"].parts]
            if attempt == "hits":
                assert all(isinstance(p, CachedView) for p in parts)
            elif start == 0:
                assert {type(p) for p in parts} == {CachedView, torch.Tensor}
            expected = collate_views([plain[i] for i in indices])
            _assert_same_batch(collate(samples), expected)
            padded = padded or not expected["view_mask"].all()
    assert padded and collate.memory.buffers > 0


def test_a_damaged_entry_at_read_time_is_rebuilt_never_served(views_root, tmp_path):
    """The dataset found the entries valid; they are damaged before the batch is read."""
    records, cache = views_root
    dataset = MultiViewDataset(records, SPEC, decode=cache)
    expected = collate_views([MultiViewDataset(records, SPEC)[i] for i in range(2)])
    for i in range(2):
        dataset[i]  # builds the entries
    samples = [dataset[i] for i in range(2)]
    first, second = samples[0]["video"].parts[0], samples[1]["video"].parts[-1]
    data = bytearray(first.entry.read_bytes())
    data[first.offset + 100] ^= 0x01  # a flipped payload byte: same size, valid header
    first.entry.write_bytes(bytes(data))
    second.entry.write_bytes(second.entry.read_bytes()[:-1000])  # truncated
    _assert_same_batch(collate_views(samples, BatchMemory()), expected)
    for part in (first, second):  # rebuilt, and read as they are again
        out = torch.empty(part.shape, dtype=torch.uint8)
        assert read_payload_into(part.entry, part.offset, out)


@pytest.fixture
def views_root(synthetic_root, tmp_path):
    """Private copies of the Valid split's first actions, and a cache over them."""
    split = tmp_path / "Valid"
    shutil.copytree(synthetic_root / "Valid", split)
    records, _ = read_split(split)
    return records[:3], ClipCache(tmp_path / "cache")


def test_a_view_lost_at_read_time_is_skipped_and_its_action_failed_if_none_is_left(
    views_root, caplog
):
    """Damaged entry and source gone between the dataset and the batch: the view is skipped
    as the dataset skips one (its gap closed), an action left without views is "failed"."""
    records, cache = views_root
    dataset = MultiViewDataset(records, SPEC, decode=cache)
    reference = [dataset[i]["video"].tensor() for i in range(3)]
    samples = [dataset[i] for i in range(3)]
    lost = samples[0]["video"].parts[0]  # the first view of action 0
    gone = samples[1]["video"].parts  # every view of action 1
    for part in (lost, *gone):
        part.entry.write_bytes(part.entry.read_bytes()[:-1])
        part.source.unlink()
    names = list(samples[0]["views"])
    batch = collate_views(samples)
    assert batch["action_id"] == [records[0].action_id, records[2].action_id]
    assert batch["views"][0] == names[1:]
    assert [s["view"] for s in batch["skipped_views"][0]] == [names[0]]
    assert batch["skipped_views"][0][0]["reason"] == "missing"
    count = len(names) - 1
    assert torch.equal(batch["video"][0, :count], reference[0][1:])
    assert not batch["video"][0, count:].any()
    assert batch["view_mask"][0].sum() == count
    assert torch.equal(batch["video"][1, : len(reference[2])], reference[2])
    assert batch["offence_severity"].tolist() == [samples[0]["offence_severity"],
                                                  samples[2]["offence_severity"]]  # fmt: skip
    [failed] = batch["failed"]
    assert failed["action_id"] == records[1].action_id
    assert len(failed["skipped_views"]) == len(records[1].views)
    assert "file not found" in caplog.text


def test_view_stack_fills_any_leading_axes():
    """(A, V, C, T, H, W) samples batch into (B, A, V, C, T, H, W), padded on the view axis."""
    clips = torch.randint(0, 255, (2, 3, 3, 2, 4, 5), dtype=torch.uint8)  # (A, V, C, T, H, W)
    stack = ViewStack([clips[a, v] for a in range(2) for v in range(3)], lead=(2,))
    assert stack.shape == clips.shape and torch.equal(stack.tensor(), clips)
    short = ViewStack([clips[a, v] for a in range(2) for v in range(2)], lead=(2,))
    batch = collate_views([{"action_id": "a", "views": ["0", "1", "2"], "skipped_views": [],
                            "video": stack},
                           {"action_id": "b", "views": ["0", "1"], "skipped_views": [],
                            "video": short}])  # fmt: skip
    assert batch["video"].shape == (2, 2, 3, 3, 2, 4, 5)
    assert torch.equal(batch["video"][0], clips)
    assert torch.equal(batch["video"][1, :, :2], clips[:, :2])
    assert not batch["video"][1, :, 2].any()
    assert batch["view_mask"].tolist() == [[True] * 3, [True, True, False]]
    with pytest.raises(ValueError, match="parts"):
        ViewStack([clips[0, 0]] * 3, lead=(2,))


# -- batch memory -------------------------------------------------------------------------
def test_batch_memory_is_reused_only_when_nothing_refers_to_it():
    memory = BatchMemory(keep=3)
    shape = (2, 3, 3, 4, 8, 8)
    first = memory.empty(shape)
    address = first.data_ptr()
    del first
    again = memory.empty(shape)
    assert again.data_ptr() == address  # idle: reused
    again.fill_(7)
    held = {
        "slice": again[1:],  # a view outliving the batch tensor
        "numpy": again.numpy(),
        "memoryview": memoryview(again[0].numpy()),
    }
    del again
    for name in list(held):
        batches = [memory.empty(shape).fill_(i) for i in range(2)]  # alive at once
        assert all(b.data_ptr() != address for b in batches), name
        kept = held.pop(name)
        assert (np.asarray(kept) == 7).all(), name  # never overwritten
        del kept, batches
    assert memory.empty(shape).data_ptr() == address  # free again once nothing refers to it
    assert memory.buffers == 3
    # Every kept buffer busy: fresh memory, kept in place of the oldest (left to its holder).
    held = [memory.empty(shape).fill_(i) for i in range(5)]
    assert len({b.data_ptr() for b in held}) == 5 and memory.buffers == 3
    assert all((b == i).all() for i, b in enumerate(held))
    del held[3:]
    assert memory.empty(shape).data_ptr() != held[0].data_ptr()


def test_batch_memory_grows_and_in_a_worker_allocates_shared_memory(monkeypatch):
    memory = BatchMemory(keep=1)
    small = memory.empty((1, 10))
    del small
    large = memory.empty((4, 10))  # the idle buffer is too small: replaced
    assert large.shape == (4, 10) and memory.buffers == 1
    del large
    reused = memory.empty((2, 10))
    assert reused.untyped_storage().nbytes() == 40 and not reused.is_shared()  # the large one
    monkeypatch.setattr("torch.utils.data.get_worker_info", lambda: object())
    shared = memory.empty((2, 10))
    assert shared.is_shared() and memory.buffers == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_batch_memory_pins_in_the_main_process():
    batch = BatchMemory(pin=True).empty((2, 3))
    assert batch.is_pinned() and batch.pin_memory() is batch  # the DataLoader keeps it as is


class _Linear(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def _loss(self, batch):
        x = batch["video"].float().mean((1, 2, 3, 4, 5))[:, None]
        return self.layer(x).pow(2).mean()

    def training_step(self, batch, batch_idx):
        return self._loss(batch)

    def validation_step(self, batch, batch_idx):
        self._loss(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


class _Keeper(Callback):
    """Keeps a slice of every other training batch (and of the validation batches) to the end
    of the fit, with a copy; checks every batch is unchanged through its own step."""

    def __init__(self) -> None:
        self.kept: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.dropped: set[int] = set()  # addresses of the batches let go
        self.reused = 0  # batches served in the memory of one let go
        self.start: torch.Tensor | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.start = batch["video"].clone()
        self.reused += batch["video"].data_ptr() in self.dropped
        if batch_idx % 2:
            self.kept.append((batch["video"][:1], batch["video"][:1].clone()))
        else:
            self.dropped.add(batch["video"].data_ptr())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        assert torch.equal(batch["video"], self.start)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.kept.append((batch["video"][:1], batch["video"][:1].clone()))


class _Allocations(Callback):
    """The batch memory's allocation count at each training epoch's end."""

    def __init__(self) -> None:
        self.counts: list[int] = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.counts.append(trainer.datamodule.batch_memory.allocations)


def _fit(root, tmp_path, callback: Callback, epochs: int) -> MVFoulDataModule:
    """A fit in the main process with the cache, validation twice per epoch."""
    dm = MVFoulDataModule(
        root=root, frames_per_clip=8, center_frame=TINY["event_frame"],
        img_height=TINY["height"], img_width=TINY["width"], cache_dir=tmp_path / "cache",
        num_workers=0, batch_size=2, pin_memory=False,
    )  # fmt: skip
    trainer = Trainer(max_epochs=epochs, val_check_interval=0.5, callbacks=[callback],
                      logger=False, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(_Linear(), datamodule=dm)
    return dm


def test_the_lightning_loop_runs_on_the_kept_buffers(synthetic_root, tmp_path):
    """KEEP_BUFFERS covers the batches alive at once in the loop: after the first epoch
    (buffers grown to the largest batches), no batch needs new memory."""
    allocations = _Allocations()
    dm = _fit(synthetic_root, tmp_path, allocations, epochs=3)
    first, *later = allocations.counts
    assert 0 < first <= 2 * dm.batch_memory.keep and later == [first, first]


def test_reused_batch_memory_is_never_overwritten_while_a_batch_is_alive(synthetic_root, tmp_path):
    """The normal Lightning loop (validation inside the epoch included), in the main process,
    with the cache: batches and the slices callbacks keep stay intact; the others' memory is
    reused."""
    keeper = _Keeper()
    dm = _fit(synthetic_root, tmp_path, keeper, epochs=2)
    assert len(keeper.kept) > 10
    for kept, copy in keeper.kept:
        assert torch.equal(kept, copy)
    assert keeper.reused > 3  # the memory of batches let go is reused
    assert dm.batch_memory.buffers <= dm.batch_memory.keep
