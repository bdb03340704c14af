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

Then the same at the DataLoader level (MultiViewDataset + collate, every view of the five
actions), and the cache build rate (decode + write), serial vs threads.
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
from torch.utils.data import DataLoader

from mvcli.data.annotations import read_split
from mvcli.data.cache import ClipCache, default_workers
from mvcli.data.collate import collate_views
from mvcli.data.dataset import MultiViewDataset
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

        loader_rows, loader_rates = loader_benchmark(records, spec, cache, rounds)
        tables[f"DataLoader (5 actions, {len(views)} views, one process), {size}:"] = table(
            ["decode", "actions/s", "views/s", "x naive", "x uncached"], loader_rows
        )
        up, cached = ours_rate / naive_rate, rate["ours, cached (page cache)"] / ours_rate
        cold = rate["ours, cached (cold: pages dropped)"] / ours_rate
        tables[f"Goals, {size}:"] = table(
            ["ratio", "per clip", "DataLoader", "goal"],
            [
                ["uncached / naive", up, loader_rates["uncached"] / loader_rates["naive"],
                 goal(up, UNCACHED_VS_NAIVE)],
                ["cached / uncached", cached, loader_rates["cached"] / loader_rates["uncached"],
                 goal(cached, CACHED_VS_UNCACHED)],
                ["cached cold / uncached", cold, "", goal(cold, CACHED_VS_UNCACHED)],
            ],
        )  # fmt: skip
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
            "loader_actions_per_s": loader_rates,
            "uncached_vs_naive": up,
            "cached_vs_uncached": cached,
            "cached_cold_vs_uncached": cold,
        }
    build_rows, data["build"] = build_benchmark(views, tmp_path)
    tables["Cache build (decode + write, 224x398), serial vs threads:"] = table(
        ["workers", "clips/s", "speed-up"], build_rows
    )
    report("loader", "Loader benchmark", tables, data)


def loader_benchmark(records, spec, cache, rounds) -> tuple[list, dict]:
    """Full DataLoader passes (num_workers=0) over every view; batches must be equal."""
    decoders = {"naive": naive, "uncached": decode_view, "cached": cache}

    def run(decode):
        loader = DataLoader(
            MultiViewDataset(records, spec, decode=decode),
            batch_size=len(records),
            collate_fn=collate_views,
        )
        return [batch["video"] for batch in loader]

    reference = run(naive)
    for name, decode in decoders.items():
        assert all(torch.equal(a, b) for a, b in zip(run(decode), reference, strict=True)), name
    samples = interleaved({n: (lambda d=d: run(d)) for n, d in decoders.items()}, rounds)
    views = sum(len(r.views) for r in records)
    rates = {name: len(records) / median(s) for name, s in samples.items()}
    rows = [
        [name, rate, rate * views / len(records), rate / rates["naive"], rate / rates["uncached"]]
        for name, rate in rates.items()
    ]
    return rows, rates


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
