"""Checkpoint files: atomic writes, periodic keeps, finding a run's ``last.ckpt``."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mvcli.io import atomic_write_bytes

LAST_NAME = ModelCheckpoint.CHECKPOINT_NAME_LAST  # "last"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, written through a temporary file renamed into place: a kill
    during a save leaves the previous checkpoint intact, never a truncated one."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options=None
    ) -> None:
        if storage_options is not None or not _is_local_file_protocol(str(path)):
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())


class PeriodicCheckpoint(ModelCheckpoint):
    """Keeps a checkpoint every ``every_n_epochs`` epochs (``periodic-epoch<NNN>.ckpt``).

    A class of its own so that Lightning tells its state from the ``last`` checkpoint's (two
    ``ModelCheckpoint`` without monitor and with the same period share a state key).

    Args:
        every_n_epochs: epochs between two kept checkpoints; 0 turns them off.
        dirpath: folder (default: the run's ``checkpoints`` folder, beside best and last).
        filename: file name pattern (``{epoch}`` and logged metrics can be used).
    """

    def __init__(
        self,
        every_n_epochs: int = 0,
        dirpath: Path | None = None,
        filename: str = "periodic-epoch{epoch:03d}",
    ) -> None:
        if every_n_epochs < 0:
            raise ValueError(
                f"periodic_checkpoint.every_n_epochs must be >= 0, got {every_n_epochs}"
            )
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            monitor=None,
            save_top_k=-1,
            every_n_epochs=every_n_epochs,
            auto_insert_metric_name=False,
        )


def _last_callback(trainer: Trainer) -> ModelCheckpoint | None:
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and not isinstance(callback, PeriodicCheckpoint):
            if (callback.filename == LAST_NAME or callback.save_last) and callback.dirpath:
                return callback
    return None


def last_checkpoint_path(trainer: Trainer) -> str | None:
    """Where this run's ``last.ckpt`` is (or would be) written."""
    callback = _last_callback(trainer)
    if callback is None:
        return None
    return os.path.join(callback.dirpath, LAST_NAME + callback.FILE_EXTENSION)


def save_last_checkpoint(trainer: Trainer) -> str | None:
    """Write the current state to ``last.ckpt`` outside the epoch-end schedule (a signal, an
    OOM stop), as the last-checkpoint callback's own file: the resumed run then overwrites
    it, rather than writing ``last-v1.ckpt`` beside it."""
    callback = _last_callback(trainer)
    path = last_checkpoint_path(trainer)
    if callback is None or path is None:
        return None
    if callback.filename == LAST_NAME:
        callback.best_model_path = path
    callback.last_model_path = path
    trainer.save_checkpoint(path)
    return path


def newest_last_checkpoint(folders: list[Path]) -> Path | None:
    """The most recently written ``last*.ckpt`` under any of ``folders``."""
    found = [
        p for folder in folders if folder.is_dir() for p in folder.glob(f"**/{LAST_NAME}*.ckpt")
    ]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None
