"""Checkpoints: each bad one has its own message; writes are atomic (a failed save keeps
the previous file)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from mvcli import __version__, io
from mvcli.checkpoints import AtomicCheckpointIO, load_checkpoint
from mvcli.errors import DataError, WriteError


@pytest.fixture(scope="module")
def ckpt(trained) -> Path:
    return Path(trained[1].trainer.checkpoint_callback.best_model_path)


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


def bad_checkpoints(ckpt: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the message must say)."""
    truncated = folder / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    text = folder / "notes.ckpt"
    text.write_text("not a checkpoint")
    weights = folder / "weights.pth"
    torch.save({"conv.weight": torch.zeros(1)}, weights)
    other = folder / "other.ckpt"
    torch.save(
        {"state_dict": {"layer.weight": torch.zeros(1)}, "pytorch-lightning_version": "2.6.0",
         "hyper_parameters": {"hidden": 3}},
        other,
    )  # fmt: skip
    newer = folder / "newer.ckpt"
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["mvcli_version"] = "99.0.0"
    torch.save(checkpoint, newer)
    return {
        "missing": (folder / "nope.ckpt", "not found"),
        "folder": (folder, "is not a file"),
        "truncated": (truncated, "cannot be read: truncated"),
        "not_a_checkpoint": (text, "cannot be read"),
        "bare_weights": (weights, "not a Lightning checkpoint"),
        "another_model": (other, "another model"),
        "newer_mvcli": (newer, "newer than this mvcli " + __version__),
    }


@pytest.mark.parametrize(
    "kind",
    ["missing", "folder", "truncated", "not_a_checkpoint", "bare_weights", "another_model",
     "newer_mvcli"],
)  # fmt: skip
def test_each_bad_checkpoint_has_its_message(kind, ckpt, tmp_path):
    path, expected = bad_checkpoints(ckpt, tmp_path)[kind]
    with pytest.raises(DataError, match=expected) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    load_checkpoint(ckpt)  # the good one loads
