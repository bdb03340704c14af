"""Training throughput, the share of time spent waiting for data and the time spent compiling,
per epoch."""

from __future__ import annotations

import time

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from mvcli.utils.compat import CompileClock


class Throughput(Callback):
    """Logs ``train/actions_per_s``, ``train/views_per_s``, ``train/data_wait_fraction`` and
    ``speed/compile_s`` at each training epoch end (the one measurement of them: history.json
    records these scalars).

    Actions (views) per second is the number of training actions (real views) of the epoch,
    summed over processes, divided by the epoch's training time (first batch fetch to last
    batch end; validation excluded) less its compile time. The data-wait fraction is the time
    between the end of a batch and the start of the next (fetching from the loader and moving
    it to the device) over that time, averaged over processes: near 1 means the GPU waits on
    decoding (more ``data.num_workers``, ``data.cache_dir``), near 0 that it does not.
    ``speed/compile_s`` is the time the epoch's training batches spent in ``torch.compile``
    (``model.speed.compile``: the first batches, and batches of a new shape), the largest over
    processes; 0 without compilation.

    Nothing here makes the host wait for the device: views are counted on the device and read
    once, at the epoch end.

    Lightning's ThroughputMonitor counts samples and batches only (no real views behind a
    view mask, no data-wait share), so mvcli keeps this one (section ``throughput``).
    """

    def __init__(self) -> None:
        self.clock = CompileClock()
        self._reset(time.perf_counter())

    def _reset(self, now: float) -> None:
        self.start = self.last_end = now
        self.waited = 0.0
        self.compiling = 0.0
        self.actions = 0
        self.views: torch.Tensor | int = 0  # a device tensor once a batch has a view mask
        self._clock_at_start = self.clock.seconds

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self.clock.start()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.clock.stop()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset(time.perf_counter())

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int
    ) -> None:
        self.waited += time.perf_counter() - self.last_end
        self._clock_at_start = self.clock.seconds

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        self.actions += _batch_size(batch)
        mask = batch.get("view_mask") if isinstance(batch, dict) else None
        if mask is not None:
            self.views = self.views + mask.sum()
        self.compiling += self.clock.seconds - self._clock_at_start
        self.last_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Every rank logs (sync_dist is a collective), even one that saw no batch.
        elapsed = self.last_end - self.start  # training only, not validation
        running = max(elapsed - self.compiling, 1e-9)
        views = float(self.views)  # the epoch's one read of the device count
        log = dict(on_step=False, on_epoch=True, sync_dist=True)
        pl_module.log("train/actions_per_s", self.actions / running, reduce_fx="sum", **log)
        pl_module.log("train/views_per_s", views / running, reduce_fx="sum", **log)
        pl_module.log("train/data_wait_fraction", min(self.waited / running, 1.0), **log)
        pl_module.log("speed/compile_s", self.compiling, reduce_fx="max", **log)


def _batch_size(batch) -> int:
    if isinstance(batch, dict) and "action_id" in batch:
        return len(batch["action_id"])
    if isinstance(batch, torch.Tensor):
        return len(batch)
    return 0
