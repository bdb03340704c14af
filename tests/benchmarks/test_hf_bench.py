"""Hugging Face backbones on the CPU: forward + backward time per clip of the tiny random
configs (tests/models/test_hf.py) against torchvision-built backbones of similar size, at
the same 4x32x32 clips (one thread, medians of repeats). Real sizes on a GPU: ``make
bench-gpu`` (a VideoMAE-B among its backbones)."""

from __future__ import annotations

import time

import pytest
import torch

from mvcli.models.backbones import build_backbone
from tests.benchmarks.common import median, report, table

pytestmark = pytest.mark.bench
transformers = pytest.importorskip("transformers")


def test_hf_step_time_per_clip(tmp_path):
    from tests.models.test_hf import FAMILIES, FRAMES, SIZE, save_tiny

    names = {f: save_tiny(f, tmp_path / f) for f in FAMILIES}
    names["tiny (mvcli 3D CNN)"] = "tiny"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for label, name in names.items():
            module = build_backbone(name, FRAMES, SIZE, SIZE).module.train()
            params = sum(p.numel() for p in module.parameters())
            x = torch.randn(8, 3, FRAMES, SIZE, SIZE)
            times = []
            for i in range(8):
                start = time.perf_counter()
                module(x).sum().backward()
                if i >= 2:
                    times.append((time.perf_counter() - start) / len(x))
            rows.append([label, params, 1000 * median(times)])
    finally:
        torch.set_num_threads(threads)
    report("hf_backbones", "Hugging Face backbones, CPU", {
        f"forward+backward per clip, {FRAMES}x{SIZE}x{SIZE}, batch 8, 1 thread:": table(
            ["backbone", "parameters", "ms / clip"], rows)}, {"rows": rows})  # fmt: skip
