"""Loader benchmark: naive full decode vs window decoding vs the clip cache, side by side.

On the real sample clips (``../shared/data/mvfoul-sample``, 14 views of 398x224 h264), 16
frames around frame 75, at 112x200 and 224x398, one core (``torch`` and PyAV single-threaded,
as in a DataLoader worker). Every method produces the same uint8 tensors (asserted), so the
ratios compare equal work:

* PyAV decode only: decoding with nothing else (no selection, no conversion), every frame or
  only up to the window's last frame: the decoder's raw speed on the same frames.
* naive: the reference baseline's method, decode every frame, then select and convert
  (:func:`mvcli.data.video.read_full_then_select`).
* ours, uncached: :func:`mvcli.data.video.decode_view` (seek, stop, convert in swscale).
* ours, cached: :class:`mvcli.data.cache.ClipCache` hits, from the page cache (warm) and with
  the entry's pages dropped first (cold: read from the disk). Every hit verifies the entry's
  xxh3-64 payload checksum; "checksum only" times that verification alone, and the
  "Checksum cost" table states it per view and as a share of a warm cached read.

Then the cache build rate (decode + write), serial vs threads.

``test_dataloader_benchmark``: the same views through the data module's own loaders
(dataset + collate + DataLoader, 0, 1 and 2 workers), uncached and from a warm cache, beside
a plain read of the same entries and memcpy of the same bytes (the machine's limit).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import xxhash

from mvcli.data.annotations import read_split
from mvcli.data.cache import ClipCache, default_workers
from mvcli.data.datamodule import MVFoulDataModule
from mvcli.data.video import ClipSpec, decode_view, read_full_then_select, window_timestamps
from tests.benchmarks.common import env_int, goal, interleaved, median, report, spread, table

pytestmark = pytest.mark.bench

SIZES = [(112, 200), (224, 398)]
UNCACHED_VS_NAIVE = 2.5
CACHED_VS_UNCACHED = 30.0


def naive(path: Path, spec: ClipSpec) -> torch.Tensor:
    return read_full_then_select(path, **spec.window())


def raw_decode(path: Path, until: float | None = None) -> int:
    """Decode frames with PyAV and nothing else; stop at the first frame at/after ``until``."""
    count = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = stream.start_time or 0
        for frame in container.decode(stream):
            count += 1
            if until is not None and (frame.pts - start) * stream.time_base >= until:
                break
    return count


def drop_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_loader_benchmark(sample_root, tmp_path, one_thread):
    rounds = env_int("ROUNDS", 5)
    records, _ = read_split(sample_root / "Test")
    views = [v for r in records for v in r.views]
    tables, data = {}, {"rounds": rounds, "views": len(views), "sizes": {}}
    for height, width in SIZES:
        spec = ClipSpec(num_frames=16, center_frame=75, height=height, width=width)
        cache = ClipCache(tmp_path / f"cache_{height}")
        cache.build(views, spec, workers=default_workers(), progress=False)
        entries = [cache.entry_path(cache.key(v, spec)) for v in views]
        for entry in entries:  # dirty pages cannot be dropped: flush them for the cold runs
            with open(entry, "rb+") as f:
                os.fsync(f.fileno())
        # Same output tensors from every method that produces them.
        for view in views:
            expected = naive(view, spec)
            assert torch.equal(decode_view(view, spec), expected), view
            assert torch.equal(cache(view, spec), expected), view
        last = window_timestamps(spec.center_time, spec.num_frames, spec.target_fps)[-1]
        payloads = [np.ascontiguousarray(cache(v, spec).permute(3, 0, 1, 2).numpy()) for v in views]

        def cold_pass(cache=cache, spec=spec, entries=entries):
            for view, entry in zip(views, entries, strict=True):
                drop_page_cache(entry)
                cache(view, spec)

        methods = {
            "PyAV decode only, every frame": lambda: [raw_decode(v) for v in views],
            "naive: decode all, select, convert": lambda s=spec: [naive(v, s) for v in views],
            "PyAV decode only, up to the window end": lambda t=last: [
                raw_decode(v, t) for v in views
            ],
            "ours, uncached (window decoding)": lambda s=spec: [decode_view(v, s) for v in views],
            "ours, cached (page cache)": lambda c=cache, s=spec: [c(v, s) for v in views],
            "ours, cached (cold: pages dropped)": cold_pass,
            "checksum only (xxh3-64 of each entry)": lambda p=payloads: [
                xxhash.xxh3_64_digest(memoryview(a).cast("B")) for a in p
            ],
        }
        samples = interleaved(methods, rounds)
        rate = {name: len(views) / median(s) for name, s in samples.items()}
        naive_rate = rate["naive: decode all, select, convert"]
        ours_rate = rate["ours, uncached (window decoding)"]
        rows = [
            [name, rate[name], rate[name] / naive_rate, rate[name] / ours_rate, spread(s)]
            for name, s in samples.items()
        ]
        size = f"{height}x{width}"
        headers = ["method (16 frames, one core)", "clips/s", "x naive", "x uncached", "noise"]
        tables[f"Per clip, {size}:"] = table(headers, rows)

        up, cached = ours_rate / naive_rate, rate["ours, cached (page cache)"] / ours_rate
        cold = rate["ours, cached (cold: pages dropped)"] / ours_rate
        tables[f"Goals, {size}:"] = table(
            ["ratio", "per clip", "goal"],
            [
                ["uncached / naive", up, goal(up, UNCACHED_VS_NAIVE)],
                ["cached / uncached", cached, goal(cached, CACHED_VS_UNCACHED)],
                ["cached cold / uncached", cold, goal(cold, CACHED_VS_UNCACHED)],
            ],
        )
        checksum_ms = 1000 / rate["checksum only (xxh3-64 of each entry)"]
        read_ms = 1000 / rate["ours, cached (page cache)"]
        tables[f"Checksum cost per view, {size}:"] = table(
            ["entry MB", "checksum ms/view", "cached read ms/view (with checksum)", "share"],
            [[payloads[0].nbytes / 1e6, checksum_ms, read_ms, checksum_ms / read_ms]],
        )
        data["sizes"][size] = {
            "checksum_ms_per_view": checksum_ms,
            "clips_per_s": rate,
            "samples_s_per_pass": samples,
            "uncached_vs_naive": up,
            "cached_vs_uncached": cached,
            "cached_cold_vs_uncached": cold,
        }
    build_rows, data["build"] = build_benchmark(views, tmp_path)
    tables["Cache build (decode + write, 224x398), serial vs threads:"] = table(
        ["workers", "clips/s", "speed-up"], build_rows
    )
    report("loader", "Loader benchmark", tables, data)


def build_benchmark(views, tmp_path) -> tuple[list, dict]:
    """Cache build rate for a fresh cache, one thread vs one per core (PyAV drops the GIL)."""
    spec = ClipSpec(num_frames=16, center_frame=75, height=224, width=398)
    counts = sorted({1, default_workers()})
    times: dict[int, list[float]] = {n: [] for n in counts}
    for attempt in range(2):
        for n in counts:
            root = tmp_path / f"build_{n}_{attempt}"
            report_ = ClipCache(root).build(views, spec, workers=n, progress=False)
            assert report_.built == len(views)
            times[n].append(report_.seconds)
            shutil.rmtree(root)
    rate = {n: len(views) / min(t) for n, t in times.items()}
    rows = [[n, rate[n], rate[n] / rate[1]] for n in counts]
    return rows, {"clips_per_s": rate, "seconds": times}


# -- DataLoader: the cached path against the decoder and against memcpy ------------------------
LOADER_VS_UNCACHED = 25.0
LOADER_VIEWS_PER_S = 600.0
PAGE = 4096


def test_dataloader_benchmark(sample_root, tmp_path, one_thread):
    """Views/s through the data module's own loaders (dataset + collate + DataLoader), cached
    and uncached, beside a plain read of the same entries and memcpy of the same bytes.

    The five sample actions are served ``MVCLI_BENCH_LOADER_REPEAT`` times (4) per pass, at
    the evaluation batch size 4, every view of each action; ``torch`` single-threaded. Each
    batch is consumed by touching one byte per 4 KiB page of its video (a model or the pin
    thread reads all of it; with workers, that is where the main process maps the batch's
    shared memory). "x memcpy" divides by memcpy of the same bytes into a reused buffer: the
    most any path that puts these bytes into a batch could reach on this machine.
    """
    rounds = env_int("ROUNDS", 5)
    repeat = env_int("LOADER_REPEAT", 4)
    tables, data = {}, {"rounds": rounds, "repeat": repeat, "sizes": {}}
    for height, width in SIZES:
        size = f"{height}x{width}"
        rows, rates, extra = dataloader_rates(sample_root, tmp_path / size, height, width,
                                              rounds, repeat)  # fmt: skip
        tables[f"DataLoader, {size} ({extra['views']} views per pass, median of {rounds}):"] = (
            table(["path", "views/s", "GB/s", "x uncached", "x memcpy", "noise"], rows)
        )
        cached, uncached = rates["cached, 0 workers"], rates["uncached decoder, 0 workers"]
        tables[f"DataLoader goals, {size}:"] = table(
            ["ratio", "value", "goal"],
            [
                ["cached / uncached, one process", cached / uncached,
                 goal(cached / uncached, LOADER_VS_UNCACHED)],
                ["cached views/s, one process", cached, goal(cached, LOADER_VIEWS_PER_S)],
            ] + [
                [f"cached views/s per worker, {n} worker(s)", rates[f"cached, {n} worker(s)"] / n,
                 goal(rates[f"cached, {n} worker(s)"] / n, LOADER_VIEWS_PER_S)]
                for n in (1, 2)
            ],
        )  # fmt: skip
        data["sizes"][size] = {"views_per_s": rates, **extra}
    report("dataloader", "DataLoader benchmark", tables, data)


def dataloader_rates(sample_root, folder, height, width, rounds, repeat):
    def module(cache: bool, workers: int) -> MVFoulDataModule:
        return MVFoulDataModule(
            root=sample_root, frames_per_clip=16, center_frame=75, img_height=height,
            img_width=width, cache_dir=folder / "cache" if cache else None,
            num_workers=workers, batch_size=4, pin_memory=False,
        )  # fmt: skip

    built = module(True, 0)
    built.build_cache(["Test"], progress=False)
    records = built.records("Test") * repeat
    views = [v for r in records for v in r.views]
    loaders = {"uncached decoder, 0 workers": module(False, 0)}
    loaders["cached, 0 workers"] = module(True, 0)
    for n in (1, 2):
        loaders[f"cached, {n} worker(s)"] = module(True, n)
    loaders = {name: dm._loader(dm._dataset(records), 4) for name, dm in loaders.items()}

    def batches(loader):
        return [(b["video"].clone(), b["view_mask"].clone()) for b in loader]

    reference = batches(loaders["uncached decoder, 0 workers"])
    for name, loader in loaders.items():
        for (video, mask), (ref_video, ref_mask) in zip(batches(loader), reference, strict=True):
            assert torch.equal(video, ref_video) and torch.equal(mask, ref_mask), name

    cache, spec = built.cache, built.spec
    entries = [cache.entry_path(cache.key(v, spec)) for v in views]
    payloads = [np.load(e, allow_pickle=False) for e in entries]  # the trailer is ignored
    nbytes = payloads[0].nbytes
    groups = [sum(len(r.views) for r in records[i : i + 4]) for i in range(0, len(records), 4)]
    reused = torch.empty(max(groups) * nbytes, dtype=torch.uint8).numpy()
    header = os.path.getsize(entries[0]) - nbytes - 16  # the payload's offset

    def consume(loader):
        for batch in loader:
            batch["video"].view(-1)[::PAGE].sum()

    def plain_read(checksum: bool):
        out = memoryview(reused)
        for i, entry in enumerate(entries):
            fd = os.open(entry, os.O_RDONLY)
            try:
                part = out[(i % max(groups)) * nbytes :][:nbytes]
                os.preadv(fd, [part], header)
                if checksum:
                    xxhash.xxh3_64_digest(part)
            finally:
                os.close(fd)

    def memcpy(fresh: bool):
        start = 0
        for count in groups:
            out = torch.empty(count * nbytes, dtype=torch.uint8).numpy() if fresh else reused
            for j in range(count):
                np.copyto(out[j * nbytes : (j + 1) * nbytes], payloads[start + j].reshape(-1))
            start += count

    methods = {name: (lambda loader=loader: consume(loader)) for name, loader in loaders.items()}
    methods |= {
        "plain read of the entries (preadv into a reused buffer)": lambda: plain_read(False),
        "plain read + xxh3 checksum": lambda: plain_read(True),
        "memcpy of the same bytes, into a reused buffer": lambda: memcpy(False),
        "memcpy of the same bytes, into fresh memory": lambda: memcpy(True),
    }
    samples = interleaved(methods, rounds, min_seconds=0.5)
    rates = {name: len(views) / median(s) for name, s in samples.items()}
    uncached = rates["uncached decoder, 0 workers"]
    limit = rates["memcpy of the same bytes, into a reused buffer"]
    rows = [[name, rates[name], rates[name] * nbytes / 1e9, rates[name] / uncached,
             rates[name] / limit, spread(s)] for name, s in samples.items()]  # fmt: skip
    extra = {"views": len(views), "view_bytes": nbytes, "samples_s_per_pass": samples,
             "memcpy_gb_per_s": limit * nbytes / 1e9}  # fmt: skip
    return rows, rates, extra
