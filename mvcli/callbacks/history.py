"""history.json: one record per epoch in the run's log folder, rewritten atomically."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from mvcli.commandline.outputs import log_folder
from mvcli.utils.io import atomic_write_text

FILENAME = "history.json"


class TrainingHistory(Callback):
    """Writes ``<log dir>/history.json``: a list with one record per finished epoch.

    Each record holds every epoch-level metric logged (train and val), the learning rate of
    each optimizer parameter group at the epoch's start, the trainable fraction of the
    parameters, the epoch's wall time (validation included) and training time, and the peak
    memory of the epoch (CUDA: peak allocated by torch on the device;
    CPU: the process's peak RSS).

    The file is rewritten atomically at each epoch end, so a killed run keeps every finished
    epoch; the records travel in the checkpoints, so a resumed run continues them. A record
    is measured at the epoch end and completed with the metrics once the module's epoch-end
    hook has logged its own: when a checkpoint is saved (so it travels in it), else at the
    next epoch start or the end of the run.
    """

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self._pending: dict[str, Any] | None = None  # measured, metrics not added yet
        self._folder: Path | None = None  # the run's log folder, known from setup
        self._reset_epoch()

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # trainer.log_dir is a broadcast under DDP: every rank asks once here, together, so
        # the rank-zero-only writer (also called from on_exception) never joins a collective
        # alone (rank 0 alone in a broadcast hangs the run until the DDP timeout).
        self._folder = log_folder(trainer)

    def _reset_epoch(self) -> None:
        self._epoch_start = time.perf_counter()
        self._train_end = self._epoch_start
        self._lrs: dict[str, float] | None = None

    # -- measuring ---------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._complete(trainer)
        self._reset_epoch()
        self._lrs = _learning_rates(trainer)
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._lrs is None:  # an epoch resumed mid-way has no epoch start
            self._lrs = _learning_rates(trainer)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch: Any, batch_idx: int
    ) -> None:
        self._train_end = time.perf_counter()

    # -- recording ---------------------------------------------------------------------------
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        now = time.perf_counter()
        train_time = max(self._train_end - self._epoch_start, 1e-9)
        record: dict[str, Any] = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        # As trained with, at the epoch's start (Lightning steps epoch schedulers before the
        # epoch-end hooks).
        record["lr"] = self._lrs if self._lrs is not None else _learning_rates(trainer)
        params = list(pl_module.parameters())
        total = sum(p.numel() for p in params)
        trainable = sum(p.numel() for p in params if p.requires_grad)
        record["trainable_fraction"] = trainable / total if total else 0.0
        record["epoch_time_s"] = now - self._epoch_start
        record["train_time_s"] = train_time
        record |= _peak_memory(pl_module.device)
        self._pending = record

    def _complete(self, trainer: Trainer, with_metrics: bool = True) -> None:
        if self._pending is None:
            return
        record, self._pending = self._pending, None
        # LearningRateMonitor's step values are left out: the "lr" entry has each group's.
        # Reading callback_metrics computes logged torchmetrics objects: a collective.
        metrics = sorted(trainer.callback_metrics.items()) if with_metrics else []
        record = (
            {"epoch": record["epoch"], "step": record["step"]}
            | {k: _number(v) for k, v in metrics if not k.startswith("lr-")}
            | record
        )
        self.records = [r for r in self.records if r["epoch"] < record["epoch"]] + [record]
        self._write(trainer)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint) -> None:
        # The callbacks' states were collected before this hook: refresh ours, so the epoch's
        # record travels in the checkpoint written at its end.
        self._complete(trainer)
        if "callbacks" in checkpoint:
            checkpoint["callbacks"][self.state_key] = self.state_dict()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._complete(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception) -> None:
        # Under DDP another process may be gone (the reason for the exception): a collective
        # would then hang until the timeout, so the record keeps its measurements only.
        self._complete(trainer, with_metrics=trainer.world_size == 1)

    @rank_zero_only
    def _write(self, trainer: Trainer) -> None:
        folder = self._folder or log_folder(trainer)
        atomic_write_text(folder / FILENAME, json.dumps(self.records, indent=2) + "\n")

    def state_dict(self) -> dict[str, Any]:
        return {"records": self.records}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.records = list(state_dict.get("records", []))


def _number(value) -> float | int:
    if isinstance(value, torch.Tensor):
        value = value.item()
    return value


def _learning_rates(trainer: Trainer) -> dict[str, float]:
    rates = {}
    for i, optimizer in enumerate(trainer.optimizers):
        for j, group in enumerate(optimizer.param_groups):
            name = group.get("name") or f"group{j}"
            rates[name if len(trainer.optimizers) == 1 else f"opt{i}/{name}"] = group["lr"]
    return rates


def _peak_memory(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        return {"peak_memory_mb": peak, "peak_memory_of": f"{device} (allocated by torch)"}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes / KiB
    return {"peak_memory_mb": peak, "peak_memory_of": "cpu (process peak RSS)"}
