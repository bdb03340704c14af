"""Gradient norms per optimizer group, with the other long-run monitors, on one short fit
(tests/callbacks/conftest.py's long_run)."""

from __future__ import annotations

from mvcli.callbacks.memory import MemoryCleanup
from tests.callbacks.conftest import _groups


def test_monitors_log_and_act(long_run):
    trainer = long_run.trainer
    assert trainer.early_stopping_callback.stopped_epoch == 1
    metrics = trainer.callback_metrics
    logged = {k.removeprefix("train/grad_norm/") for k in metrics if "grad_norm" in k}
    assert logged == {"total"} | _groups(long_run)
    for key in logged:
        assert float(metrics[f"train/grad_norm/{key}"]) > 0
    cleanup = next(c for c in trainer.callbacks if isinstance(c, MemoryCleanup))
    assert cleanup.cleanups == 4 + 2  # every training batch, and after each validation
