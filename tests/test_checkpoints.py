"""Checkpoints are written atomically: a failed save keeps the previous file."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from mvcli import io
from mvcli.checkpoints import AtomicCheckpointIO, load_checkpoint
from mvcli.errors import WriteError


def test_cli_trainer_writes_checkpoints_atomically(trained):
    _, fit = trained
    assert isinstance(fit.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert load_checkpoint(fit.trainer.checkpoint_callback.best_model_path)["mvcli_version"]


def test_failed_checkpoint_write_keeps_the_previous_one(trained, tmp_path, monkeypatch):
    _, fit = trained
    checkpoint = load_checkpoint(fit.trainer.checkpoint_callback.best_model_path)
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(checkpoint, path)
    before = path.read_bytes()
    monkeypatch.setattr(io.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC,
                        os.strerror(errno.ENOSPC))))  # fmt: skip
    checkpoint["epoch"] = 99
    with pytest.raises(WriteError, match=f"could not write {path}: No space left"):
        AtomicCheckpointIO().save_checkpoint(checkpoint, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["last.ckpt"]
    assert torch.load(path, weights_only=True)["epoch"] != 99
