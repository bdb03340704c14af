"""Training-step benchmark: ``mvcli fit`` vs a plain PyTorch loop on the same batches.

Same model (the ``tiny`` backbone of configs/demo.yaml, batch 8 x 2 views, on the CPU, at
8x32x56 and at the demo's 16x64x112), same initial weights, same optimizer (AdamW from the
config, no LR schedule), same pre-collated batches held in memory (no decoding in either
loop), same work per step (on-device flip, forward, multi-task loss, backward, step,
torchmetrics update). The plain loop is what a hand-written script would do; the difference
is Lightning's per-step overhead (hooks, logging, progress bar, callbacks).

A step is timed from one batch's start to the next one's (everything a loop does per batch),
after warm-up steps, in alternating repeats; the overhead is the ratio of the medians. Two
clocks: wall time, and the CPU time of the process (all its threads: progress bar refresh and
event-file writer included). On a shared machine other processes inflate wall time at random;
CPU time is what the loop itself spent, so the goal is judged on it. Both
loops are seeded alike, so they must end with identical weights (asserted).
"""

from __future__ import annotations

import copy
import time
import warnings

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from mvcli.cli import main
from mvcli.data.synthetic import write_synthetic_dataset
from tests.benchmarks.common import env_int, goal, median, report, spread, table
from tests.conftest import CONFIGS

pytestmark = pytest.mark.bench

OVERHEAD_GOAL_PCT = 3.0
SEED = 1234


