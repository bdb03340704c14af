"""The GPU benchmark script: a smoke run on the CPU (default test run), the real one under
``make bench`` where CUDA exists."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.benchmarks import gpu_bench

SCRIPT = Path(gpu_bench.__file__)
SMOKE = [
    "--device", "cpu", "--backbone", "tiny", "--frames", "8", "--height", "32", "--width", "56",
    "--batch", "2", "--views", "2", "--warmup", "1", "--steps", "1", "--compile", "off",
    "--eval_actions", "4", "--name", "gpu_smoke",
]  # fmt: skip


def test_gpu_bench_logic_runs_on_cpu(tmp_path, monkeypatch, capsys):
    """Every precision and memory format through the script's code, on a tiny model."""
    monkeypatch.setenv("MVCLI_BENCH_DIR", str(tmp_path))
    assert gpu_bench.main(SMOKE) == 0
    results = json.loads((tmp_path / "gpu_smoke.json").read_text())
    assert len(results["results"]) == 6
    assert all(r["finite_loss"] and r["train_clips_per_s"] > 0 for r in results["results"])
    assert "Evaluation batching" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_gpu_bench_exits_cleanly_without_cuda():
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0 and "no CUDA" in proc.stdout


@pytest.mark.bench
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_bench():
    assert gpu_bench.main([]) == 0
