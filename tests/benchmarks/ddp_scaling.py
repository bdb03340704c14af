"""DDP scaling of ``mvcli fit``: training samples/s with 1, 2, ... processes, and efficiency.

Each process count is a real run started as users start them (``torchrun --standalone
--nproc-per-node N -m mvcli fit ...``, strategy ddp), on the same synthetic set, the same
per-process batch (so the effective batch grows with N: weak scaling, what DDP is for).
A callback takes the time between consecutive training batch starts within an epoch (the
whole step: loading, forward, backward, gradient all-reduce, optimizer), leaving out each
epoch's first steps; throughput = N x batch / median step time, efficiency = throughput_N /
(N x throughput_1).

CPU (gloo), as ``make bench`` runs it through tests/benchmarks/test_ddp_scaling_bench.py:
    python -m tests.benchmarks.ddp_scaling --processes 1 2
GPUs (NCCL), one process per GPU, the demo's size or more:
    python -m tests.benchmarks.ddp_scaling --accelerator gpu --processes 1 2 4 8 \\
        --height 224 --width 398 --frames 16 --batch 8 --backbone r2plus1d_18
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lightning.pytorch import Callback

from tests.benchmarks.common import REPO, report, table

SKIP_STEPS = 2  # first steps of each epoch: worker start-up, allocator warm-up


class StepTimes(Callback):
    """Rank 0 writes the training batch start times of each epoch to ``output`` (JSON)."""

    def __init__(self, output: str) -> None:
        self.output = output
        self.epochs: list[list[float]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs.append([])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.epochs[-1].append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            kept = [ep[SKIP_STEPS:] for ep in self.epochs]
            steps = [b - a for ep in kept for a, b in zip(ep, ep[1:], strict=False)]
            Path(self.output).write_text(json.dumps({"step_s": steps, "world": trainer.world_size}))


def run_fit(processes: int, args: argparse.Namespace, data: Path, work: Path) -> dict:
    out = work / f"steps_{processes}.json"
    timer = "tests.benchmarks.ddp_scaling.StepTimes"  # not __main__: the workers import it
    callback = {"class_path": timer, "init_args": {"output": str(out)}}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc-per-node", str(processes), "-m", "mvcli", "fit",
        "--config", str(REPO / "configs/demo.yaml"), "--config", str(REPO / "configs/ddp.yaml"),
        "--trainer.accelerator", args.accelerator, "--trainer.devices", str(processes),
        "--trainer.max_epochs", str(args.epochs), "--trainer.limit_val_batches", "1",
        "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "false", "--trainer.default_root_dir", str(work / f"run{processes}"),
        f"--trainer.callbacks+={json.dumps(callback)}",
        "--model.backbone", args.backbone, "--model.lr_scheduler", "null",
        "--data.root", str(data), "--data.cache_dir", "null", "--data.num_workers", "0",
        "--data.frames_per_clip", str(args.frames), "--data.center_frame", "12",
        "--data.img_height", str(args.height), "--data.img_width", str(args.width),
        "--data.batch_size", str(args.batch), "--data.num_views", "2",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)}
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not out.is_file():
        raise RuntimeError(
            f"{processes} process(es) failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        )
    steps = json.loads(out.read_text())["step_s"]
    step = statistics.median(steps)
    return {
        "processes": processes,
        "effective_batch": processes * args.batch,
        "median_step_s": step,
        "steps_timed": len(steps),
        "samples_per_s": processes * args.batch / step,
        "wall_s": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--height", type=int, default=32)
    parser.add_argument("--width", type=int, default=56)
    parser.add_argument("--batch", type=int, default=4, help="per process")
    parser.add_argument("--train", type=int, default=48, help="training actions")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--data", type=Path, help="existing dataset (default: synthetic)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = args.data
        if data is None:
            from mvcli.data.synthetic import write_synthetic_dataset

            data = work / "data"
            write_synthetic_dataset(
                data, train=args.train, valid=4, test=4, chall=0, num_frames=24, event_frame=12,
                height=args.height, width=args.width,
            )  # fmt: skip
        rows = [run_fit(n, args, data, work) for n in args.processes]
    base = rows[0]["samples_per_s"] / rows[0]["processes"]
    for row in rows:
        row["speedup"] = row["samples_per_s"] / rows[0]["samples_per_s"]
        row["efficiency"] = row["samples_per_s"] / (row["processes"] * base)
    text = table(
        ["processes", "effective batch", "median step (s)", "samples/s", "speed-up", "efficiency"],
        [
            [r["processes"], r["effective_batch"], r["median_step_s"], r["samples_per_s"],
             r["speedup"], r["efficiency"]]
            for r in rows
        ],
    )  # fmt: skip
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report(
        f"ddp_scaling_{args.accelerator}",
        f"DDP scaling of mvcli fit ({args.accelerator}, {args.backbone}, "
        f"batch {args.batch} per process)",
        {"Training throughput by number of processes": text},
        {"settings": settings, "results": rows},
    )
    return rows


if __name__ == "__main__":
    main()
