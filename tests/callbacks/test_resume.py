"""Exact resume and clean stops, with real signals.

Each run is a fit of the tiny set: 2 epochs of 3 batches. A helper callback
(tests/callbacks/signal_at.py) sends the signal to its own process at a chosen batch, so it
lands at the same point every time. The default tests run the fits in this process (SIGTERM
and SIGINT handled as in the CLI); the slow ones run ``python -m mvcli`` subprocesses, with
SIGKILL among the signals.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mvcli.callbacks.history import TrainingHistory
from mvcli.cli import main
from tests.conftest import CONF, CONFIGS, REPO, tiny_args

# Wall-clock measures differ between any two runs: history.json's times and the Throughput
# callback's logged epoch values (mvcli.callbacks.throughput); every other value must match.
TIMING = {"epoch_time_s", "train_time_s", "peak_memory_mb", "train/actions_per_s",
          "train/views_per_s", "train/data_wait_fraction"}  # fmt: skip


def _args(runs: Path, root: Path, *extra: str, batches: int = 3) -> list[str]:
    return ["--config", str(CONFIGS / "demo.yaml"), "--config", str(CONF / "signal_run.yaml"),
            *tiny_args(root, runs), "--trainer.limit_train_batches", str(batches),
            *extra]  # fmt: skip


def _fit(runs: Path, root: Path, *extra: str, signal_at: str | None = None):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("MVCLI_TEST_SIGNAL_AT", None)
    if signal_at:
        env["MVCLI_TEST_SIGNAL_AT"] = signal_at
    return _mvcli(["fit", *_args(runs, root, *extra)], env, cwd=runs)


def _mvcli(args: list[str], env: dict, cwd: Path):
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "mvcli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def _resume(run_dir: Path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("MVCLI_TEST_SIGNAL_AT", None)
    config = run_dir / "config.yaml"
    return _mvcli(["fit", "--config", str(config), "--ckpt_path", "last"], env, cwd=run_dir)


def _run_dir(runs: Path) -> Path:
    (run_dir,) = (runs / "demo").iterdir()  # one version: the resumed run logs into it too
    return run_dir


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)["state_dict"]


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _metrics(run_dir: Path) -> list[dict]:
    history = json.loads((run_dir / "history.json").read_text())
    return [{k: v for k, v in r.items() if k not in TIMING} for r in history]


def _weights_of(cli) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in cli.model.state_dict().items()}


def _differences(a: list[dict], b: list[dict]) -> dict:
    assert len(a) == len(b)
    return {(i, k): (x.get(k), y.get(k)) for i, (x, y) in enumerate(zip(a, b, strict=True))
            for k in x.keys() | y.keys() if x.get(k) != y.get(k)}  # fmt: skip


def _records(cli) -> list[dict]:
    history = next(c for c in cli.trainer.callbacks if isinstance(c, TrainingHistory))
    return [{k: v for k, v in r.items() if k not in TIMING} for r in history.records]


def test_signals_save_progress_and_resume_exactly(synthetic_root, tmp_path, monkeypatch):
    """In-process: SIGTERM mid-epoch (exit 143, mid-epoch last.ckpt) and SIGINT in an epoch's
    last batch (exit 130 after the epoch-end checkpoint), each resumed with ``--ckpt_path
    last`` from the run's config.yaml, end bit-identical to the uninterrupted run."""
    monkeypatch.delenv("MVCLI_TEST_SIGNAL_AT", raising=False)
    fast = ("--config", str(CONF / "quick_val.yaml"))
    reference = main(["fit", *_args(tmp_path / "ref", synthetic_root, *fast, batches=2)])
    for name, at, status in (("SIGTERM", "0:0", 143), ("SIGINT", "0:1", 130)):
        runs = tmp_path / name
        monkeypatch.setenv("MVCLI_TEST_SIGNAL_AT", f"{name}:{at}")
        # The message is a warning: on stderr in a real process (the slow tests read it
        # there), recorded by pytest here, so it is read from the recorded warnings.
        with pytest.raises(SystemExit) as stopped, pytest.warns(UserWarning) as warned:
            main(["fit", *_args(runs, synthetic_root, *fast, batches=2)])
        monkeypatch.delenv("MVCLI_TEST_SIGNAL_AT")
        assert stopped.value.code == status
        run_dir = _run_dir(runs)
        (message,) = [str(w.message) for w in warned if f"stopped by {name}" in str(w.message)]
        assert f"--config {run_dir / 'config.yaml'} --ckpt_path last" in message
        saved = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)
        assert saved["global_step"] == (1 if name == "SIGTERM" else 2)
        resumed = main(["fit", "--config", str(run_dir / "config.yaml"), "--ckpt_path", "last"])
        assert Path(resumed.trainer.log_dir) == run_dir  # the same run folder goes on
        diff = _max_diff(_weights_of(reference), _weights_of(resumed))
        print(f"{name} resume: max |weight difference| {diff}")
        assert diff == 0.0
        assert _differences(_records(resumed), _records(reference)) == {}
        assert [r["epoch"] for r in json.loads((run_dir / "history.json").read_text())] == [0, 1]


@pytest.fixture(scope="module")
def reference(synthetic_root, tmp_path_factory) -> Path:
    """The uninterrupted run (one data worker: per-worker seeding is part of what is tested)."""
    runs = tmp_path_factory.mktemp("reference")
    done = _fit(runs, synthetic_root, "--data.num_workers", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    return _run_dir(runs)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_identical(reference, synthetic_root, tmp_path):
    killed = _fit(tmp_path, synthetic_root, signal_at="SIGKILL:1:1")  # epoch 1, 2nd batch
    assert killed.returncode == -9
    run_dir = _run_dir(tmp_path)
    assert [r["epoch"] for r in json.loads((run_dir / "history.json").read_text())] == [0]
    resumed = _resume(run_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr + resumed.stdout
    diff = _max_diff(_weights(reference), _weights(run_dir))
    print(f"SIGKILL resume: max |weight difference| {diff}")
    assert diff == 0.0
    assert _metrics(run_dir) == _metrics(reference)  # every epoch metric, LR, fraction


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
