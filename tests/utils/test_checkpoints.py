"""Checkpoints: each bad one has its own message; writes are atomic (a failed save keeps
the previous file); periodic keeps, printed paths and ``--ckpt_path last``."""

from __future__ import annotations

import errno
import logging
import os
import re
from pathlib import Path

import pytest
import torch

from mvcli import __version__
from mvcli.cli import main
from mvcli.utils import io
from mvcli.utils.checkpoints import AtomicCheckpointIO, load_checkpoint
from mvcli.utils.errors import DataError, WriteError
from tests.conftest import CONF, CONFIGS, tiny_args


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


# -- checkpoint files of a run ---------------------------------------------------------------
def _args(root, runs, *extra) -> list[str]:
    return ["--config", str(CONFIGS / "demo.yaml"), "--config", str(CONF / "quick_val.yaml"),
            *tiny_args(root, runs), "--trainer.limit_train_batches", "2", *extra]  # fmt: skip


def test_periodic_best_and_last_are_written_and_printed_as_they_are(
    synthetic_root, tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    cli = main(["fit", *_args(synthetic_root, tmp_path), "--trainer.max_epochs", "2",
                "--periodic_checkpoint.every_n_epochs", "1"])  # fmt: skip
    folder = Path(cli.trainer.log_dir) / "checkpoints"
    names = sorted(p.name for p in folder.iterdir())
    assert "periodic-epoch000.ckpt" in names and "periodic-epoch001.ckpt" in names  # kept
    assert "last.ckpt" in names
    best = [n for n in names if re.fullmatch(r"epoch00\d-leaderboard\d\.\d{4}\.ckpt", n)]
    assert len(best) == 1
    out = caplog.text
    printed = re.findall(r"(?:best|last) checkpoint: (\S+\.ckpt)", out)
    assert sorted(Path(p).name for p in printed) == sorted([best[0], "last.ckpt"])
    assert all(Path(p).is_file() for p in printed)
    assert "periodic checkpoints: 2 in" in out


def test_fast_dev_run_names_no_checkpoint(synthetic_root, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    main(["fit", *_args(synthetic_root, tmp_path), "--trainer.fast_dev_run", "true"])
    assert "no checkpoint written (fast_dev_run writes none)" in caplog.text
    assert "last checkpoint" not in caplog.text and "best checkpoint" not in caplog.text


def test_ckpt_path_last_without_any_says_where_it_looked(synthetic_root, tmp_path):
    with pytest.raises(ValueError, match="--ckpt_path last: no last.ckpt found in .*demo"):
        main(["fit", *_args(synthetic_root, tmp_path), "--ckpt_path", "last"])


def test_atomic_save_never_leaves_a_truncated_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # as if killed between writing and renaming

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "big": torch.zeros(1000)}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # the temporary is removed
