"""OOM recovery: batches split on out-of-memory end with the weights of a clean run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mvcli.callbacks.oom import FAULT_ENV, OOMRecovery, OutOfMemoryStop, _Accumulator, _slice
from mvcli.cli import main
from tests.callbacks.conftest import _max_diff
from tests.conftest import CONF, CONFIGS, tiny_args, without_batch_norm


def _fit(root, runs, monkeypatch, fault: int | None, *extra: str, batch_norm: bool = False):
    """One short epoch of the demo; dropout and flips off (they draw per micro-batch) and, unless
    ``batch_norm``, the tiny backbone's BatchNorm layers replaced by identities: batch
    statistics are the one thing a split legitimately changes."""
    if fault is None:
        monkeypatch.delenv(FAULT_ENV, raising=False)
    else:
        monkeypatch.setenv(FAULT_ENV, str(fault))
    args = ["--config", str(CONFIGS / "demo.yaml"), "--config", str(CONF / "oom_split.yaml"),
            *tiny_args(root, runs), *extra]  # fmt: skip
    cli = main(args, run=False)
    if not batch_norm:
        without_batch_norm(cli.model.network.backbone)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli


def _oom(cli) -> OOMRecovery:
    return next(c for c in cli.trainer.callbacks if isinstance(c, OOMRecovery))


def test_split_batches_end_with_the_clean_runs_weights(synthetic_root, tmp_path, monkeypatch):
    clean = _fit(synthetic_root, tmp_path / "clean", monkeypatch, None)
    split = _fit(synthetic_root, tmp_path / "split", monkeypatch, 1)  # batches of 4 -> 2 -> 1
    oom = _oom(split)
    assert oom.events == 2 and oom.micro_batch == 1  # 4 failed, then 2; 1 kept afterwards
    assert _oom(clean).events == 0
    diff = _max_diff(clean.model.state_dict(), split.model.state_dict())
    print(f"max |weight difference| split vs clean: {diff:.3g}")
    assert diff < 1e-5
    metrics = split.trainer.callback_metrics
    assert metrics["train/oom_events"] == 2
    # Epoch-level figures (a step-level train/loss after a split is its last micro-batch's).
    for key in ("val/leaderboard", "train/acc_action", "train/bacc_offence_severity"):
        assert torch.isclose(metrics[key], clean.trainer.callback_metrics[key], atol=1e-5)


def test_one_action_that_does_not_fit_saves_and_stops(synthetic_root, tmp_path, monkeypatch):
    with pytest.raises(OutOfMemoryStop) as stop:
        _fit(synthetic_root, tmp_path, monkeypatch, 0)
    message = str(stop.value)
    assert "data.frames_per_clip" in message and "--ckpt_path last" in message
    saved = message.split("progress saved in ")[1].split(". ")[0]
    assert torch.load(saved, weights_only=False)["global_step"] == 0


def test_injection_without_recovery_fails_like_a_real_oom(synthetic_root, tmp_path, monkeypatch):
    with pytest.raises(torch.OutOfMemoryError):
        _fit(synthetic_root, tmp_path, monkeypatch, 2, "--oom_recovery.enabled", "false")


def test_fp16_scaled_micro_batch_gradients_come_back_unscaled_on_the_device():
    """Under a GradScaler the micro-batch gradients are unscaled by the scale as a tensor
    (reading it with get_scale() would make the host wait for the device at every step)."""
    layer = torch.nn.Linear(3, 1)
    x = torch.randn(4, 3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler))
    acc = _Accumulator(list(layer.parameters()), trainer)
    for part in (x[:2], x[2:]):
        acc.add(layer(part).pow(2).mean(), 0.5)
    expected = torch.autograd.grad(layer(x).pow(2).mean(), list(layer.parameters()))
    for grad, want in zip(acc.grads, expected, strict=True):
        torch.testing.assert_close(grad, want)
    assert scaler.get_scale() == 1024.0


def test_slice_keeps_per_action_entries_and_counts():
    batch = {"video": torch.zeros(3, 2, 1), "action_id": ["a", "b", "c"], "failed": [{"x": 1}],
             "action": torch.tensor([0, 1, 2])}  # fmt: skip
    first, rest = _slice(batch, 0, 2, 3), _slice(batch, 2, 3, 3)
    assert first["action_id"] == ["a", "b"] and rest["action_id"] == ["c"]
    assert first["failed"] == [{"x": 1}] and rest["failed"] == []
    assert rest["action"].tolist() == [2] and first["video"].shape[0] == 2


def test_multi_process_oom_stops_every_process_with_the_settings_to_change(tmp_path):
    """DDP cannot split batches: an OOM there ends the job (no hang) with one message per
    process naming what lowers the memory, not a bare CUDA traceback."""
    from mvcli.data.synthetic import write_synthetic_dataset
    from tests.callbacks.test_distributed import TWO_NODES, start_two_nodes
    from tests.conftest import TINY

    root = tmp_path / "data"
    write_synthetic_dataset(root, train=8, valid=4, test=4, chall=0, seed=5, **TINY)
    logs = tmp_path / "logs"
    args = ["fit", *TWO_NODES, *tiny_args(root, tmp_path / "runs")]
    procs = start_two_nodes(args, logs, {FAULT_ENV: "1"})
    codes = [p.wait(timeout=240) for p in procs]
    assert all(code != 0 for code in codes)
    for rank in (0, 1):
        text = (logs / f"node{rank}.log").read_text()
        assert "mvcli: out of memory (MVCLI_FAULT_OOM_ABOVE=1" in text, text[-3000:]
        assert "data.batch_size" in text and "--ckpt_path last" in text
        assert "Traceback" not in text.split("mvcli: out of memory")[0]  # torchrun's follows
