"""MultiViewDataset: one action -> a dict of its views; damaged views skipped and counted.

Decoded views are stacked into the sample's ``video`` tensor. With a clip cache, the sample's
``video`` is a :class:`~mvcli.data.collate.ViewStack` of references to the cache entries
instead: the collate function reads each one straight into its slice of the batch, so a
cached view is copied once (page cache -> batch), never stacked first.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from mvcli.data.annotations import ActionRecord
from mvcli.data.cache import ClipCache
from mvcli.data.collate import ViewStack
from mvcli.data.video import ClipSpec, VideoDecodeError, decode_view
from mvcli.utils.errors import DataError

log = logging.getLogger(__name__)
# Draws of another action for an unreadable training action before giving up.
MAX_REPLACEMENT_DRAWS = 16


class MultiViewDataset(Dataset):
    """Decodes the views of each action.

    Args:
        records: actions to serve.
        spec: the frame window and size.
        num_views: views per action in training (drawn at random among those present);
            None serves every view, in file order (evaluation and prediction).
        decode: the decoding function, or a :class:`~mvcli.data.cache.ClipCache` (then
            ``video`` is a :class:`~mvcli.data.collate.ViewStack` of entry references, read
            by the collate function straight into the batch).
        replace_unreadable: serve another action, drawn deterministically from ``seed`` and
            the index, in place of one with no readable view (training: every batch keeps
            its size, so every DDP rank takes the same optimizer steps). The sample then
            names the unreadable action under ``replaced``. Off: such an action is served
            with ``video`` None (evaluation counts it as a wrong prediction).
        seed: seed of the replacement draws (the run's seed, the same on every rank).
        windows: test-time windows (:func:`mvcli.data.tta.window_specs`): with more than
            one, each view is decoded at each, and ``video`` gains a leading copies axis, one
            copy per window: ``(A, V, C, T, H, W)``. A view that fails at any window is
            skipped. Empty: ``spec`` alone, ``video`` ``(V, C, T, H, W)``.
    """

    def __init__(
        self,
        records: Sequence[ActionRecord],
        spec: ClipSpec,
        num_views: int | None = None,
        decode=None,
        replace_unreadable: bool = False,
        seed: int = 0,
        windows: Sequence[ClipSpec] = (),
    ) -> None:
        self.records = list(records)
        self.spec = windows[0] if len(windows) == 1 else spec
        # Several windows: every view decoded at each, stacked on a copies axis.
        self.windows = tuple(windows) if len(windows) > 1 else ()
        self.num_views = num_views
        self.decode = decode or decode_view
        self.replace_unreadable = replace_unreadable
        self.seed = seed
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        sample = self._load(index)
        if sample["video"] is not None or not self.replace_unreadable:
            return sample
        for attempt in range(1, MAX_REPLACEMENT_DRAWS + 1):
            other = self._load(self.replacement_index(index, attempt))
            if other["video"] is not None:
                other["replaced"] = {
                    "action_id": sample["action_id"],
                    "skipped_views": sample["skipped_views"],
                }
                self._warn(
                    f"replaced:{sample['action_id']}",
                    f"training action {sample['action_id']} has no readable view; action "
                    f"{other['action_id']} is served in its place (counted in "
                    "train/replaced_actions)",
                )
                return other
        raise DataError(
            f"training action {sample['action_id']} has no readable view and neither had "
            f"{MAX_REPLACEMENT_DRAWS} actions drawn in its place: the training views look "
            "unreadable (check data.root, the files and the decoder's warnings above)"
        )

    def replacement_index(self, index: int, attempt: int) -> int:
        """The action drawn in place of an unreadable ``index`` at draw ``attempt`` (>= 1).

        A function of the seed, the index and the attempt only: identical on every rank, in
        every worker and after a resume.
        """
        rng = random.Random(f"{self.seed}:{index}:{attempt}")
        return rng.randrange(len(self.records))

    def _load(self, index: int) -> dict:
        record = self.records[index]
        clips, used, skipped = [], [], []
        for path in self._view_order(record.views):
            if self.num_views is not None and len(clips) == self.num_views:
                break
            try:
                clips.append(self._view(path))
                used.append(path.name)
            except VideoDecodeError as err:
                skipped.append({"view": path.name, "reason": err.reason, "detail": str(err)})
                if not getattr(err, "recorded", False):  # a cache's record: reported already
                    self._warn(str(path), f"skipping view: {err}")
        if not record.views:
            skipped.append({"view": "", "reason": "no_views", "detail": "no video file found"})
        sample = {"action_id": record.action_id, "views": used, "skipped_views": skipped}
        if record.labels is not None:
            sample["offence_severity"] = record.labels.offence_severity
            sample["action"] = record.labels.action
        # (V, C, T, H, W); None marks an action left with no readable view.
        sample["video"] = self._stack(clips) if clips else None
        return sample

    def _view(self, path: Path):
        """One view: a cache reference (a hit) or a decoded (T, H, W, 3) clip; with several
        windows, a list of those, one per window."""
        if self.windows:
            return [self._window(path, spec) for spec in self.windows]
        return self._window(path, self.spec)

    def _window(self, path: Path, spec: ClipSpec):
        if isinstance(self.decode, ClipCache):
            return self.decode.reference(path, spec)
        return self.decode(path, spec)

    def _stack(self, clips: list) -> torch.Tensor | ViewStack:
        # Channels first, as the batch: a cache entry is stored so, a decoded clip is
        # transposed by the copy that batches it. Several windows: a copies axis in front.
        if self.windows:
            clips = [windows[a] for a in range(len(self.windows)) for windows in clips]
        parts = [c.permute(3, 0, 1, 2) if isinstance(c, torch.Tensor) else c for c in clips]
        lead = (len(self.windows),) if self.windows else ()
        if isinstance(self.decode, ClipCache):
            return ViewStack(parts, lead)  # read by the collate function, into the batch
        stacked = torch.stack(parts)  # contiguous: collate copies it as is
        return stacked.unflatten(0, (*lead, -1)) if lead else stacked

    def _view_order(self, views: tuple[Path, ...]) -> list[Path]:
        if self.num_views is None:
            return list(views)
        # Random order, then take the first num_views that decode: a damaged view is replaced.
        return [views[i] for i in torch.randperm(len(views)).tolist()]

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)
