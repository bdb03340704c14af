"""Memory housekeeping for long runs on shared or small GPUs."""

from __future__ import annotations

import gc

import torch
from jsonargparse.typing import PositiveInt
from lightning.pytorch import Callback, LightningModule, Trainer


class MemoryCleanup(Callback):
    """Every ``every_n_steps`` training batches: Python's garbage collector, then the CUDA
    caching allocator hands its unused blocks back (``torch.cuda.empty_cache``).

    Helps when memory fragments over a long run or other processes share the GPU; costs a
    little time each call, so it is off unless added (``configs/small_gpu.yaml`` adds it).

    Args:
        every_n_steps: training batches between two cleanups.
    """

    def __init__(self, every_n_steps: PositiveInt = 100) -> None:
        self.every_n_steps = every_n_steps
        self.cleanups = 0

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if (batch_idx + 1) % self.every_n_steps == 0:
            self.cleanup()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.cleanup()  # evaluation batches differ in shape from training ones

    def cleanup(self) -> None:
        free_memory()
        self.cleanups += 1


def free_memory() -> None:
    """Python's garbage collector, then the CUDA caching allocator's unused blocks back."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
