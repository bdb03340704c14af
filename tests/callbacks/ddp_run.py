"""A real 2-process DDP fit on CPU (gloo), run as a script by test_freezing.py (slow).

Lightning's DDP launcher starts the other process by running this script again, so it is
a script, not a test. Each process writes, per epoch, the action ids it trained on, its
sampler shard, each stage's parameter sum and trainability, to ``<out>/rank<r>.jsonl``.
Usage: python tests/callbacks/ddp_run.py DATA_ROOT OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from mvcli.cli import main
from tests.conftest import CONF, CONFIGS, tiny_args


class Probe(Callback):
    def __init__(self, out: Path) -> None:
        self.out = out
        self.ids: list[str] = []
        self.shard: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.ids = []
        self.shard = [index for index, _seed in trainer.train_dataloader.sampler]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.ids += list(batch["action_id"])

    def on_train_epoch_end(self, trainer, pl_module):
        stages = list(zip(pl_module.backbone_stage_names, pl_module.backbone_stages, strict=True))
        record = {
            "epoch": trainer.current_epoch,
            "ids": self.ids,
            "shard": self.shard,
            "sums": {
                n: float(sum(p.detach().double().sum() for p in s.parameters())) for n, s in stages
            },
            "trainable": {n: all(p.requires_grad for p in s.parameters()) for n, s in stages},
            "groups": [g.get("name") for g in trainer.optimizers[0].param_groups],
        }
        with open(self.out / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


def run(root: Path, out: Path) -> None:
    args = [
        "--config", str(CONFIGS / "demo.yaml"), "--config", str(CONF / "ddp_two_processes.yaml"),
        "--config", str(CONF / "quick_val.yaml"), *tiny_args(root, out / "runs"),
        "--data.batch_size", "2", "--data.sampler", "progressive",
        "--data.progressive_target", "joint", "--data.progressive_epochs", "2",
        # Advanced with no patience: probes, a cross-process importance vote, an unfreeze
        # at every epoch and rollbacks, all of which must keep the processes identical.
        "--freezing", "AdvancedFreezing", "--freezing.patience", "0",
        "--freezing.rollback_patience", "1",
    ]  # fmt: skip
    cli = main(args, run=False)
    cli.trainer.callbacks.append(Probe(out))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)


if __name__ == "__main__":
    run(Path(sys.argv[1]), Path(sys.argv[2]))
