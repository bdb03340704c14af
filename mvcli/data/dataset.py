"""MultiViewDataset: one action -> a dict of decoded views; damaged views skipped and counted."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from mvcli.data.annotations import ActionRecord
from mvcli.data.video import ClipSpec, VideoDecodeError, decode_view

log = logging.getLogger(__name__)


class MultiViewDataset(Dataset):
    """Decodes the views of each action.

    Args:
        records: actions to serve.
        spec: the frame window and size.
        num_views: views per action in training (drawn at random among those present);
            None serves every view, in file order (evaluation and prediction).
        decode: the decoding function (swappable for a cache).
    """

    def __init__(
        self,
        records: Sequence[ActionRecord],
        spec: ClipSpec,
        num_views: int | None = None,
        decode=None,
    ) -> None:
        self.records = list(records)
        self.spec = spec
        self.num_views = num_views
        self.decode = decode or decode_view
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        clips, used, skipped = [], [], []
        for path in self._view_order(record.views):
            if self.num_views is not None and len(clips) == self.num_views:
                break
            try:
                clips.append(self.decode(path, self.spec))
                used.append(path.name)
            except VideoDecodeError as err:
                skipped.append({"view": path.name, "reason": err.reason, "detail": str(err)})
                if not getattr(err, "recorded", False):  # a cache's record: reported already
                    self._warn(str(path), str(err))
        if not record.views:
            skipped.append({"view": "", "reason": "no_views", "detail": "no video file found"})
        sample = {"action_id": record.action_id, "views": used, "skipped_views": skipped}
        if record.labels is not None:
            sample["offence_severity"] = record.labels.offence_severity
            sample["action"] = record.labels.action
        # (V, C, T, H, W); None marks an action left with no readable view.
        # Contiguous, so collate copies it as is (a cache serves channels-first memory: no
        # transpose at all; freshly decoded clips are transposed here, once).
        sample["video"] = torch.stack([c.permute(3, 0, 1, 2) for c in clips]) if clips else None
        return sample

    def _view_order(self, views: tuple[Path, ...]) -> list[Path]:
        if self.num_views is None:
            return list(views)
        # Random order, then take the first num_views that decode: a damaged view is replaced.
        return [views[i] for i in torch.randperm(len(views)).tolist()]

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("skipping view: %s", message)
