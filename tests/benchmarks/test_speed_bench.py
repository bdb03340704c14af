"""model.speed on the CPU: each option against the default, side by side, on the ``tiny``
backbone at the demo's clips (16x64x112), a batch of 4 actions x 2 views, one thread.

Per option: a training step (forward, multi-task loss, backward, AdamW; alternated with the
other options, medians), an inference forward, and the activations kept for the backward
pass (bytes of the tensors autograd saves, counted with ``saved_tensors_hooks``), each as a
ratio to the default; torch.compile's compile time apart. The logits of every option are
asserted equal to the default's. A GPU tells more: ``make bench-gpu``.
"""

from __future__ import annotations

import time

import pytest
import torch

from mvcli.models.speed import SpeedOptions
from mvcli.task.module import ClipInput, MVFoulModule
from mvcli.utils.compat import CompileClock
from tests.benchmarks.common import env_int, interleaved, median, report, spread, table

pytestmark = pytest.mark.bench

OPTIONS = {
    "default": SpeedOptions(),
    "memory_format: channels_last_3d": SpeedOptions(memory_format="channels_last_3d"),
    "checkpointing: stage": SpeedOptions(checkpointing="stage"),
    "checkpointing: block": SpeedOptions(checkpointing="block"),
    "compile: default": SpeedOptions(compile="default"),
}
FRAMES, HEIGHT, WIDTH = 16, 64, 112


def _batch(actions: int = 4, views: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    shape = (actions, views, 3, FRAMES, HEIGHT, WIDTH)
    return {
        "video": torch.randint(0, 256, shape, dtype=torch.uint8, generator=g),
        "view_mask": torch.ones(actions, views, dtype=torch.bool),
        "offence_severity": torch.randint(0, 4, (actions,), generator=g),
        "action": torch.randint(0, 8, (actions,), generator=g),
    }


def _saved_bytes(module: MVFoulModule, data: dict, views: list[int]) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = module.criterion(module(data["video"], data["view_mask"], views), data)
    loss.backward()
    return total


def test_speed_options_side_by_side(one_thread):
    data = _batch()
    views = [2] * 4
    clip = ClipInput(num_frames=FRAMES, height=HEIGHT, width=WIDTH)
    modules, optimizers, compile_s, saved = {}, {}, {}, {}
    for name, speed in OPTIONS.items():
        torch.manual_seed(0)
        module = MVFoulModule(backbone="tiny", clip=clip, speed=speed).train()
        modules[name] = module
        optimizers[name] = torch.optim.AdamW(module.parameters(), lr=1e-4)
        clock = CompileClock()
        clock.start()
        start = time.perf_counter()
        saved[name] = _saved_bytes(module, data, views)  # the first step compiles
        module.eval()
        with torch.no_grad():
            logits = module(data["video"], data["view_mask"])
        module.train()
        clock.stop()
        compile_s[name] = (clock.seconds, time.perf_counter() - start)
        reference = modules["default"].eval()
        with torch.no_grad():
            expected = reference(data["video"], data["view_mask"])
        reference.train()
        for head, value in logits.items():
            torch.testing.assert_close(value, expected[head], rtol=1e-3, atol=1e-3)

    def train(name):
        def step():
            module, optimizer = modules[name], optimizers[name]
            loss, _ = module.criterion(module(data["video"], data["view_mask"], views), data)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    def infer(name):
        def forward():
            with torch.inference_mode():
                modules[name](data["video"], data["view_mask"])

        return forward

    rounds = env_int("ROUNDS", 3)
    for module in modules.values():
        module.eval()
    infer_s = interleaved({n: infer(n) for n in OPTIONS}, rounds)
    for module in modules.values():
        module.train()
    train_s = interleaved({n: train(n) for n in OPTIONS}, rounds)
    base_train, base_infer = median(train_s["default"]), median(infer_s["default"])
    rows = [
        [
            name,
            1000 * median(train_s[name]),
            base_train / median(train_s[name]),
            base_infer / median(infer_s[name]),
            saved[name] / 2**20,
            saved[name] / saved["default"],
            f"{compile_s[name][0]:.1f}",
            f"{100 * spread(train_s[name]):.0f}%",
        ]
        for name in OPTIONS
    ]
    caption = (
        f"tiny, {FRAMES}x{HEIGHT}x{WIDTH}, batch 4 x 2 views, CPU, 1 thread "
        f"(speed-ups: the default's time / the option's; {rounds} alternated rounds):"
    )
    data_out = {"rows": rows, "compile_s": compile_s}
    headers = ["option", "train ms/step", "train speed-up", "inference speed-up",
               "saved activations MiB", "x default", "compile s", "spread"]  # fmt: skip
    report("speed_options", "Speed options on the CPU", {caption: table(headers, rows)}, data_out)
    assert saved["checkpointing: stage"] < saved["default"]
    assert saved["checkpointing: block"] < saved["default"]
