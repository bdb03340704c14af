"""Clean stops on SIGTERM / SIGINT: where the run stops, what it saves, its exit status and
message, in real ``python -m mvcli`` processes (tests/callbacks/conftest.py). The default run
covers both signals in-process: tests/callbacks/test_resume.py."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.callbacks.conftest import (
    _fit,
    _max_diff,
    _metrics,
    _mvcli,
    _resume,
    _run_dir,
    _weights,
)
from tests.conftest import REPO


@pytest.mark.slow
def test_sigterm_saves_progress_exits_143_and_resumes_exactly(reference, synthetic_root, tmp_path):
    stopped = _fit(tmp_path, synthetic_root, signal_at="SIGTERM:0:1")  # epoch 0, 2nd batch
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    run_dir = _run_dir(tmp_path)
    assert "stopped by SIGTERM at epoch 0, mid-epoch" in stopped.stderr
    assert f"--config {run_dir / 'config.yaml'} --ckpt_path last" in stopped.stderr
    saved = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)
    assert saved["global_step"] == 2  # the two finished batches, not the epoch start
    resumed = _resume(run_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    diff = _max_diff(_weights(reference), _weights(run_dir))
    print(f"SIGTERM mid-epoch resume: max |weight difference| {diff}")
    assert diff == 0.0
    assert _metrics(run_dir) == _metrics(reference)  # train metrics of the cut epoch included


@pytest.mark.slow
def test_sigint_during_the_last_batch_stops_after_the_epoch_with_130(synthetic_root, tmp_path):
    stopped = _fit(tmp_path, synthetic_root, signal_at="SIGINT:0:2")  # the epoch's last batch
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "stopped by SIGINT at epoch" in stopped.stderr
    run_dir = _run_dir(tmp_path)
    saved = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)
    assert saved["epoch"] == 0 and saved["global_step"] == 3  # the epoch-end checkpoint
    assert [r["epoch"] for r in json.loads((run_dir / "history.json").read_text())] == [0]


def test_a_second_stop_in_the_resumed_epoch_saves_its_progress(reference, synthetic_root, tmp_path):
    """Regression: resumed mid-epoch, Lightning skips on_train_epoch_start, and a second
    SIGTERM in that epoch exited 143 without saving the resumed steps."""
    assert _fit(tmp_path, synthetic_root, signal_at="SIGTERM:0:0").returncode == 143
    run_dir = _run_dir(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO), MVCLI_TEST_SIGNAL_AT="SIGTERM:0:1")
    args = ["fit", "--config", str(run_dir / "config.yaml"), "--ckpt_path", "last"]
    stopped = _mvcli(args, env, cwd=run_dir)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "stopped by SIGTERM at epoch 0, mid-epoch" in stopped.stderr
    saved = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)
    assert saved["global_step"] == 2  # the resumed batch is kept
    assert _resume(run_dir).returncode == 0
    assert _max_diff(_weights(reference), _weights(run_dir)) == 0.0
    assert _metrics(run_dir) == _metrics(reference)
