"""A run prints nothing the user cannot act on (real console runs, read back)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO

NOISE = (
    "args parameter is intended",  # LightningCLI, when given sys.argv as args
    "litlogger",  # an advertisement
    "LeafSpec",  # a deprecation inside Lightning
    "The dirpath has changed",
    "v_num",
    "Total FLOPs",
    "Trainer already configured with model summary",
)


def test_console_run_is_quiet(trained, tmp_path):
    common, fit = trained
    best = fit.trainer.checkpoint_callback.best_model_path
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    env.pop("MVCLI_DEBUG", None)
    result = subprocess.run(
        [sys.executable, "-m", "mvcli", "validate", *common, "--ckpt_path", best],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "validate_metrics.json" in output  # says where the metrics went
    assert [noise for noise in NOISE if noise in output] == []


def test_console_export_is_quiet(ckpt, tmp_path):
    # The complaint: two torch.onnx UserWarnings ("The axis name: batch will not be used,
    # since it shares the same shape constraints with another axis: batch.") leaked.
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    env.pop("MVCLI_DEBUG", None)
    out = tmp_path / "export"
    result = subprocess.run(
        [sys.executable, "-m", "mvcli", "export", "--ckpt_path", str(ckpt),
         "--output_dir", str(out)],  # fmt: skip
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "exported" in result.stdout + result.stderr
    assert "UserWarning" not in result.stderr and "The axis name" not in result.stderr
