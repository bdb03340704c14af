"""Pads a list of samples with different view counts into one batch dict with a view mask.

Each view is copied once, into its slice of the batch. A sample's ``video`` is a tensor
(decoded views, stacked by the dataset) or a :class:`ViewStack` (what a dataset reading a
clip cache serves): references to cache entries, whose payloads are read from the page cache
straight into the batch and checked there (:meth:`mvcli.data.cache.CachedView.read_into`).

Where the batch lives (:class:`BatchMemory`):

- in a DataLoader worker: fresh shared memory, as torch's ``default_collate`` allocates it,
  so the batch crosses to the main process without another copy. Each batch's memory goes to
  the main process: the worker cannot know when that process is done with it, so it is
  never reused.
- in the main process with ``pin_memory`` (CUDA): page-locked memory from torch's caching
  host allocator, which reuses a block only once nothing refers to it and every copy to the
  device that reads it has completed; the DataLoader's own pinning then keeps it as is.
- in the main process otherwise: a few buffers reused from batch to batch, since touching
  fresh memory (page faults) costs more than the copy itself. A buffer is handed out again
  only when nothing refers to its memory any more: no tensor (the batch, a slice or view of
  it kept by a callback), numpy array or memoryview made from it (the use count of its
  storage). So the number of batches alive at once never needs to be predicted: a batch
  Lightning's loop still holds while it fetches the next one, a prefetched batch, or one a
  callback keeps, simply keeps its buffer; when every kept buffer is busy, the batch gets
  fresh memory, kept in place of the oldest busy buffer (which the pool forgets: whatever
  holds it keeps it). Only raw pointers (``data_ptr()``) or a bare ``untyped_storage()``
  object held past the batch's tensors escape the count.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading

import torch

from mvcli.data.taxonomy import HEADS
from mvcli.data.video import VideoDecodeError
from mvcli.utils import compat

LABEL_KEYS = tuple(HEADS)
# Batch buffers a BatchMemory keeps in the main process: the one being filled, the batch
# Lightning's loop still holds meanwhile (2 suffice for its fit loop, validation inside the
# epoch included: tests/data/test_collate.py), and one spare (a loader without a length,
# which Lightning fetches a batch ahead of, or a batch a callback holds on to).
KEEP_BUFFERS = 3
_UINT8 = torch.empty(0, dtype=torch.uint8)

log = logging.getLogger(__name__)


class ViewStack:
    """A sample's video before batching: uint8 ``(*lead, V, C, T, H, W)``, read into the batch.

    Each ``(C, T, H, W)`` part is a tensor (a view decoded now) or a cache reference
    (:class:`~mvcli.data.cache.CachedView`, anything with ``shape`` and ``read_into(out)``),
    read only by :meth:`copy_into`, straight into the memory that serves it.

    Args:
        parts: the parts, row-major over ``lead + (V,)``.
        lead: sizes of the axes before the views' (none: a ``(V, C, T, H, W)`` sample).
    """

    dtype = torch.uint8

    def __init__(self, parts: list, lead: tuple[int, ...] = ()) -> None:
        self.parts = list(parts)
        self.lead = tuple(lead)
        views, rest = divmod(len(self.parts), math.prod(self.lead))
        if rest or not views:
            raise ValueError(f"{len(self.parts)} parts do not fill lead axes {self.lead} x views")
        self.shape = torch.Size((*self.lead, views, *self.parts[0].shape))

    def __repr__(self) -> str:
        return f"ViewStack({tuple(self.shape)})"

    def copy_into(self, out: torch.Tensor) -> dict[int, VideoDecodeError]:
        """Write every part into ``out`` (this shape; each part's slice contiguous).

        Returns:
            The views (index on the view axis) found unreadable while being read (a damaged
            entry whose view fails to decode now), with the error; their slices are zeroed.
        """
        lost: dict[int, VideoDecodeError] = {}
        indices = itertools.product(*(range(n) for n in self.shape[:-4]))
        for index, part in zip(indices, self.parts, strict=True):
            target = out[index]
            if isinstance(part, torch.Tensor):
                target.copy_(part)
                continue
            try:
                part.read_into(target)
            except VideoDecodeError as err:
                lost.setdefault(index[-1], err)
                target.zero_()
        return lost

    def tensor(self) -> torch.Tensor:
        """The video as one tensor (fresh memory).

        Raises:
            VideoDecodeError: a view could not be read.
        """
        out = torch.empty(self.shape, dtype=self.dtype)
        lost = self.copy_into(out)
        if lost:
            raise next(iter(lost.values()))
        return out


class BatchMemory:
    """Allocates batch videos: shared memory in a worker, pinned or reused memory in the main
    process (see the module docstring for when a buffer is reused).

    Args:
        pin: allocate page-locked memory in the main process (``pin_memory`` with CUDA).
        keep: buffers kept for reuse in the main process (0: fresh memory every batch).
    """

    def __init__(self, pin: bool = False, keep: int = KEEP_BUFFERS) -> None:
        self.pin = pin
        self.keep = keep
        self._buffers: list[tuple[torch.Tensor, int]] = []  # flat uint8, its idle use count
        self._lock = threading.Lock()
        self.allocations = 0  # buffers allocated for reuse (the rest: reused)

    def __getstate__(self) -> dict:
        # Sent to workers: they allocate shared memory, never from this process's buffers.
        return {"pin": self.pin, "keep": self.keep}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def empty(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Uninitialised uint8 memory of ``shape`` for a batch."""
        if torch.utils.data.get_worker_info() is not None:
            return compat.shared_empty(shape, _UINT8)
        if self.pin:
            return torch.empty(shape, dtype=torch.uint8, pin_memory=True)
        if self.keep <= 0:
            return torch.empty(shape, dtype=torch.uint8)
        with self._lock:
            return self._reused(shape)

    def _reused(self, shape: tuple[int, ...]) -> torch.Tensor:
        size = math.prod(shape)
        idle = [i for i, (buf, count) in enumerate(self._buffers) if _users(buf) == count]
        fits = [i for i in idle if self._buffers[i][0].numel() >= size]
        if fits:
            buf = self._buffers[min(fits, key=lambda i: self._buffers[i][0].numel())][0]
            return buf[:size].view(shape)
        buf = torch.empty(size, dtype=torch.uint8)
        self.allocations += 1
        if idle:  # too small for this batch: replaced by a larger one
            del self._buffers[idle[0]]
        elif len(self._buffers) >= self.keep:
            # Every kept buffer is in use (batches a callback holds on to, say): the oldest
            # one is let go, left to whatever holds it, so the pool follows the live batches.
            del self._buffers[0]
        self._buffers.append((buf, _users(buf)))
        return buf.view(shape)

    @property
    def buffers(self) -> int:
        """Buffers kept for reuse."""
        return len(self._buffers)


def _users(buf: torch.Tensor) -> int:
    return compat.storage_use_count(buf)


_FRESH = BatchMemory(keep=0)


class ViewCollate:
    """:func:`collate_views` with a :class:`BatchMemory`: the data module's ``collate_fn``.

    Args:
        memory: where batches are allocated (shared by a data module's loaders).
    """

    def __init__(self, memory: BatchMemory | None = None) -> None:
        self.memory = memory if memory is not None else BatchMemory()

    def __call__(self, samples: list[dict]) -> dict:
        return collate_views(samples, self.memory)


def collate_views(samples: list[dict], memory: BatchMemory | None = None) -> dict:
    """Batch samples; actions without any readable view go to ``failed`` instead.

    Args:
        samples: the dataset's sample dicts (``video`` a tensor, a :class:`ViewStack` or
            None).
        memory: where the batch video is allocated (default: fresh memory, shared in a
            worker).

    Returns:
        ``video`` uint8 (B, V, C, T, H, W) zero-padded to the largest view count ((B, A, V,
        C, T, H, W) for samples with test-time copies: :mod:`mvcli.data.tta`), ``view_mask``
        bool (B, V), labels (B,) when present, ``action_id``, ``views``, ``skipped_views``,
        ``failed`` (list of dicts naming the dropped actions, why, and their labels if any),
        ``replaced`` (unreadable training actions served by another one, see
        :class:`~mvcli.data.dataset.MultiViewDataset`).
    """
    ok = [s for s in samples if s["video"] is not None]
    video = mask = None
    if ok:
        video, mask = _fill(ok, memory or _FRESH)
        readable = mask.any(1)
        if not readable.all():  # every view of an action lost at read time (rare)
            ok = [s for s, r in zip(ok, readable.tolist(), strict=True) if r]
            video, mask = (video[readable], mask[readable]) if ok else (None, None)
    served = {id(s) for s in ok}
    # Failed actions keep their labels: evaluation counts them as wrong predictions.
    failed = [
        {
            "action_id": s["action_id"],
            "skipped_views": s["skipped_views"],
            **{k: s[k] for k in LABEL_KEYS if k in s},
        }
        for s in samples
        if id(s) not in served
    ]
    batch: dict = {"failed": failed, "replaced": [s["replaced"] for s in ok if "replaced" in s]}
    batch["action_id"] = [s["action_id"] for s in ok]
    batch["views"] = [s["views"] for s in ok]
    batch["skipped_views"] = [s["skipped_views"] for s in ok]
    batch["video"] = video
    if video is None:
        return batch
    batch["view_mask"] = mask
    for key in LABEL_KEYS:
        if all(key in s for s in ok):
            batch[key] = torch.tensor([s[key] for s in ok], dtype=torch.long)
    return batch


def _fill(samples: list[dict], memory: BatchMemory) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch video and view mask, each view copied once into its slice."""
    shape = samples[0]["video"].shape  # (*lead, V, C, T, H, W)
    most = max(s["video"].shape[-5] for s in samples)
    video = memory.empty((len(samples), *shape[:-5], most, *shape[-4:]))
    mask = torch.zeros((len(samples), most), dtype=torch.bool)
    for i, sample in enumerate(samples):
        row, source = video[i], sample["video"]
        views = source.shape[-5]
        if isinstance(source, ViewStack):
            lost = source.copy_into(row.narrow(-5, 0, views))
            if lost:
                views = _drop_views(row, sample, lost)
        else:
            row.narrow(-5, 0, views).copy_(source)
        row.narrow(-5, views, most - views).zero_()  # padding: only these views are zeroed
        mask[i, :views] = True
    return video, mask


def _drop_views(row: torch.Tensor, sample: dict, lost: dict[int, VideoDecodeError]) -> int:
    """Close the gaps of views lost at read time; they move to ``skipped_views``. Returns the
    views left."""
    names = sample["views"]
    keep = [k for k in range(len(names)) if k not in lost]
    if keep:
        kept = row.index_select(-5, torch.tensor(keep))  # a copy: the slices overlap
        row.narrow(-5, 0, len(keep)).copy_(kept)
    for err in lost.values():
        log.warning("skipping view: %s", err)
    sample["skipped_views"] = [
        *sample["skipped_views"],
        *({"view": names[k], "reason": err.reason, "detail": str(err)} for k, err in lost.items()),
    ]
    sample["views"] = [names[k] for k in keep]
    return len(keep)
