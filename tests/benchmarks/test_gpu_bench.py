"""The GPU benchmark (``make bench-gpu``): its CPU dry run in the default test run (every code
path at tiny sizes), the real one under ``make bench`` where CUDA exists."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.benchmarks import gpu_bench
from tests.conftest import REPO


def test_dry_run_measures_every_option_on_the_cpu(tmp_path, capsys):
    out = tmp_path / "bench-gpu.json"
    assert gpu_bench.main(["--dry-run", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["grid"]
    assert len(rows) == len(gpu_bench.DRY_MODELS) * len(gpu_bench.GRID)
    ran = [r for r in rows if "train_clips_per_s" in r]
    first, *others = gpu_bench.DRY_MODELS
    expected = {(first.label, c) for c in gpu_bench.PRIORITY}  # every option, alone and together
    expected |= {(m.label, c) for m in others for c in gpu_bench.DRY_OTHERS}
    keys = ("precision", "compile", "memory_format", "checkpointing")
    assert {(r["model"], gpu_bench.Config(*(r[k] for k in keys))) for r in ran} == expected
    for r in ran:
        assert r["finite_loss"] and r["eval_clips_per_s"] > 0, r
        assert 0 < r["mfu_train"] and r["train_tflop_per_step"] > 0
        assert (r["compile_s"] > 0) == r["compile"], r  # compile time apart, compiled only
    assert all(r["skipped"].startswith("not run") for r in rows if r not in ran)
    batching = report["eval_batching"]
    assert batching["actions_per_s"]["batched"] > 0 and batching["augment_vs_train_step"] > 0
    epochs = report["fit"]["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert all(e["train/actions_per_s"] > 0 and 0 <= e["train/data_wait_fraction"] <= 1
               for e in epochs)  # fmt: skip
    assert "Speed options, cpu" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_without_cuda_it_says_so_and_exits_cleanly(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks.gpu_bench", "--out", str(tmp_path / "x.json")],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0 and "no CUDA" in proc.stdout
    assert not (tmp_path / "x.json").exists()


@pytest.mark.bench
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_bench(tmp_path):
    assert gpu_bench.main(["--out", str(tmp_path / "bench-gpu.json")]) == 0
