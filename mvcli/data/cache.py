"""Decoded-clip cache: each view's window decoded once, at the target size, then only read.

:class:`ClipCache` is a drop-in ``decode`` for :class:`~mvcli.data.dataset.MultiViewDataset`
(``cache(path, spec)`` returns what ``decode_view(path, spec)`` returns, bit for bit). Layout
under the cache folder::

    clips/<key[:2]>/<key>.npy        uint8 (3, T, H, W): one view's decoded window, then a
                                     16-byte trailer: b"MVCKXXH3" + xxh3-64 of the payload
    clips/<key[:2]>/<key>.fail.json  {"reason", "detail", "path"}: a damaged view, not retried
    index/<label>-<digest>.json      what one build covered: counts, spec, every damaged view

The key is a hash of the source file (resolved path, size, mtime), every :class:`ClipSpec`
field, :data:`CACHE_VERSION`, the decoder (its function, swscale interpolation and the PyAV /
FFmpeg versions), so changing any of them can only miss, never read stale data.

Entries are stored channels first, as batches hold them. A call returns a ``(T, H, W, 3)``
view of that memory (what ``decode_view`` returns); a dataset asks :meth:`ClipCache.reference`
instead and gets a :class:`CachedView`, whose payload the collate function reads straight into
the batch (one copy, from the page cache) and verifies there.

Every file is written under a temporary name in its final folder, then renamed (atomic on
POSIX): a killed build leaves at most a ``.tmp`` file, never a partial entry, and concurrent
builders (DataLoader workers, processes, nodes sharing a folder) can only race to rename
identical content. Reads check the header, the exact size and the payload's checksum, so a
damaged entry (a truncated file, a full disk, a power cut, a flipped bit) is a miss and is
rebuilt, never served, wherever the read happens. The checksum is xxh3-64: about 0.15 ms per
4.3 MB view, small next to reading it (see tests/benchmarks/test_loader_bench.py).

Only the deterministic part is stored: the random view choice (per epoch, in the dataset) and
the flip augmentation (on the device, in the module) still vary every epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import torch
import xxhash

from mvcli.data.video import INTERPOLATION, ClipSpec, VideoDecodeError, decode_view
from mvcli.utils.errors import WriteError
from mvcli.utils.io import TMP_SUFFIX, atomic_open, atomic_write_bytes

__all__ = [
    "CACHE_VERSION",
    "CacheReport",
    "CachedView",
    "ClipCache",
    "RecordedDecodeError",
    "default_workers",
]

log = logging.getLogger(__name__)

# Bump when the stored format or the meaning of an entry changes: every old key then misses.
CACHE_VERSION = 2  # 2: payload checksum trailer
# After the payload: magic + xxh3-64 digest (big-endian) of the payload bytes.
_TRAILER_MAGIC = b"MVCKXXH3"
_TRAILER_SIZE = len(_TRAILER_MAGIC) + 8
# Temporary files older than this are leftovers of killed builds (a live write takes ms).
_STALE_TMP_S = 3600.0

Decode = Callable[[Path, ClipSpec], torch.Tensor]


class RecordedDecodeError(VideoDecodeError):
    """A damaged view already recorded in the cache: raised at once, without decoding.

    ``recorded`` tells :class:`~mvcli.data.dataset.MultiViewDataset` not to warn again: the
    view was reported when it was first found (and in each build's summary); it is still
    counted in ``skipped_views``.
    """

    recorded = True


@dataclass
class CacheReport:
    """What a :meth:`ClipCache.build` found and did.

    Attributes:
        views: distinct views asked for.
        present: entries already valid before the build (clips and recorded damage).
        built: clips decoded and written by this build.
        damaged: ``{"path", "reason", "detail"}`` per damaged view (new or recorded), sorted.
        bytes: size of the clip entries covered.
        seconds: wall time of the build.
        index: the index file written.
        error: why the build stopped early (e.g. a full disk), else empty.
    """

    views: int = 0
    present: int = 0
    built: int = 0
    damaged: list[dict] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    index: Path | None = None
    error: str = ""

    def summary(self, label: str = "") -> str:
        reasons = Counter(d["reason"] for d in self.damaged)
        damage = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) or "none"
        where = f" (listed in {self.index})" if self.damaged and self.index else ""
        return (
            f"clip cache{f' {label}' if label else ''}: {self.views} views, "
            f"{self.present} already cached, {self.built} decoded now in {self.seconds:.1f}s, "
            f"{_human(self.bytes)}; damaged views skipped: {damage}{where}"
        )


def default_workers() -> int:
    """CPU cores available to this process."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class ClipCache:
    """Decoded views on disk, keyed by source file and preprocessing; a ``decode`` callable.

    Args:
        root: cache folder (created on first write).
        decode: the decoder whose output is cached; it must be a pure function of the file's
            content and the spec. Its qualified name is part of the key.

    Safe to use from DataLoader worker processes: besides its arguments it holds only a
    memo of the keys it computed (per process, checked against the file on every call).
    """

    def __init__(self, root: str | os.PathLike, decode: Decode = decode_view) -> None:
        self.root = Path(root)
        self.decode = decode
        self._decoder_id = f"{decode.__module__}.{decode.__qualname__}"
        self._write_warned = False
        self._keys: dict[tuple, str] = {}

    def __repr__(self) -> str:
        return f"ClipCache({str(self.root)!r})"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_keys": {}}  # a worker computes its own

    # -- keys and paths ----------------------------------------------------------------------
    def key(self, path: str | os.PathLike, spec: ClipSpec) -> str:
        """Hex key of one view's entry; raises ``VideoDecodeError('missing')`` without a file.

        Memoised on what it depends on, read on every call: the path and the file it leads to
        now (device, inode, size, mtime; one ``stat``), the spec and the format and
        interpolation in force. A path that leads to another file is keyed anew.
        """
        try:
            stat = os.stat(path)
        except OSError as err:
            raise VideoDecodeError(path, "missing", str(err)) from err
        memo = (os.fspath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        memo += (spec, CACHE_VERSION, INTERPOLATION)
        key = self._keys.get(memo)
        if key is None:
            key = self._keys[memo] = self._key(Path(path).resolve(), stat, spec)
        return key

    def _key(self, source: Path, stat: os.stat_result, spec: ClipSpec) -> str:
        payload = {
            "version": CACHE_VERSION,
            "decoder": self._decoder_id,
            "interpolation": INTERPOLATION,
            "av": av.__version__,
            "libs": {k: list(v) for k, v in sorted(av.library_versions.items())},
            "path": str(source),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "spec": spec_fields(spec),
        }
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:40]

    def entry_path(self, key: str) -> Path:
        """The ``.npy`` of a key (its ``.fail.json`` sits beside it)."""
        return self.root / "clips" / key[:2] / f"{key}.npy"

    def failure_path(self, key: str) -> Path:
        return self.root / "clips" / key[:2] / f"{key}.fail.json"

    # -- the decode callable -----------------------------------------------------------------
    def __call__(self, path: str | os.PathLike, spec: ClipSpec) -> torch.Tensor:
        """``decode(path, spec)``, read from the cache when present, else decoded and stored.

        Raises:
            VideoDecodeError: the view is damaged (:class:`RecordedDecodeError` when the damage
                was already recorded).
        """
        key = self.key(path, spec)
        stored = read_entry(self.entry_path(key), stored_shape(spec))
        if stored is not None:
            return stored.permute(1, 2, 3, 0)
        return self._miss(key, Path(path), spec)

    def reference(self, path: str | os.PathLike, spec: ClipSpec) -> CachedView | torch.Tensor:
        """What a dataset serves for a view: a :class:`CachedView` of the entry when there is
        one (its header and exact size checked, nothing read yet: the payload is read and
        verified where it is served, :meth:`CachedView.read_into`), else ``self(path, spec)``
        (decoded and stored now, or the recorded damage raised).

        Raises:
            VideoDecodeError: as ``self(path, spec)``.
        """
        key = self.key(path, spec)
        entry = self.entry_path(key)
        offset = payload_offset(entry, stored_shape(spec))
        if offset is not None:
            return CachedView(self, Path(path), spec, entry, offset)
        return self._miss(key, Path(path), spec)

    def _miss(self, key: str, path: Path, spec: ClipSpec) -> torch.Tensor:
        """No valid entry: the recorded damage raised, else decoded and stored."""
        failure = _read_failure(self.failure_path(key))
        if failure is not None:
            raise RecordedDecodeError(path, failure["reason"], failure.get("detail", ""))
        clip, failure = self._decode(path, spec)
        try:
            self._store(key, clip, failure)
        except WriteError as err:  # full or read-only disk: train on, uncached
            if not self._write_warned:
                self._write_warned = True
                log.warning(
                    "clip cache entry %s not written (%s): views not cached are decoded each "
                    "time; entries already there are intact",
                    self.entry_path(key) if failure is None else self.failure_path(key),
                    err,
                )
        if failure is not None:
            raise VideoDecodeError(path, failure["reason"], failure["detail"])
        return clip

    def _decode(self, path: Path, spec: ClipSpec) -> tuple[torch.Tensor | None, dict | None]:
        try:
            clip = self.decode(path, spec)
        except VideoDecodeError as err:
            return None, {"path": str(path), "reason": err.reason, "detail": err.detail}
        expected = clip_shape(spec)
        if tuple(clip.shape) != expected or clip.dtype != torch.uint8:
            raise ValueError(f"decoder returned {clip.dtype} {tuple(clip.shape)}, not {expected}")
        return clip, None

    def _store(self, key: str, clip: torch.Tensor | None, failure: dict | None) -> None:
        if failure is not None:
            payload = (json.dumps(failure, indent=1) + "\n").encode()
            atomic_write_bytes(self.failure_path(key), payload)
        else:
            array = np.ascontiguousarray(clip.permute(3, 0, 1, 2).numpy())
            with atomic_open(self.entry_path(key)) as f:
                np.save(f, array, allow_pickle=False)
                f.write(checksum_trailer(memoryview(array).cast("B")))

    # -- building ahead ----------------------------------------------------------------------
    def build(
        self,
        paths: Iterable[str | os.PathLike],
        spec: ClipSpec,
        *,
        workers: int | None = None,
        progress: bool = True,
        label: str = "",
    ) -> CacheReport:
        """Decode every view not cached yet, in parallel; cheap when all are present.

        Damaged views are recorded (not retried by later builds or epochs) and listed in the
        index file this writes, ``index/<label>-<digest>.json``.

        Args:
            paths: views to cache (duplicates are fine).
            spec: the window and size.
            workers: decoding threads (PyAV releases the GIL); default: every available core.
            progress: show a progress bar while decoding.
            label: names the index file and the progress bar (e.g. the split).
        """
        start = time.perf_counter()
        report = CacheReport()
        paths = list(dict.fromkeys(Path(p) for p in paths))
        report.views = len(paths)
        shape = stored_shape(spec)
        keys: dict[Path, str] = {}
        todo: list[Path] = []
        for path in paths:
            try:
                keys[path] = key = self.key(path, spec)
            except VideoDecodeError as err:  # missing: nothing to key on, nothing recorded
                report.damaged.append(_damage(path, err))
                continue
            if entry_is_valid(self.entry_path(key), shape):
                report.present += 1
            elif (failure := _read_failure(self.failure_path(key))) is not None:
                report.present += 1
                report.damaged.append({**failure, "path": str(path)})
            else:
                todo.append(path)
        if todo:
            self._check_space(len(todo), shape)
            self._clean_stale_tmp()
        workers = max(1, min(workers or default_workers(), len(todo) or 1))
        stop: list[WriteError] = []  # the first write error (full disk) ends the build

        def build_one(path: Path) -> str | dict | None:
            if stop:
                return None
            clip, failure = self._decode(path, spec)
            try:
                self._store(keys[path], clip, failure)
            except WriteError as err:
                stop.append(err)
                return None
            advance()
            return failure or "built"

        with _progress(progress and bool(todo), label or "clips", len(todo)) as advance:
            if workers == 1:
                results = [build_one(p) for p in todo]
            else:
                with ThreadPoolExecutor(workers, thread_name_prefix="clip-cache") as pool:
                    results = list(pool.map(build_one, todo))
        if stop:
            report.error = f"{type(stop[0]).__name__}: {stop[0]}"
            log.warning(
                "clip cache %s: build stopped (%s); the views left are decoded on the fly",
                self.root,
                report.error,
            )
        report.built = sum(r == "built" for r in results)
        report.damaged += [r for r in results if isinstance(r, dict)]
        report.damaged.sort(key=lambda d: d["path"])
        report.bytes = sum(_size(self.entry_path(k)) for k in keys.values())
        report.seconds = time.perf_counter() - start
        report.index = self._write_index(label, spec, keys, report)
        return report

    def _write_index(self, label: str, spec: ClipSpec, keys: dict, report: CacheReport) -> Path:
        digest = hashlib.sha256("\n".join(sorted(keys.values())).encode()).hexdigest()[:12]
        name = f"{label}-{digest}.json" if label else f"{digest}.json"
        path = self.root / "index" / name
        data = {
            "version": CACHE_VERSION,
            "label": label,
            "spec": spec_fields(spec),
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "views": report.views,
            "clips": report.views - len(report.damaged),
            "bytes": report.bytes,
            "damaged": report.damaged,
        }
        payload = (json.dumps(data, indent=1) + "\n").encode()
        atomic_write_bytes(path, payload)
        return path

    def _check_space(self, count: int, shape: tuple[int, ...]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        need = count * (int(np.prod(shape)) + 128)
        free = _free_bytes(self.root)
        if free is not None and free < need:
            log.warning(
                "clip cache %s: %.1f GiB needed for %d views, %.1f GiB free; views that do not "
                "fit stay uncached",
                self.root,
                need / 2**30,
                count,
                free / 2**30,
            )

    def _clean_stale_tmp(self) -> None:
        """Remove temporary files left by killed builds (never a live writer's)."""
        now = time.time()
        for tmp in (self.root / "clips").glob(f"*/.*{TMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > _STALE_TMP_S:
                    tmp.unlink()


@dataclass(frozen=True)
class CachedView:
    """A view found in the cache, read later straight into the memory that serves it.

    :meth:`ClipCache.reference` makes it (the entry's header and exact size checked);
    :func:`mvcli.data.collate.collate_views` calls :meth:`read_into` on the view's slice of
    the batch, so a cached view is copied once, from the page cache into the batch.

    Attributes:
        cache: the cache it is in (rebuilds the entry when the read finds it damaged).
        source: the view's video file.
        spec: the window and size.
        entry: the entry's file.
        offset: where the payload starts in the entry.
    """

    cache: ClipCache
    source: Path
    spec: ClipSpec
    entry: Path
    offset: int

    @property
    def shape(self) -> torch.Size:
        """What it holds: (3, T, H, W) uint8."""
        return torch.Size(stored_shape(self.spec))

    def read_into(self, out: torch.Tensor) -> None:
        """Fill ``out`` (uint8 (3, T, H, W)) with the clip: the payload read into it, its
        checksum verified on those bytes. An entry damaged or gone since it was found is
        decoded again and rebuilt (``cache(source, spec)``), never served.

        Raises:
            VideoDecodeError: the entry was damaged and the view fails to decode now.
        """
        if read_payload_into(self.entry, self.offset, out):
            return
        log.debug("clip cache entry %s unusable at read time: rebuilding it", self.entry)
        out.copy_(self.cache(self.source, self.spec).permute(3, 0, 1, 2))


# -- entries ---------------------------------------------------------------------------------
def spec_fields(spec: ClipSpec) -> dict:
    """Every field of the spec, numbers normalised to their declared type (25 == 25.0)."""
    out = {}
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        default = f.default
        if isinstance(default, (int, float)) and isinstance(value, (int, float)):
            value = type(default)(value)
        out[f.name] = value
    return out


def clip_shape(spec: ClipSpec) -> tuple[int, int, int, int]:
    """What ``decode`` returns: (T, H, W, 3)."""
    return (spec.num_frames, spec.height, spec.width, 3)


def stored_shape(spec: ClipSpec) -> tuple[int, int, int, int]:
    """What an entry holds: (3, T, H, W)."""
    return (3, spec.num_frames, spec.height, spec.width)


def _open_entry(f, shape: tuple[int, ...]) -> int:
    """Check an entry's header and size; returns the payload size, raises ValueError if bad."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        found, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        found, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"npy version {version}")
    if tuple(found) != tuple(shape) or dtype != np.uint8 or fortran:
        raise ValueError(f"entry holds {dtype} {found}, expected uint8 {shape}")
    nbytes = int(np.prod(shape))
    if os.fstat(f.fileno()).st_size - f.tell() != nbytes + _TRAILER_SIZE:
        raise ValueError("entry has the wrong size (truncated?)")
    return nbytes


def checksum_trailer(payload: memoryview | bytes) -> bytes:
    """What follows an entry's payload: the magic and the payload's xxh3-64 digest."""
    return _TRAILER_MAGIC + xxhash.xxh3_64_digest(payload)


def read_entry(path: Path, shape: tuple[int, ...]) -> torch.Tensor | None:
    """The stored clip, read straight into a tensor; None when absent or not valid."""
    offset = payload_offset(path, shape)
    if offset is None:
        return None
    out = torch.empty(shape, dtype=torch.uint8)
    if read_payload_into(path, offset, out):
        return out
    log.debug("clip cache entry %s unusable (size or checksum): rebuilding it", path)
    return None


def entry_is_valid(path: Path, shape: tuple[int, ...]) -> bool:
    """Header and size check only (what a build needs to skip an entry); the checksum is
    verified on every read, where a mismatch makes the entry rebuilt."""
    return payload_offset(path, shape) is not None


def payload_offset(path: Path, shape: tuple[int, ...]) -> int | None:
    """Where the payload of a valid-looking entry starts (header and size checked); None when
    the entry is absent or not valid."""
    header = _saved_header(tuple(shape))
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:  # the header np.save writes, compared as bytes: no parsing on the loader's path
        if os.pread(fd, len(header), 0) == header:
            size = len(header) + math.prod(shape) + _TRAILER_SIZE
            return len(header) if os.fstat(fd).st_size == size else None
    except OSError:
        return None
    finally:
        os.close(fd)
    try:  # another valid encoding of the header (written by another numpy): parsed
        with open(path, "rb") as f:
            _open_entry(f, shape)
            return f.tell()
    except (OSError, ValueError):
        return None


@functools.lru_cache(maxsize=8)
def _saved_header(shape: tuple[int, ...]) -> bytes:
    """The header ``np.save`` writes for a uint8 C-order array of ``shape``."""
    out = io.BytesIO()
    header = {"descr": "|u1", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(out, header)
    return out.getvalue()


def read_payload_into(path: Path, offset: int, out: torch.Tensor) -> bool:
    """Read an entry's payload straight into ``out`` and verify its checksum there.

    ``out`` is the payload's uint8 shape (a slice of a batch, shared or pinned memory
    included). False, with ``out`` left partly written, when the entry is gone, has another
    size, or its checksum does not match (the caller rebuilds it).
    """
    if not out.is_contiguous():
        staging = torch.empty_like(out, memory_format=torch.contiguous_format)
        if not read_payload_into(path, offset, staging):
            return False
        out.copy_(staging)
        return True
    payload = memoryview(out.numpy()).cast("B")
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        if os.fstat(fd).st_size != offset + len(payload) + _TRAILER_SIZE:
            return False
        if not _pread_exactly(fd, payload, offset):
            return False
        trailer = os.pread(fd, _TRAILER_SIZE, offset + len(payload))
    except OSError:
        return False
    finally:
        os.close(fd)
    return trailer == checksum_trailer(payload)


def _pread_exactly(fd: int, into: memoryview, offset: int) -> bool:
    done = 0
    while done < len(into):  # a read may return fewer bytes (signals, > 2 GiB reads)
        got = os.preadv(fd, [into[done:]], offset + done)
        if got <= 0:
            return False
        done += got
    return True


def _read_failure(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("reason"), str):
        return None
    return data


def _damage(path: Path, err: VideoDecodeError) -> dict:
    return {"path": str(path), "reason": err.reason, "detail": err.detail}


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return ""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _free_bytes(path: Path) -> int | None:
    try:
        stat = os.statvfs(path)
    except (OSError, AttributeError):
        return None
    return stat.f_bavail * stat.f_frsize


@contextlib.contextmanager
def _progress(enabled: bool, label: str, total: int):
    """A rich progress bar; yields a thread-safe ``advance()``."""
    if not enabled:
        yield lambda: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    lock = threading.Lock()
    columns = (
        TextColumn("caching {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns) as bar:
        task = bar.add_task(label, total=total)

        def advance() -> None:
            with lock:
                bar.advance(task)

        yield advance
