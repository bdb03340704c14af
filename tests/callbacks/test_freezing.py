"""BackboneFreezing in real fits: requires_grad per stage, parameter groups and their LRs per
epoch, batch norm modes, weights left untouched, rollback and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor

from mvcli.callbacks.freezing import BackboneFreezing
from mvcli.cli import main
from mvcli.data.datamodule import MVFoulDataModule
from mvcli.data.sampler import ClassBalancedSampler, group_ids
from tests.conftest import CONFIGS, REPO, tiny_args

LR = 0.006  # demo.yaml's AdamW lr: the heads' LR
FAST = [
    "--trainer.limit_train_batches", "2",  # 2 optimizer steps per epoch
    "--trainer.limit_val_batches", "1",
    "--trainer.num_sanity_val_steps", "0",
    "--trainer.enable_progress_bar", "false",
    "--trainer.log_every_n_steps", "1",
    "--model.backbone_lr_ratio", "0.1",
]  # fmt: skip


class Recorder(Callback):
    """What the freezing callback left, seen by a later callback at each hook."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []
        self.after_val: list[dict[str, torch.Tensor]] = []
        self.importance: list[dict[int, float]] = []
        self.violations: list[str] = []

    def on_train_epoch_start(self, trainer, pl_module):
        optimizer = trainer.optimizers[0]
        self.epochs.append(
            {
                "trainable": _trainable(pl_module),
                "lrs": {g["name"]: g["lr"] for g in optimizer.param_groups},
                "state": _copy(pl_module.state_dict()),
                "optimizer_state": {
                    g["name"]: sum(p in optimizer.state for p in g["params"])
                    for g in optimizer.param_groups
                },
            }
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        freezing = _freezing(trainer)
        frozen = set(freezing.frozen_stages())
        for i, (name, stage) in enumerate(_stages(pl_module)):
            if i not in frozen:
                continue
            for p in stage.parameters():
                bn = any(p is q for m in _bns(stage) for q in m.parameters())
                if p.grad is not None and not (freezing.train_bn and bn):
                    self.violations.append(f"{name}: frozen parameter has a gradient")
            for m in _bns(stage):
                if m.training != freezing.train_bn:
                    self.violations.append(f"{name}: batch norm training={m.training}")

    def on_train_epoch_end(self, trainer, pl_module):
        self.importance.append(dict(_freezing(trainer).importance))

    def on_validation_end(self, trainer, pl_module):
        self.after_val.append(_copy(pl_module.state_dict()))


class Scripted(Callback):
    """Logs a scripted metric per epoch, for the plateau-driven strategies to watch."""

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def on_validation_epoch_end(self, trainer, pl_module):
        pl_module.log("scripted", self.values[trainer.current_epoch])


def _stages(module):
    return list(zip(module.backbone_stage_names, module.backbone_stages, strict=True))


def _bns(stage):
    return [m for m in stage.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def _trainable(module) -> dict[str, bool | None]:
    """Stage -> True (all trainable), False (all frozen), None (mixed)."""
    out = {}
    for name, stage in _stages(module):
        flags = {p.requires_grad for p in stage.parameters()}
        out[name] = flags.pop() if len(flags) == 1 else None
    return out


def _copy(state: dict) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def _freezing(trainer) -> BackboneFreezing:
    return next(c for c in trainer.callbacks if isinstance(c, BackboneFreezing))


def _fit(root: Path, runs: Path, *args: str, callbacks=(), ckpt_path=None):
    base = ["--config", str(CONFIGS / "demo.yaml"), *tiny_args(root, runs), *FAST]
    cli = main([*base, *args], run=False)
    cli.trainer.callbacks.extend(callbacks)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    return cli


def _same(a: dict, b: dict, prefix: str) -> bool:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys, prefix
    return all(torch.equal(a[k], b[k]) for k in keys)


ALL = {"stem": True, "layer1": True, "layer2": True}
NONE = {"stem": False, "layer1": False, "layer2": False}


def test_none_trains_everything_with_discriminative_lr(synthetic_root, tmp_path):
    rec = Recorder()
    cli = _fit(synthetic_root, tmp_path, "--trainer.max_epochs", "2",
               "--model.lr_scheduler", "null", callbacks=[rec])  # fmt: skip
    assert [e["trainable"] for e in rec.epochs] == [ALL, ALL]
    for epoch in rec.epochs:
        assert epoch["lrs"] == pytest.approx({"heads": LR, "backbone": 0.1 * LR})
    groups = cli.trainer.optimizers[0].param_groups
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert in_groups == {id(p) for p in cli.model.parameters()}
    assert not rec.violations


def test_fixed_keeps_backbone_and_its_statistics_untouched(synthetic_root, tmp_path):
    rec = Recorder()
    cli = _fit(synthetic_root, tmp_path, "--trainer.max_epochs", "2",
               "--freezing.strategy", "fixed", callbacks=[rec])  # fmt: skip
    assert [e["trainable"] for e in rec.epochs] == [NONE, NONE]
    assert [set(e["lrs"]) for e in rec.epochs] == [{"heads"}, {"heads"}]
    final = cli.model.state_dict()
    start = rec.epochs[0]["state"]
    # Weights and batch-norm running statistics of the backbone: unchanged; heads: trained.
    assert _same(start, final, "network.backbone.")
    assert not _same(start, final, "network.heads.")
    assert all(p.requires_grad for p in cli.model.network.heads.parameters())
    assert not rec.violations  # no gradient reached a frozen parameter, batch norm in eval


def test_fixed_with_train_bn(synthetic_root, tmp_path):
    rec = Recorder()
    cli = _fit(synthetic_root, tmp_path, "--trainer.max_epochs", "1",
               "--freezing.strategy", "fixed", "--freezing.train_bn", "true",
               callbacks=[rec])  # fmt: skip
    assert rec.epochs[0]["trainable"] == {"stem": None, "layer1": None, "layer2": None}
    backbone = cli.model.network.backbone
    assert all(p.requires_grad for m in _bns(backbone) for p in m.parameters())
    assert not any(p.requires_grad for n, p in backbone.named_parameters() if "0.weight" in n)
    groups = {g["name"]: g for g in cli.trainer.optimizers[0].param_groups}
    assert groups["backbone"]["lr"] == pytest.approx(0.1 * groups["heads"]["lr"])
    final = cli.model.state_dict()
    running = [k for k in final if k.startswith("network.backbone.") and "running_mean" in k]
    assert not all(torch.equal(final[k], rec.epochs[0]["state"][k]) for k in running)
    assert not rec.violations  # batch norm in train mode, as asked


def test_gradual_unfreezes_deepest_first_with_warmup(synthetic_root, tmp_path):
    rec = Recorder()
    cli = _fit(synthetic_root, tmp_path, "--trainer.max_epochs", "4",
               "--freezing.strategy", "gradual", "--freezing.freeze_epochs", "1",
               "--freezing.unfreeze_every", "1", "--freezing.warmup_epochs", "2",
               callbacks=[rec])  # fmt: skip
    assert [e["trainable"] for e in rec.epochs] == [
        NONE,
        {"stem": False, "layer1": False, "layer2": True},
        {"stem": False, "layer1": True, "layer2": True},
        ALL,
    ]
    # Once per epoch, one stage per epoch (no double stepping).
    freezing = _freezing(cli.trainer)
    assert [(h["epoch"], h["stage"]) for h in freezing.history] == [
        (1, "layer2"),
        (2, "layer1"),
        (3, "stem"),
    ]
    # Each stage is a group of its own, at 0.1 x the heads' (cosine-scheduled) LR, ramped
    # over 2 epochs = 4 optimizer steps: 1/4 at its first step, then +1/4 per step.
    expected_ramps = [
        {},
        {"layer2": 0.25},
        {"layer2": 0.75, "layer1": 0.25},
        {"layer2": 1.0, "layer1": 0.75, "stem": 0.25},
    ]
    for epoch, ramps in zip(rec.epochs, expected_ramps, strict=True):
        lrs = epoch["lrs"]
        assert set(lrs) == {"heads"} | {f"backbone.{s}" for s in ramps}
        for stage, ramp in ramps.items():
            assert lrs[f"backbone.{stage}"] == pytest.approx(lrs["heads"] * 0.1 * ramp)
    assert rec.epochs[3]["lrs"]["heads"] < rec.epochs[0]["lrs"]["heads"]  # cosine at work
    # The warmup as LearningRateMonitor logged it (at epoch starts, the cosine's interval).
    monitor = next(c for c in cli.trainer.callbacks if isinstance(c, LearningRateMonitor))
    layer2 = monitor.lrs["lr-AdamW/backbone.layer2"]
    heads = monitor.lrs["lr-AdamW/heads"][-len(layer2) :]
    ratios = [b / (0.1 * h) for b, h in zip(layer2, heads, strict=True)]
    assert ratios[0] == pytest.approx(0.25)
    assert sorted(ratios) == ratios and ratios[-1] == pytest.approx(1.0)
    assert [round(r, 6) for r in ratios] == [0.25, 0.75, 1.0]
    # A stage's weights do not move while it is frozen.
    assert _same(rec.epochs[0]["state"], rec.epochs[3]["state"], "network.backbone.stem.")
    assert not _same(rec.epochs[1]["state"], rec.epochs[3]["state"], "network.backbone.layer2.")
    assert not rec.violations


def test_adaptive_unfreezes_on_plateau(synthetic_root, tmp_path):
    rec = Recorder()
    values = [0.5, 0.6, 0.6, 0.6, 0.7, 0.7]
    cli = _fit(synthetic_root, tmp_path, "--trainer.max_epochs", "6",
               "--freezing.strategy", "adaptive", "--freezing.monitor", "scripted",
               "--freezing.patience", "2", "--freezing.min_delta", "0.01",
               callbacks=[Scripted(values), rec])  # fmt: skip
    # Improvements at epochs 0, 1 and 4; epochs 2 and 3 make the patience of 2: stage layer2
    # unfreezes at the start of epoch 4, and nothing else.
    trainable = [e["trainable"]["layer2"] for e in rec.epochs]
    assert trainable == [False, False, False, False, True, True]
    assert [(h["epoch"], h["stage"]) for h in _freezing(cli.trainer).history] == [(4, "layer2")]
    assert all(e["trainable"]["stem"] is False for e in rec.epochs)


def test_advanced_chooses_by_gradient_and_rolls_back(synthetic_root, tmp_path):
    rec = Recorder()
    values = [0.5, 0.4, 0.3, 0.3, 0.3]
    cli = _fit(synthetic_root, tmp_path, "--trainer.max_epochs", "5",
               "--freezing.strategy", "advanced", "--freezing.monitor", "scripted",
               "--freezing.patience", "1", "--freezing.rollback_patience", "2",
               "--freezing.min_delta", "0.01", "--freezing.probe_batches", "2",
               callbacks=[Scripted(values), rec])  # fmt: skip
    freezing = _freezing(cli.trainer)
    events = [(h["epoch"], h["event"], h["stage"]) for h in freezing.history]
    names = cli.model.backbone_stage_names
    # Epoch 2: the frozen stage with the largest gradient importance (measured on probe batches
    # up to the end of epoch 1) is unfrozen.
    measured = rec.importance[1]
    assert set(measured) == {0, 1, 2}
    first = names[max(measured, key=measured.get)]
    # Epoch 3: two validations in a row worse than the best (epoch 0) with a stage unfrozen
    # since: rollback to the epoch-0 weights, that stage frozen again and never re-chosen.
    # Epoch 4: patience again; the next stage by importance among the others.
    remaining = {i: v for i, v in rec.importance[3].items() if names[i] != first}
    second = names[max(remaining, key=remaining.get)]
    assert events == [(2, "unfreeze", first), (3, "rollback", first), (4, "unfreeze", second)]
    assert rec.epochs[2]["trainable"][first] is True
    assert rec.epochs[3]["trainable"][first] is False
    assert rec.epochs[3]["lrs"][f"backbone.{first}"] == 0.0
    assert rec.epochs[4]["trainable"][second] is True
    assert freezing.blocked == [names.index(first)]
    best = rec.after_val[0]
    assert all(torch.equal(best[k], v) for k, v in rec.epochs[3]["state"].items())
    # Probing left no gradient on frozen parameters and never stepped them.
    assert not rec.violations
    untouched = [n for n in names if n not in (first, second)]
    for name in untouched:
        assert _same(rec.epochs[0]["state"], cli.model.state_dict(), f"network.backbone.{name}.")


def test_resume_keeps_freezing_state(synthetic_root, tmp_path):
    gradual = ["--freezing.strategy", "gradual", "--freezing.freeze_epochs", "1",
               "--freezing.unfreeze_every", "1", "--freezing.warmup_epochs", "2"]  # fmt: skip
    first = _fit(synthetic_root, tmp_path, "--trainer.max_epochs", "2", *gradual)
    last = Path(first.trainer.log_dir) / "checkpoints" / "last.ckpt"
    assert last.is_file()
    rec = Recorder()
    resumed = _fit(synthetic_root, tmp_path, "--trainer.max_epochs", "3", *gradual,
                   callbacks=[rec], ckpt_path=str(last))  # fmt: skip
    (epoch2,) = rec.epochs
    assert epoch2["trainable"] == {"stem": False, "layer1": True, "layer2": True}
    assert list(epoch2["lrs"]) == ["heads", "backbone.layer2", "backbone.layer1"]
    # layer2's Adam state came back with the checkpoint; its warmup went on where it was.
    assert epoch2["optimizer_state"]["backbone.layer2"] > 0
    assert epoch2["lrs"]["backbone.layer2"] == pytest.approx(epoch2["lrs"]["heads"] * 0.1 * 0.75)
    history = [(h["epoch"], h["stage"]) for h in _freezing(resumed.trainer).history]
    assert history == [(1, "layer2"), (2, "layer1")]


@pytest.mark.slow
def test_ddp_ranks_stay_in_sync_and_draw_disjoint_shards(synthetic_root, tmp_path):
    """2 CPU processes: stages unfrozen (and rolled back) by the advanced strategy train
    identically on both ranks (DDP is re-wrapped on every change; without it they drift apart),
    and the ranks split each epoch's sampler draw."""
    script = Path(__file__).with_name("ddp_run.py")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, str(script), str(synthetic_root), str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [[json.loads(line) for line in open(tmp_path / f"rank{r}.jsonl")] for r in (0, 1)]
    records = MVFoulDataModule(root=synthetic_root).records("Train")
    seed = 42  # demo.yaml's seed_everything
    for epoch, (a, b) in enumerate(zip(*ranks, strict=True)):
        assert a["sums"] == b["sums"] and a["trainable"] == b["trainable"]
        assert a["groups"] == b["groups"]
        # Disjoint halves of one draw (the wrapper pads the shorter half with one repeat).
        labels = group_ids(
            {h: [getattr(r.labels, h) for r in records] for h in ("offence_severity", "action")},
            "joint",
        )
        sampler = ClassBalancedSampler(labels, progressive_epochs=2, seed=seed)
        sampler.set_epoch(epoch)
        draw = Counter(sampler)
        shards = Counter(a["shard"] + b["shard"])
        assert len(a["shard"]) == len(b["shard"]) == (len(records) + 1) // 2
        assert not draw - shards and sum(shards.values()) - sum(draw.values()) <= 1
        assert a["ids"] == [records[i].action_id for i in a["shard"]]
    unfrozen = [s for r in ranks[0] for s, trainable in r["trainable"].items() if trainable]
    assert unfrozen  # stages were unfrozen (and trained identically on both processes)
