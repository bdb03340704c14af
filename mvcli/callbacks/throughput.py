"""Training throughput and the share of time spent waiting for data, per epoch."""

from __future__ import annotations

import time

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class Throughput(Callback):
    """Logs ``train/actions_per_s``, ``train/views_per_s`` and ``train/data_wait_fraction`` at
    each training epoch end (the one measurement of them: history.json records these scalars).

    Actions (views) per second is the number of training actions (real views) of the epoch,
    summed over processes, divided by the epoch's training time (first batch fetch to last
    batch end; validation excluded). The data-wait fraction is the time between the end of a
    batch and the start of the next (fetching from the loader and moving it to the device)
    over that time, averaged over processes: near 1 means the GPU waits on decoding (more
    ``data.num_workers``, ``data.cache_dir``), near 0 that it does not.

    Lightning's ThroughputMonitor counts samples and batches only (no real views behind a
    view mask, no data-wait share), so mvcli keeps this one (section ``throughput``).
    """

    def __init__(self) -> None:
        self._reset(time.perf_counter())

    def _reset(self, now: float) -> None:
        self.start = self.last_end = now
        self.waited = 0.0
        self.actions = 0
        self.views = 0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset(time.perf_counter())

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int
    ) -> None:
        self.waited += time.perf_counter() - self.last_end

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        self.actions += _batch_size(batch)
        mask = batch.get("view_mask") if isinstance(batch, dict) else None
        self.views += int(mask.sum()) if mask is not None else 0
        self.last_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Every rank logs (sync_dist is a collective), even one that saw no batch.
        elapsed = max(self.last_end - self.start, 1e-9)  # training only, not validation
        log = dict(on_step=False, on_epoch=True, sync_dist=True)
        pl_module.log("train/actions_per_s", self.actions / elapsed, reduce_fx="sum", **log)
        pl_module.log("train/views_per_s", self.views / elapsed, reduce_fx="sum", **log)
        pl_module.log("train/data_wait_fraction", min(self.waited / elapsed, 1.0), **log)


def _batch_size(batch) -> int:
    if isinstance(batch, dict) and "action_id" in batch:
        return len(batch["action_id"])
    if isinstance(batch, torch.Tensor):
        return len(batch)
    return 0