def _now() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all its threads)."""
    return time.perf_counter(), time.process_time()


class StepTimer(Callback):
    """Batch start times and losses; seeds right before the first step like the plain loop."""

    def __init__(self) -> None:
        self.starts: list[tuple[float, float]] = []
        self.losses: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            torch.manual_seed(SEED)
        self.starts.append(_now())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def _cli(root, runs, size: tuple[int, int, int], steps: int, bare: bool):
    frames, height, width = size
    args = [
        "--config", str(CONFIGS / "demo.yaml"),
        "--data.root", str(root),
        "--data.center_frame", "12",
        "--data.num_workers", "0",
        "--data.batch_size", "8",  # the figures' batch (demo.yaml's is 4)
        "--data.cache_dir", "null",
        "--data.frames_per_clip", str(frames),
        "--data.img_height", str(height),
        "--data.img_width", str(width),
        "--trainer.max_epochs", "1",
        "--trainer.max_steps", str(steps),
        "--trainer.default_root_dir", str(runs),
        "--trainer.logger.init_args.save_dir", str(runs),
        "--trainer.enable_model_summary", "false",
        "--trainer.num_sanity_val_steps", "0",
        # No LR schedule: the plain loop then builds the very same optimizer (no Trainer).
        "--model.lr_scheduler", "null",
        # Lightning's overhead only: augmentation has its own benchmark (test_augment_bench).
        "--data.augmentation.preset", "none",
    ]  # fmt: skip
    if bare:
        args += ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    return main(args, run=False)


def _loader(batches: list[dict]) -> DataLoader:
    # batch_size=None: each item is already a batch; shallow copies keep the originals intact.
    return DataLoader(batches, batch_size=None, collate_fn=dict)


def plain_loop(module, batches: list[dict]) -> tuple[list[float], list[float]]:
    """The same steps without Lightning: returns (batch start times, losses)."""
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    module.train()
    starts, losses = [], []
    torch.manual_seed(SEED)
    with warnings.catch_warnings():
        # training_step's self.log has no Trainer to log to here: skipped, with a warning.
        warnings.filterwarnings("ignore", message=".*self.log.*")
        for batch_idx, batch in enumerate(batches):
            starts.append(_now())
            loss = module.training_step(dict(batch), batch_idx)  # the module's own step
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
    return starts, losses


# (frames, height, width, steps): a small input magnifies the per-step overhead; the demo's
# input (configs/demo.yaml) is what a CPU run trains on.
SIZES = [(8, 32, 56, 20), (16, 64, 112, 8)]


def test_training_step_overhead(tmp_path, one_thread):
    warmup, repeats = 3, env_int("REPEATS", 3)
    root = tmp_path / "data"
    write_synthetic_dataset(root, train=24, valid=4, test=4, chall=1, num_frames=24,
                            event_frame=12, seed=3)  # fmt: skip
    tables, data, goals = {}, {"repeats": repeats, "warmup": warmup, "sizes": {}}, []
    for frames, height, width, steps in SIZES:
        size = (frames, height, width)
        steps = env_int("STEPS", steps)
        per_step = measure(root, tmp_path / "runs", size, warmup, steps, repeats)
        rows, overheads = [], {}
        for clock in ("cpu", "wall"):
            plain = median(per_step["plain PyTorch loop"][clock])
            for name, samples in per_step.items():
                step = median(samples[clock])
                overheads[f"{name} ({clock})"] = pct = 100 * (step / plain - 1)
                rows.append([name, clock, 1000 * step, f"{pct:+.1f}%", 1000 * (step - plain),
                             spread(samples[clock])])  # fmt: skip
        caption = (
            f"tiny backbone, {frames}x{height}x{width}, batch 8 x 2 views, CPU (1 thread), "
            f"{steps} steps x {repeats} repeats, median:"
        )
        headers = ["loop", "clock", "ms/step", "overhead", "ms/step extra", "noise"]
        tables[caption] = table(headers, rows)
        pct = overheads["mvcli fit (defaults) (cpu)"]
        goals.append([f"mvcli fit vs plain loop, CPU time, {frames}x{height}x{width}",
                      f"{pct:+.1f}%", goal(pct, OVERHEAD_GOAL_PCT, False)])  # fmt: skip
        data["sizes"]["x".join(map(str, size))] = {
            "steps": steps,
            "ms_per_step": {
                name: {clock: [1000 * t for t in v] for clock, v in samples.items()}
                for name, samples in per_step.items()
            },
            "overhead_pct": overheads,
        }
    tables["Goal (Lightning overhead):"] = table(["ratio", "value", "goal"], goals)
    report("training_step", "Training-step benchmark", tables, data)


def measure(root, runs, size, warmup, steps, repeats) -> dict[str, dict[str, list[float]]]:
    """Seconds per step of each loop by clock, ``{"wall": [...], "cpu": [...]}`` (alternating
    repeats); asserts the loops did the same work."""
    first = _cli(root, runs, size, warmup + steps, bare=True)
    first.datamodule.setup("fit")
    batches, loader = [], first.datamodule.train_dataloader()
    while len(batches) < warmup + steps:
        batches += list(loader)
    batches = batches[: warmup + steps]
    val_batches = list(first.datamodule.val_dataloader())[:1]
    initial = copy.deepcopy(first.model.state_dict())

    # bare: no logger, no progress bar (the checkpoint callback stays: mvcli always adds it).
    variants = {"plain PyTorch loop": None, "Lightning, bare": True, "mvcli fit (defaults)": False}
    per_step = {name: {"wall": [], "cpu": []} for name in variants}
    final: dict[str, dict] = {}
    losses: dict[str, list[float]] = {}
    names = list(variants)
    for repeat in range(repeats):
        # Rotate the order, so no loop always runs first (or right after another one).
        for name in names[repeat % 3 :] + names[: repeat % 3]:
            bare = variants[name]
            cli = _cli(root, runs, size, warmup + steps, bare=bool(bare))
            cli.model.load_state_dict(initial)
            if bare is None:
                starts, losses[name] = plain_loop(cli.model, batches)
            else:
                timer = StepTimer()
                cli.trainer.callbacks.append(timer)
                cli.trainer.fit(cli.model, _loader(batches), _loader(val_batches))
                assert cli.trainer.global_step == warmup + steps
                starts, losses[name] = timer.starts, timer.losses
            # Intervals between batch starts only: the last batch's end holds the validation.
            starts = starts[warmup : warmup + steps]
            for i, clock in enumerate(("wall", "cpu")):
                times = [t[i] for t in starts]
                per_step[name][clock] += [b - a for a, b in zip(times, times[1:], strict=False)]
            final[name] = {k: v.detach().clone() for k, v in cli.model.state_dict().items()}

    # Same losses, same weights: the loops did the same work.
    reference = final["plain PyTorch loop"]
    for name in variants:
        assert losses[name] == pytest.approx(losses["plain PyTorch loop"], rel=1e-5), name
        for key, value in reference.items():
            torch.testing.assert_close(final[name][key], value, rtol=1e-5, atol=1e-6)
    return per_step
