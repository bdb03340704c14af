"""Checkpoint files: atomic writes, periodic keeps, printed paths, ``--ckpt_path last``."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest
import torch

from mvcli.checkpoints import AtomicCheckpointIO
from mvcli.cli import main
from tests.conftest import CONF, CONFIGS, tiny_args


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
