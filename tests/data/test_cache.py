"""ClipCache: exact hits, invalidation, damaged entries, killed and concurrent builders, CLI."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mvcli.cli import main
from mvcli.data import cache as cache_module
from mvcli.data.annotations import ActionRecord, read_split
from mvcli.data.cache import (
    CachedView,
    ClipCache,
    RecordedDecodeError,
    entry_is_valid,
    stored_shape,
)
from mvcli.data.collate import ViewCollate, collate_views
from mvcli.data.dataset import MultiViewDataset
from mvcli.data.video import ClipSpec, VideoDecodeError, decode_view
from tests.conftest import CONFIGS, REPO, TINY, tiny_args

SPEC = ClipSpec(num_frames=8, center_frame=TINY["event_frame"], height=32, width=56)
STORED = stored_shape(SPEC)  # (3, T, H, W): channels first on disk
# A different value for every ClipSpec field (the test below fails when a field is added).
CHANGED = {
    "num_frames": 6,
    "center_frame": 10,
    "source_fps": 30.0,
    "target_fps": 12.5,
    "height": 16,
    "width": 28,
    "min_frames": 2,
}


class Counting:
    """decode_view that counts its calls (the cache must not call it on a hit)."""

    def __init__(self) -> None:
        self.calls = 0
        self.__module__ = decode_view.__module__
        self.__qualname__ = "decode_view"

    def __call__(self, path: Path, spec: ClipSpec) -> torch.Tensor:
        self.calls += 1
        return decode_view(path, spec)


@pytest.fixture
def views(synthetic_root, tmp_path) -> list[Path]:
    """Private copies of a few synthetic views (tests modify them)."""
    records, _ = read_split(synthetic_root / "Valid")
    out = []
    for i, view in enumerate(v for r in records[:3] for v in r.views):
        out.append(Path(shutil.copy(view, tmp_path / f"view_{i}.mp4")))
    return out


def _cache(tmp_path: Path) -> tuple[ClipCache, Counting]:
    decode = Counting()
    return ClipCache(tmp_path / "cache", decode=decode), decode


def test_hit_returns_exactly_the_decoded_clip_without_decoding(views, tmp_path):
    cache, decode = _cache(tmp_path)
    first = cache(views[0], SPEC)
    assert decode.calls == 1
    assert entry_is_valid(cache.entry_path(cache.key(views[0], SPEC)), STORED)
    again = cache(views[0], SPEC)
    assert decode.calls == 1
    assert again.dtype == torch.uint8 and again.shape == (8, 32, 56, 3)
    assert again.permute(3, 0, 1, 2).is_contiguous()  # stacks into (V, C, T, H, W) by memcpy
    assert torch.equal(first, again) and torch.equal(again, decode_view(views[0], SPEC))
    # Another process (a DataLoader worker) sees the same entry: nothing held in memory.
    other, other_decode = _cache(tmp_path)
    assert torch.equal(other(views[0], SPEC), first) and other_decode.calls == 0


def test_every_spec_field_is_part_of_the_key(views, tmp_path):
    assert set(CHANGED) == {f.name for f in dataclasses.fields(ClipSpec)}
    cache, decode = _cache(tmp_path)
    cache(views[0], SPEC)
    keys = {cache.key(views[0], SPEC)}
    for name, value in CHANGED.items():
        spec = dataclasses.replace(SPEC, **{name: value})
        before = decode.calls
        clip = cache(views[0], spec)
        assert decode.calls == before + 1, name  # rebuilt, not read
        assert torch.equal(clip, decode_view(views[0], spec)), name
        keys.add(cache.key(views[0], spec))
    assert len(keys) == 1 + len(CHANGED)
    # Equal values of another numeric type are the same spec.
    assert cache.key(views[0], dataclasses.replace(SPEC, target_fps=25)) == cache.key(
        views[0], SPEC
    )


def test_decoder_settings_are_part_of_the_key(views, tmp_path, monkeypatch):
    cache, _ = _cache(tmp_path)
    key = cache.key(views[0], SPEC)
    monkeypatch.setattr(cache_module, "INTERPOLATION", "BILINEAR")
    assert cache.key(views[0], SPEC) != key
    monkeypatch.undo()
    monkeypatch.setattr(cache_module, "CACHE_VERSION", cache_module.CACHE_VERSION + 1)
    assert cache.key(views[0], SPEC) != key
    assert ClipCache(tmp_path / "cache").key(views[0], SPEC) != key  # another decoder


def test_touching_or_rewriting_the_source_rebuilds(views, tmp_path):
    cache, decode = _cache(tmp_path)
    cache(views[0], SPEC)
    stat = views[0].stat()
    os.utime(views[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    cache(views[0], SPEC)
    assert decode.calls == 2
    # Replaced by other content: the new content is served, never the old entry.
    shutil.copy(views[1], views[0])
    assert torch.equal(cache(views[0], SPEC), decode_view(views[1], SPEC))
    assert decode.calls == 3
    # Same content at another path: its own entry.
    cache(views[1], SPEC)
    assert decode.calls == 4


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage", "wrong_shape"])
def test_a_damaged_entry_is_rebuilt_never_read(views, tmp_path, damage):
    cache, decode = _cache(tmp_path)
    expected = cache(views[0], SPEC)
    entry = cache.entry_path(cache.key(views[0], SPEC))
    data = entry.read_bytes()
    if damage == "truncate":
        entry.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        entry.write_bytes(b"")
    elif damage == "garbage":
        entry.write_bytes(b"\x00" * len(data))
    else:
        np.save(entry, np.zeros((8, 32, 56, 3), np.uint8))  # the decoder's layout, not ours
    assert not entry_is_valid(entry, STORED)
    assert torch.equal(cache(views[0], SPEC), expected)
    assert decode.calls == 2
    assert entry_is_valid(entry, STORED)
    # A build checks entries too, and skips the valid ones.
    entry.write_bytes(data[:100])
    report = cache.build(views, SPEC, workers=1, progress=False)
    assert (report.present, report.built) == (0, len(views))
    assert torch.equal(cache(views[0], SPEC), expected)


@pytest.mark.parametrize("where", ["first", "middle", "last", "trailer"])
def test_a_flipped_byte_of_the_same_size_is_rebuilt_never_served(views, tmp_path, where):
    """The reported case: a corrupted entry of unchanged size was served."""
    cache, decode = _cache(tmp_path)
    expected = cache(views[0], SPEC)
    entry = cache.entry_path(cache.key(views[0], SPEC))
    data = bytearray(entry.read_bytes())
    payload_end = len(data) - 16
    offset = {"first": payload_end - int(np.prod(STORED)), "middle": payload_end // 2 + 64,
              "last": payload_end - 1, "trailer": len(data) - 1}[where]  # fmt: skip
    data[offset] ^= 0x01
    entry.write_bytes(bytes(data))
    assert entry_is_valid(entry, STORED)  # header and size are fine: only the checksum tells
    assert cache_module.read_entry(entry, STORED) is None
    assert torch.equal(cache(views[0], SPEC), expected)
    assert decode.calls == 2  # rebuilt
    assert cache_module.read_entry(entry, STORED) is not None


def test_a_reference_is_read_straight_into_its_place_and_checked_there(views, tmp_path):
    """reference(): the decoded clip on a miss; on a hit, a CachedView read into any slice
    (a batch's) without decoding, equal to the decoded clip."""
    cache, decode = _cache(tmp_path)
    expected = decode_view(views[0], SPEC).permute(3, 0, 1, 2)
    miss = cache.reference(views[0], SPEC)
    assert isinstance(miss, torch.Tensor) and decode.calls == 1
    hit = cache.reference(views[0], SPEC)
    assert isinstance(hit, CachedView) and decode.calls == 1
    assert hit.shape == STORED and hit.entry == cache.entry_path(cache.key(views[0], SPEC))
    batch = torch.full((3, *STORED), 7, dtype=torch.uint8)
    hit.read_into(batch[1])
    assert torch.equal(batch[1], expected) and (batch[0] == 7).all() and (batch[2] == 7).all()
    strided = torch.zeros((*STORED[:-1], 2 * STORED[-1]), dtype=torch.uint8)[..., ::2]
    hit.read_into(strided)  # not contiguous: read aside, then copied
    assert torch.equal(strided, expected) and decode.calls == 1


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "other_header"])
def test_a_reference_damaged_before_its_read_is_rebuilt_never_served(views, tmp_path, damage):
    cache, decode = _cache(tmp_path)
    expected = decode_view(views[0], SPEC).permute(3, 0, 1, 2).contiguous()
    cache(views[0], SPEC)
    hit = cache.reference(views[0], SPEC)
    data = bytearray(hit.entry.read_bytes())
    if damage == "flip":
        data[hit.offset + len(data) // 3] ^= 0x80
        hit.entry.write_bytes(bytes(data))
    elif damage == "truncate":
        hit.entry.write_bytes(bytes(data[:-1]))
    elif damage == "delete":
        hit.entry.unlink()
    else:  # a valid entry whose header is longer: the payload is not where it was found
        _write_padded_entry(hit.entry, expected)
    out = torch.empty(STORED, dtype=torch.uint8)
    hit.read_into(out)
    assert torch.equal(out, expected)
    assert decode.calls == 2 - (damage == "other_header")  # an intact entry is read again
    again = cache.reference(views[0], SPEC)
    assert isinstance(again, CachedView)
    assert cache_module.read_payload_into(again.entry, again.offset, out)  # rebuilt or valid
    assert torch.equal(out, expected)


def _write_padded_entry(path: Path, clip: torch.Tensor, size: int = 192) -> None:
    """An entry whose npy header is valid but not byte for byte what np.save writes."""
    header = repr({"descr": "|u1", "fortran_order": False, "shape": tuple(clip.shape)})
    header = header.ljust(size - 10 - 1) + "\n"
    payload = memoryview(clip.numpy()).cast("B")
    with open(path, "wb") as f:
        f.write(np.lib.format.magic(1, 0) + len(header).to_bytes(2, "little") + header.encode())
        f.write(payload)
        f.write(cache_module.checksum_trailer(payload))


def test_an_entry_header_np_save_did_not_write_is_parsed(views, tmp_path):
    cache, decode = _cache(tmp_path)
    clip = cache(views[0], SPEC).permute(3, 0, 1, 2).contiguous()
    entry = cache.entry_path(cache.key(views[0], SPEC))
    default = cache_module.payload_offset(entry, STORED)
    _write_padded_entry(entry, clip)
    assert cache_module.payload_offset(entry, STORED) == 192 != default
    assert torch.equal(cache(views[0], SPEC), clip.permute(1, 2, 3, 0)) and decode.calls == 1
    entry.write_bytes(entry.read_bytes()[:-1])
    assert cache_module.payload_offset(entry, STORED) is None


def test_a_symlink_moved_to_another_file_is_keyed_anew(views, tmp_path):
    cache, _ = _cache(tmp_path)
    link = tmp_path / "link.mp4"
    link.symlink_to(views[0])
    key = cache.key(link, SPEC)
    assert torch.equal(cache(link, SPEC), decode_view(views[0], SPEC))
    link.unlink()
    link.symlink_to(views[1])
    assert cache.key(link, SPEC) != key
    assert torch.equal(cache(link, SPEC), decode_view(views[1], SPEC))
    assert cache.key(views[1], SPEC) == cache.key(link, SPEC)  # keyed by the file it leads to


def test_a_failed_write_keeps_the_good_entries(views, tmp_path, monkeypatch, caplog):
    cache, _ = _cache(tmp_path)
    good = cache(views[0], SPEC)
    entry = cache.entry_path(cache.key(views[0], SPEC))
    before = entry.read_bytes()

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    with caplog.at_level(logging.WARNING):
        assert torch.equal(cache(views[1], SPEC), decode_view(views[1], SPEC))
    assert "Read-only file system" in caplog.text
    assert str(cache.entry_path(cache.key(views[1], SPEC))) in caplog.text
    assert entry.read_bytes() == before and torch.equal(cache(views[0], SPEC), good)


def test_a_killed_build_leaves_no_entry_and_is_rebuilt(views, tmp_path):
    """Kill the builder in the middle of writing an entry: only a temporary file remains."""
    root = tmp_path / "cache"
    script = f"""
        import os, numpy as np
        from mvcli.data import cache
        from mvcli.data.video import ClipSpec
        def dying_save(f, array, **kw):
            f.write(b"\\x93NUMPY half an entry")
            f.flush()
            os._exit(9)  # like SIGKILL: no cleanup runs
        cache.np.save = dying_save
        cache.ClipCache({str(root)!r}).build([{str(views[0])!r}], ClipSpec(**{SPEC.__dict__!r}),
                                             workers=1, progress=False)
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env)
    assert proc.returncode == 9
    leftovers = [p for p in root.rglob("*") if p.is_file()]
    assert leftovers and all(p.name.endswith(".tmp") for p in leftovers)
    cache, decode = _cache(tmp_path)
    report = cache.build(views[:1], SPEC, workers=1, progress=False)
    assert report.built == 1 and decode.calls == 1
    assert torch.equal(cache(views[0], SPEC), decode_view(views[0], SPEC))
    # Old leftovers are cleaned by later builds; fresh ones may belong to a live writer.
    old = time.time() - 2 * cache_module._STALE_TMP_S
    for tmp in leftovers:
        os.utime(tmp, (old, old))
    cache.build(views[1:2], SPEC, workers=1, progress=False)
    assert not any(p.exists() for p in leftovers)


def test_write_errors_leave_nothing_behind(views, tmp_path, monkeypatch):
    cache, _ = _cache(tmp_path)

    def failing_save(f, array, **kwargs):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_module.np, "save", failing_save)
    clip = cache(views[0], SPEC)  # training goes on, uncached
    assert torch.equal(clip, decode_view(views[0], SPEC))
    report = cache.build(views, SPEC, workers=2, progress=False)
    assert "No space left" in report.error and report.built == 0
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.suffix in (".npy", ".tmp")]


def test_concurrent_builders_in_two_processes(views, tmp_path):
    root, go = tmp_path / "cache", tmp_path / "go"
    script = f"""
        import sys, time
        from pathlib import Path
        from mvcli.data.cache import ClipCache
        from mvcli.data.video import ClipSpec
        while not Path({str(go)!r}).exists():
            time.sleep(0.005)
        views = {[str(v) for v in views]!r}
        if sys.argv[1] == "reverse":
            views = views[::-1]
        cache = ClipCache({str(root)!r})
        spec = ClipSpec(**{SPEC.__dict__!r})
        for _ in range(3):  # build, then read and rebuild entries while the other writes
            cache.build(views, spec, workers=2, progress=False)
            for view in views:
                cache(view, spec)
                cache.entry_path(cache.key(view, spec)).unlink(missing_ok=True)
        cache.build(views, spec, workers=2, progress=False)
    """
    code = textwrap.dedent(script)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, order], env=env)
        for order in ("forward", "reverse")
    ]
    time.sleep(3)  # both imported and waiting
    go.touch()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    cache, decode = _cache(tmp_path)
    for view in views:
        assert entry_is_valid(cache.entry_path(cache.key(view, SPEC)), STORED)
        assert torch.equal(cache(view, SPEC), decode_view(view, SPEC))
    assert decode.calls == 0
    assert not list(root.rglob("*.tmp"))


def test_damaged_view_is_recorded_once_and_still_counted(views, tmp_path, caplog):
    views[1].write_bytes(b"not a video at all")
    cache, decode = _cache(tmp_path)
    with pytest.raises(VideoDecodeError) as first:
        cache(views[1], SPEC)
    assert not isinstance(first.value, RecordedDecodeError)
    with pytest.raises(RecordedDecodeError) as again:
        cache(views[1], SPEC)
    assert decode.calls == 1
    assert (again.value.reason, str(again.value)) == (first.value.reason, str(first.value))
    marker = json.loads(cache.failure_path(cache.key(views[1], SPEC)).read_text())
    assert marker["reason"] == first.value.reason

    # A build lists it (from the record, without decoding) in the index file.
    report = cache.build(views, SPEC, workers=2, progress=False)
    assert decode.calls == len(views)  # the damaged one was decoded once, by the first call
    assert [d["path"] for d in report.damaged] == [str(views[1])]
    index = json.loads(report.index.read_text())
    assert index["damaged"][0]["reason"] == first.value.reason
    assert "damaged views skipped: 1 " in report.summary()

    # Each epoch still counts it in skipped_views, without warning again.
    action = ActionRecord(action_id="7", views=(views[0], views[1]), labels=None)
    caplog.set_level(logging.WARNING)
    for _ in range(2):  # two epochs (fresh datasets, as in non-persistent workers)
        sample = MultiViewDataset([action], SPEC, decode=cache)[0]
        assert sample["views"] == [views[0].name]
        assert [s["view"] for s in sample["skipped_views"]] == [views[1].name]
    assert str(views[1]) not in caplog.text


def test_missing_view_is_not_recorded(views, tmp_path):
    cache, decode = _cache(tmp_path)
    missing = tmp_path / "gone.mp4"
    with pytest.raises(VideoDecodeError, match="not found") as err:
        cache(missing, SPEC)
    assert err.value.reason == "missing" and decode.calls == 0
    report = cache.build([missing, views[0]], SPEC, workers=1, progress=False)
    assert report.built == 1 and report.damaged[0]["reason"] == "missing"
    assert not list((tmp_path / "cache").rglob("*.fail.json"))


def test_parallel_build_equals_serial_decoding(views, tmp_path):
    cache, decode = _cache(tmp_path)
    report = cache.build(views + views[:1], SPEC, workers=3, progress=False)
    assert (report.views, report.built, report.present) == (len(views), len(views), 0)
    assert report.bytes == sum(cache.entry_path(cache.key(v, SPEC)).stat().st_size for v in views)
    again = cache.build(views, SPEC, workers=3, progress=False)
    assert (again.built, again.present) == (0, len(views))
    assert decode.calls == len(views)
    for view in views:
        assert torch.equal(cache(view, SPEC), decode_view(view, SPEC))


def test_real_sample_clips_are_cached_exactly(sample_root, tmp_path):
    spec = ClipSpec(num_frames=16, center_frame=75, height=112, width=200)
    views = sorted((sample_root / "Test").glob("action_*/clip_*.mp4"))[:3]
    cache = ClipCache(tmp_path)
    cache.build(views, spec, workers=2, progress=False)
    for view in views:
        assert torch.equal(cache(view, spec), decode_view(view, spec))


# -- the data module and the CLI -------------------------------------------------------------
def _npy(root: Path) -> list[Path]:
    return sorted(root.rglob("*.npy"))


def test_fit_with_cache_builds_then_trains(synthetic_root, tmp_path):
    cache_dir = tmp_path / "cache"
    args = ["--config", str(CONFIGS / "demo.yaml"), *tiny_args(synthetic_root, tmp_path)]
    limits = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"]
    cli = main(["fit", *args, *limits, "--data.cache_dir", str(cache_dir)])
    assert cli.trainer.state.finished
    assert isinstance(cli.datamodule.datasets["train"].decode, ClipCache)
    indexes = sorted(p.name.split("-")[0] for p in (cache_dir / "index").iterdir())
    assert indexes == ["Train", "Valid"]  # what fit reads, built in prepare_data
    train_views = {v for r in cli.datamodule.records("Train") for v in r.views}
    valid_views = {v for r in cli.datamodule.records("Valid") for v in r.views}
    assert len(_npy(cache_dir)) == len(train_views | valid_views)


def test_fast_dev_run_caches_only_what_it_reads(synthetic_root, tmp_path):
    cache_dir = tmp_path / "cache"
    args = ["--config", str(CONFIGS / "demo.yaml"), *tiny_args(synthetic_root, tmp_path)]
    cli = main(["fit", *args, "--trainer.fast_dev_run", "true", "--data.cache_dir", str(cache_dir)])
    assert cli.trainer.state.finished
    assert not (cache_dir / "index").exists()  # no build ahead of a smoke run
    dm = cli.datamodule
    views = {v for split in ("Train", "Valid") for r in dm.records(split) for v in r.views}
    assert 0 < len(_npy(cache_dir)) < len(views)  # one train and one val batch: cached as read


def test_cache_subcommand_builds_ahead(synthetic_root, tmp_path):
    cache_dir = tmp_path / "cache"
    args = [*tiny_args(synthetic_root, tmp_path), "--data.cache_dir", str(cache_dir)]
    cli = main(["cache", *args, "--trainer.enable_progress_bar", "false"])
    indexes = sorted(p.name.split("-")[0] for p in (cache_dir / "index").iterdir())
    assert indexes == ["Test", "Train", "Valid"]
    dm = cli.datamodule
    views = {v for split in ("Train", "Valid", "Test") for r in dm.records(split) for v in r.views}
    entries = _npy(cache_dir)
    assert len(entries) == len(views)
    mtimes = [p.stat().st_mtime_ns for p in entries]
    main(["cache", *args, "--splits", "[Train, Chall]"])
    assert [p.stat().st_mtime_ns for p in entries] == mtimes  # complete: nothing rewritten
    chall = list(synthetic_root.glob("Chall/action_*/*.mp4"))
    assert len(_npy(cache_dir)) == len(views) + len(chall)


def test_cache_subcommand_needs_cache_dir(synthetic_root, tmp_path):
    with pytest.raises(ValueError, match="cache_dir"):
        main(["cache", *tiny_args(synthetic_root, tmp_path)])


def test_dataloader_workers_share_the_cache(synthetic_root, tmp_path):
    """Worker processes read and fill the same cache; batches equal the uncached ones."""
    records, _ = read_split(synthetic_root / "Valid")
    cache = ClipCache(tmp_path / "cache")

    def batches(decode, workers):
        dataset = MultiViewDataset(records, SPEC, decode=decode)
        loader = DataLoader(dataset, batch_size=5, num_workers=workers, collate_fn=collate_views)
        return [(b["video"], b["view_mask"]) for b in loader]

    reference = batches(None, 0)
    for _ in range(2):  # filled by the workers, then read by them
        for (video, mask), (ref_video, ref_mask) in zip(batches(cache, 2), reference, strict=True):
            assert torch.equal(video, ref_video) and torch.equal(mask, ref_mask)
    assert len(_npy(tmp_path / "cache")) == sum(len(r.views) for r in records)


def test_a_worker_reads_the_cache_into_shared_memory_and_rebuilds_damage(synthetic_root, tmp_path):
    """num_workers=1: each batch assembled by the worker (in shared memory) equals the
    decoded one, an entry damaged in place (same size) included, which the worker rebuilds."""
    records, _ = read_split(synthetic_root / "Valid")
    cache = ClipCache(tmp_path / "cache")
    cache.build([v for r in records for v in r.views], SPEC, workers=1, progress=False)
    entry = cache.entry_path(cache.key(records[0].views[0], SPEC))
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0x01
    entry.write_bytes(bytes(data))
    reference = [collate_views([MultiViewDataset(records, SPEC)[i] for i in range(j, j + 4)])
                 for j in range(0, 8, 4)]  # fmt: skip
    dataset = MultiViewDataset(records[:8], SPEC, decode=cache)
    loader = DataLoader(dataset, batch_size=4, num_workers=1, collate_fn=ViewCollate())
    for batch, expected in zip(loader, reference, strict=True):
        assert batch["video"].is_shared()
        assert torch.equal(batch["video"], expected["video"])
        assert torch.equal(batch["view_mask"], expected["view_mask"])
    assert cache_module.read_entry(entry, STORED) is not None  # rebuilt by the worker
