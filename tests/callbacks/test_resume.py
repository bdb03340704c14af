"""Exact resume after a stop, with real signals (the stops themselves: test_signals.py).

Each run is a fit of the tiny set: 2 epochs of 3 batches (tests/callbacks/conftest.py). A
helper callback (tests/callbacks/signal_at.py) sends the signal to its own process at a
chosen batch, so it lands at the same point every time. The default test runs the fits in
this process (SIGTERM and SIGINT handled as in the CLI); the slow one runs ``python -m mvcli``
subprocesses and kills one with SIGKILL.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mvcli.callbacks.history import TrainingHistory
from mvcli.cli import main
from tests.callbacks.conftest import (
    TIMING,
    _args,
    _fit,
    _max_diff,
    _metrics,
    _resume,
    _run_dir,
    _weights,
)
from tests.conftest import CONF, CONFIGS


def _weights_of(cli) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in cli.model.state_dict().items()}


def _differences(a: list[dict], b: list[dict]) -> dict:
    assert len(a) == len(b)
    return {(i, k): (x.get(k), y.get(k)) for i, (x, y) in enumerate(zip(a, b, strict=True))
            for k in x.keys() | y.keys() if x.get(k) != y.get(k)}  # fmt: skip


def _records(cli) -> list[dict]:
    history = next(c for c in cli.trainer.callbacks if isinstance(c, TrainingHistory))
    return [{k: v for k, v in r.items() if k not in TIMING} for r in history.records]


# With an EMA of the weights (configs/ema.yaml), averaging from the second step on: the
# checkpoints hold the average as weights and the live weights beside them.
EMA = ("--config", str(CONFIGS / "ema.yaml"), "--ema.decay", "0.5", "--ema.start_step", "1")


@pytest.mark.parametrize("ema", [False, True], ids=["plain", "ema"])
def test_signals_save_progress_and_resume_exactly(ema, synthetic_root, tmp_path, monkeypatch):
    """In-process: SIGTERM mid-epoch (exit 143, mid-epoch last.ckpt) and SIGINT in an epoch's
    last batch (exit 130 after the epoch-end checkpoint), each resumed with ``--ckpt_path
    last`` from the run's config.yaml, end bit-identical to the uninterrupted run (with EMA:
    the average, the live weights and the update count too)."""
    monkeypatch.delenv("MVCLI_TEST_SIGNAL_AT", raising=False)
    fast = ("--config", str(CONF / "quick_val.yaml"), *(EMA if ema else ()))
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
        if ema:
            assert _ema_state(_run_dir(tmp_path / "ref")) == _ema_state(run_dir)


def _ema_state(run_dir: Path) -> tuple:
    """last.ckpt's average (state_dict), live weights and update count, as exact values."""
    saved = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)
    assert _max_diff(saved["state_dict"], saved["current_model_state"]) > 1e-4  # it averages
    return tuple(
        {k: v.tolist() for k, v in saved[key].items()}
        for key in ("state_dict", "current_model_state", "averaging_state")
    )


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


def test_two_process_run_stopped_mid_epoch_resumes_exactly(tmp_path):
    """SIGTERM mid-epoch in both processes of a torchrun job (a pre-empted multi-node run),
    then `--ckpt_path last` on both: each process skips its shard's trained part, and the
    weights and epoch metrics equal those of the job never stopped."""
    from mvcli.data.synthetic import write_synthetic_dataset
    from tests.callbacks.test_distributed import TWO_NODES, run_two_nodes, start_two_nodes
    from tests.conftest import TINY, tiny_args

    root = tmp_path / "data"  # 24 training actions: 3 batches of 4 per process and epoch
    write_synthetic_dataset(root, train=24, valid=4, test=4, chall=0, seed=5, **TINY)
    run = [*TWO_NODES, "--config", str(CONF / "signal_run.yaml")]
    reference, runs = tmp_path / "reference", tmp_path / "runs"
    run_two_nodes(["fit", *run, *tiny_args(root, reference)], tmp_path / "logs_reference")

    logs = tmp_path / "logs_stopped"
    procs = start_two_nodes(
        ["fit", *run, *tiny_args(root, runs)], logs, {"MVCLI_TEST_SIGNAL_AT": "SIGTERM:0:1"}
    )
    for proc in procs:
        proc.wait(timeout=240)
    text = (logs / "node0.log").read_text()
    assert "stopped by SIGTERM at epoch 0, mid-epoch" in text, text[-3000:]
    run_dir = _run_dir(runs)
    assert torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 2

    resume = ["fit", "--config", str(run_dir / "config.yaml"), "--ckpt_path", "last"]
    run_two_nodes(resume, tmp_path / "logs_resumed")
    diff = _max_diff(_weights(_run_dir(reference)), _weights(run_dir))
    print(f"two-process SIGTERM mid-epoch resume: max |weight difference| {diff}")
    assert diff == 0.0
    assert _metrics(run_dir) == _metrics(_run_dir(reference))
