"""GPU check: OOM recovery under 16-mixed (GradScaler) ends with a clean run's weights.

    python tests/benchmarks/gpu_oom.py                       # CUDA, 16-mixed (GradScaler)
    python tests/benchmarks/gpu_oom.py --accelerator cpu --precision bf16-mixed   # dry run

Two runs of a few steps of the tiny backbone (BatchNorm replaced by identities, dropout and
flips off, SGD) on random clips: a clean one and one with ``MVCLI_FAULT_OOM_ABOVE`` forcing
splits down to 1 action per micro-batch. Prints the number of OOM events, the micro-batch
kept and the max |weight difference|; exits 1 if it exceeds ``--tolerance``. On a machine
without CUDA (and no ``--accelerator cpu``) it says so and exits 0. (fp16 autocast on CPU is
not supported by Lightning, so the GradScaler path only runs here, on a GPU.)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lightning.pytorch import Trainer, seed_everything  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from mvcli.callbacks.oom import FAULT_ENV, OOMRecovery  # noqa: E402
from mvcli.task.module import ClipInput, MVFoulModule  # noqa: E402
from tests.conftest import without_batch_norm  # noqa: E402


def batches(n: int, size: int, views: int = 2, frames: int = 8, hw=(32, 56)) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        out.append({
            "video": torch.randint(0, 255, (size, views, 3, frames, *hw), generator=g,
                                   dtype=torch.uint8),
            "view_mask": torch.ones(size, views, dtype=torch.bool),
            "offence_severity": torch.randint(0, 4, (size,), generator=g),
            "action": torch.randint(0, 8, (size,), generator=g),
            "action_id": [f"{i}-{j}" for j in range(size)],
            "views": [["a", "b"]] * size, "skipped_views": [[]] * size, "failed": [],
        })  # fmt: skip
    return out


def run(args, fault: int | None) -> tuple[dict, OOMRecovery]:
    os.environ.pop(FAULT_ENV, None)
    if fault is not None:
        os.environ[FAULT_ENV] = str(fault)
    seed_everything(0)
    model = MVFoulModule(backbone="tiny", clip=ClipInput(num_frames=8, height=32, width=56),
                         head_dropout=0.0,
                         optimizer=lambda p: torch.optim.SGD(p, lr=0.05))  # fmt: skip
    without_batch_norm(model.network.backbone)
    oom = OOMRecovery(enabled=True)
    trainer = Trainer(accelerator=args.accelerator, devices=1, precision=args.precision,
                      max_epochs=1, callbacks=[oom], logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    loader = DataLoader(batches(args.steps, args.batch_size), batch_size=None)
    trainer.fit(model, train_dataloaders=loader)
    os.environ.pop(FAULT_ENV, None)
    return {k: v.detach().float().cpu() for k, v in model.state_dict().items()}, oom


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accelerator", default="cuda")
    parser.add_argument("--precision", default="16-mixed")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tolerance", type=float, default=1e-2)  # half precision
    args = parser.parse_args(argv)
    if args.accelerator == "cuda" and not torch.cuda.is_available():
        print("gpu_oom: no CUDA device; nothing measured")
        return 0
    clean, clean_oom = run(args, None)
    split, oom = run(args, 1)
    diff = max((clean[k] - split[k]).abs().max().item() for k in clean)
    print(f"gpu_oom ({args.accelerator}, {args.precision}): clean run {clean_oom.events} OOM "
          f"events; split run {oom.events} events, micro-batch kept {oom.micro_batch}; "
          f"max |weight difference| {diff:.3g} (tolerance {args.tolerance})")  # fmt: skip
    return 0 if diff <= args.tolerance and oom.micro_batch == 1 and not clean_oom.events else 1


if __name__ == "__main__":
    sys.exit(main())
