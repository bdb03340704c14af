"""Shared by the callback tests: the shared fit's TensorBoard events, the long-run monitors'
fit (test_history.py, test_grad_norms.py), and the interrupted and resumed fits
(test_resume.py, test_signals.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mvcli.cli import main
from tests.conftest import CONF, CONFIGS, REPO, tiny_args


@pytest.fixture(scope="session")
def events(trained) -> EventAccumulator:
    _, fit = trained
    accumulator = EventAccumulator(str(Path(fit.trainer.log_dir)), size_guidance={"images": 0})
    return accumulator.Reload()


# -- the long-run monitors' fit ---------------------------------------------------------------
@pytest.fixture(scope="session")
def long_run_args(synthetic_root):
    def args(runs: Path) -> list[str]:
        return ["--config", str(CONFIGS / "demo.yaml"), "--config", str(CONF / "long_run.yaml"),
                "--config", str(CONF / "quick_val.yaml"), *tiny_args(synthetic_root, runs),
                "--trainer.max_epochs", "5", "--trainer.limit_train_batches", "2"]  # fmt: skip

    return args


@pytest.fixture(scope="session")
def long_run(long_run_args, tmp_path_factory):
    return main(["fit", *long_run_args(tmp_path_factory.mktemp("runs"))])


def _groups(cli) -> set[str]:
    """The optimizer's parameter groups: ``heads`` and one ``backbone.<stage>`` per stage."""
    model = cli.model
    return {"heads"} | {model.stage_group(s) for s in model.backbone_stage_parameters()}


# -- interrupted and resumed fits (each a fit of the tiny set: 2 epochs of 3 batches) -------
# Wall-clock measures differ between any two runs: history.json's times and the Throughput
# callback's logged epoch values (mvcli.callbacks.throughput); every other value must match.
TIMING = {"epoch_time_s", "train_time_s", "peak_memory_mb", "train/actions_per_s",
          "train/views_per_s", "train/data_wait_fraction", "speed/compile_s"}  # fmt: skip


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


@pytest.fixture(scope="session")
def reference(synthetic_root, tmp_path_factory) -> Path:
    """The uninterrupted run (one data worker: per-worker seeding is part of what is tested)."""
    runs = tmp_path_factory.mktemp("reference")
    done = _fit(runs, synthetic_root, "--data.num_workers", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    return _run_dir(runs)
