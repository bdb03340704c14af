"""Freezing strategies in real fits: requires_grad per stage, parameter groups and their LRs per
epoch, batch norm modes and running statistics of every stage after every epoch, weights left
untouched, rollback, resume (equal to an uninterrupted run) and SyncBatchNorm."""

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
from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm
from lightning.pytorch.strategies import SingleDeviceStrategy

from mvcli.callbacks.freezing import NoFreezing, StageFreezing
from mvcli.cli import main
from mvcli.data.datamodule import MVFoulDataModule
from mvcli.data.sampler import ClassBalancedSampler, group_ids
from tests.conftest import CONF, CONFIGS, REPO, tiny_args

LR = 0.006  # demo.yaml's AdamW lr: the heads' LR


class Recorder(Callback):
    """What the freezing callback left, seen by a later callback at each hook."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []
        self.after_val: list[dict[str, torch.Tensor]] = []
        self.importance: list[dict[int, float]] = []
        self.violations: list[str] = []
        self.bn: list[dict[str, tuple[set[bool], bool]]] = []  # per epoch: modes, stats moved

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
        frozen = set(freezing.frozen_stages()) if freezing is not None else set()
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
        self.importance.append(dict(getattr(_freezing(trainer), "importance", {})))
        start, now = self.epochs[-1]["state"], pl_module.state_dict()
        record = {}
        for name, stage in _stages(pl_module):
            modes = {m.training for m in _bns(stage)}
            prefix = f"network.backbone.{name}."
            stats = [k for k in now if k.startswith(prefix) and "running_" in k]
            moved = any(not torch.equal(start[k], now[k]) for k in stats)
            record[name] = (modes, moved)
        self.bn.append(record)

    def assert_bn_follows_freezing(self, train_bn: bool = False) -> None:
        """Every stage trained its batch norm (train mode, running statistics updated) in
        exactly the epochs it was unfrozen (or always, with train_bn)."""
        assert len(self.bn) == len(self.epochs)
        for epoch, (start, bn) in enumerate(zip(self.epochs, self.bn, strict=True)):
            for name, (modes, moved) in bn.items():
                trains = train_bn or start["trainable"][name] is True
                assert modes == {trains}, (epoch, name, modes)
                assert moved == trains, (epoch, name, moved)

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


def _freezing(trainer) -> StageFreezing | None:
    found = [c for c in trainer.callbacks if isinstance(c, StageFreezing)]
    return None if isinstance(found[0], NoFreezing) else found[0]


def _fit(root: Path, runs: Path, *args: str, overlays=(), callbacks=(), ckpt_path=None):
    configs = [CONFIGS / "demo.yaml", CONF / "fast_fit.yaml", *(CONF / o for o in overlays)]
    stack = [a for c in configs for a in ("--config", str(c))]
    cli = main([*stack, *tiny_args(root, runs), *args], run=False)
    cli.trainer.callbacks.extend(callbacks)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    return cli


def _same(a: dict, b: dict, prefix: str) -> bool:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys, prefix
    return all(torch.equal(a[k], b[k]) for k in keys)


ALL = {"stem": True, "layer1": True, "layer2": True}
NONE = {"stem": False, "layer1": False, "layer2": False}
STAGE_LRS = {f"backbone.{s}": 0.1 * LR for s in ALL}


def test_none_trains_everything_with_discriminative_lr(synthetic_root, tmp_path):
    rec = Recorder()
    cli = _fit(synthetic_root, tmp_path, "--trainer.max_epochs", "2",
               "--model.lr_scheduler", "null", callbacks=[rec])  # fmt: skip
    assert _freezing(cli.trainer) is None  # NoFreezing by default
    assert [e["trainable"] for e in rec.epochs] == [ALL, ALL]
    for epoch in rec.epochs:
        assert epoch["lrs"] == pytest.approx({"heads": LR, **STAGE_LRS})
    groups = cli.trainer.optimizers[0].param_groups
    in_groups = [id(p) for g in groups for p in g["params"]]
    assert sorted(in_groups) == sorted(id(p) for p in cli.model.parameters())  # each once
    assert not rec.violations
    rec.assert_bn_follows_freezing()


def test_fixed_keeps_backbone_and_its_statistics_untouched(synthetic_root, tmp_path):
    rec = Recorder()
    cli = _fit(synthetic_root, tmp_path, "--trainer.max_epochs", "2",
               "--freezing", "FixedFreezing", callbacks=[rec])  # fmt: skip
    assert [e["trainable"] for e in rec.epochs] == [NONE, NONE]
    # Every group exists from the start; frozen stages' at LR 0, the heads' cosine-scheduled.
    for epoch in rec.epochs:
        assert epoch["lrs"] == {"heads": epoch["lrs"]["heads"], **dict.fromkeys(STAGE_LRS, 0.0)}
        assert epoch["lrs"]["heads"] > 0
    final = cli.model.state_dict()
    start = rec.epochs[0]["state"]
    # Weights and batch-norm running statistics of the backbone: unchanged; heads: trained.
    assert _same(start, final, "network.backbone.")
    assert not _same(start, final, "network.heads.")
    assert all(p.requires_grad for p in cli.model.network.heads.parameters())
    assert not rec.violations  # no gradient reached a frozen parameter, batch norm in eval
    rec.assert_bn_follows_freezing()


def test_fixed_with_train_bn(synthetic_root, tmp_path):
    rec = Recorder()
    cli = _fit(synthetic_root, tmp_path, "--trainer.max_epochs", "1",
               "--freezing", "FixedFreezing", "--freezing.train_bn", "true",
               callbacks=[rec])  # fmt: skip
    assert rec.epochs[0]["trainable"] == {"stem": None, "layer1": None, "layer2": None}
    backbone = cli.model.network.backbone
    assert all(p.requires_grad for m in _bns(backbone) for p in m.parameters())
    assert not any(p.requires_grad for n, p in backbone.named_parameters() if "0.weight" in n)
    groups = {g["name"]: g for g in cli.trainer.optimizers[0].param_groups}
    for stage in STAGE_LRS:  # batch norm trains at the backbone LR
        assert groups[stage]["lr"] == pytest.approx(0.1 * groups["heads"]["lr"])
    assert not rec.violations  # batch norm in train mode, as asked
    rec.assert_bn_follows_freezing(train_bn=True)


def test_gradual_unfreezes_deepest_first_with_warmup(synthetic_root, tmp_path):
    rec = Recorder()
    cli = _fit(synthetic_root, tmp_path, "--trainer.max_epochs", "4",
               overlays=["gradual.yaml"], callbacks=[rec])  # fmt: skip
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
    # over 2 epochs = 4 optimizer steps: 1/4 at its first step, then +1/4 per step; 0 while
    # frozen.
    expected_ramps = [
        {},
        {"layer2": 0.25},
        {"layer2": 0.75, "layer1": 0.25},
        {"layer2": 1.0, "layer1": 0.75, "stem": 0.25},
    ]
    for epoch, ramps in zip(rec.epochs, expected_ramps, strict=True):
        lrs = epoch["lrs"]
        assert set(lrs) == {"heads", *STAGE_LRS}
        for stage in ALL:
            ramp = ramps.get(stage, 0.0)
            assert lrs[f"backbone.{stage}"] == pytest.approx(lrs["heads"] * 0.1 * ramp)
    assert rec.epochs[3]["lrs"]["heads"] < rec.epochs[0]["lrs"]["heads"]  # cosine at work
    # The warmup as LearningRateMonitor logged it (at epoch starts, the cosine's interval).
    monitor = next(c for c in cli.trainer.callbacks if isinstance(c, LearningRateMonitor))
    layer2 = monitor.lrs["lr-AdamW/backbone.layer2"]
    heads = monitor.lrs["lr-AdamW/heads"]
    ratios = [b / (0.1 * h) for b, h in zip(layer2, heads, strict=True)]
    assert [round(r, 6) for r in ratios] == [0.0, 0.25, 0.75, 1.0]
    # A stage's weights do not move while it is frozen.
    assert _same(rec.epochs[0]["state"], rec.epochs[3]["state"], "network.backbone.stem.")
    assert not _same(rec.epochs[1]["state"], rec.epochs[3]["state"], "network.backbone.layer2.")
    assert not rec.violations
    rec.assert_bn_follows_freezing()


def test_adaptive_unfreezes_on_plateau(synthetic_root, tmp_path):
    rec = Recorder()
    values = [0.5, 0.6, 0.6, 0.6, 0.7, 0.7]
    cli = _fit(synthetic_root, tmp_path, "--trainer.max_epochs", "6",
               overlays=["adaptive.yaml"], callbacks=[Scripted(values), rec])  # fmt: skip
    # Improvements at epochs 0, 1 and 4; epochs 2 and 3 make the patience of 2: stage layer2
    # unfreezes at the start of epoch 4, and nothing else.
    trainable = [e["trainable"]["layer2"] for e in rec.epochs]
    assert trainable == [False, False, False, False, True, True]
    assert [(h["epoch"], h["stage"]) for h in _freezing(cli.trainer).history] == [(4, "layer2")]
    assert all(e["trainable"]["stem"] is False for e in rec.epochs)
    rec.assert_bn_follows_freezing()


def test_advanced_chooses_by_gradient_and_rolls_back(synthetic_root, tmp_path):
    rec = Recorder()
    values = [0.5, 0.4, 0.3, 0.3, 0.3]
    cli = _fit(synthetic_root, tmp_path, "--trainer.max_epochs", "5",
               overlays=["advanced.yaml"], callbacks=[Scripted(values), rec])  # fmt: skip
    freezing = _freezing(cli.trainer)
    events = [(h["epoch"], h["event"], h["stage"]) for h in freezing.history]
    names = cli.model.backbone_stage_names
    # Epoch 2: the frozen stage with the largest gradient importance (measured on probe batches
    # up to the end of epoch 1) is unfrozen.
    measured = rec.importance[1]
    assert set(measured) == {0, 1, 2}
    first = names[max(measured, key=measured.get)]
    # Epoch 3: two validations in a row worse than the best (epoch 0) with a stage unfrozen
    # since: rollback to the best checkpoint (epoch 0), that stage frozen again and never
    # re-chosen. Epoch 4: patience again; the next stage by importance among the others.
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
    # The weights come from the best checkpoint file, not from a copy in every checkpoint.
    saved = torch.load(cli.trainer.checkpoint_callback.best_model_path, weights_only=False)
    assert set(saved["callbacks"]["BackboneFreezing"]) >= {"unfrozen", "best_unfrozen"}
    assert not any(isinstance(v, dict) and "state_dict" in v
                   for v in saved["callbacks"]["BackboneFreezing"].values())  # fmt: skip
    # Probing left no gradient on frozen parameters and never stepped them.
    assert not rec.violations
    untouched = [n for n in names if n not in (first, second)]
    for name in untouched:
        assert _same(rec.epochs[0]["state"], cli.model.state_dict(), f"network.backbone.{name}.")
    rec.assert_bn_follows_freezing()


def test_advanced_needs_a_checkpoint_on_its_metric(synthetic_root, tmp_path):
    cli = main(["--config", str(CONFIGS / "demo.yaml"), *tiny_args(synthetic_root, tmp_path),
                "--freezing", "AdvancedFreezing", "--freezing.monitor", "val/loss",
                "--freezing.mode", "min"], run=False)  # fmt: skip
    with pytest.raises(ValueError, match="checkpoint.monitor: val/loss"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)


def test_limits_are_checked_at_parse_time(synthetic_root, tmp_path, capsys):
    base = ["--config", str(CONFIGS / "demo.yaml"), *tiny_args(synthetic_root, tmp_path)]
    with pytest.raises(SystemExit):
        main([*base, "--freezing", "GradualFreezing", "--freezing.unfreeze_every", "0"],
             run=False)  # fmt: skip
    assert "unfreeze_every" in capsys.readouterr().err


def test_resume_keeps_freezing_state(synthetic_root, tmp_path):
    first = _fit(synthetic_root, tmp_path, "--trainer.max_epochs", "2", overlays=["gradual.yaml"])
    last = Path(first.trainer.log_dir) / "checkpoints" / "last.ckpt"
    assert last.is_file()
    rec = Recorder()
    resumed = _fit(synthetic_root, tmp_path, "--trainer.max_epochs", "3",
                   overlays=["gradual.yaml"], callbacks=[rec], ckpt_path=str(last))  # fmt: skip
    (epoch2,) = rec.epochs
    assert epoch2["trainable"] == {"stem": False, "layer1": True, "layer2": True}
    # layer2's Adam state came back with the checkpoint; its warmup went on where it was.
    assert epoch2["optimizer_state"]["backbone.layer2"] > 0
    assert epoch2["optimizer_state"]["backbone.stem"] == 0
    assert epoch2["lrs"]["backbone.layer2"] == pytest.approx(epoch2["lrs"]["heads"] * 0.1 * 0.75)
    assert epoch2["lrs"]["backbone.stem"] == 0.0
    history = [(h["epoch"], h["stage"]) for h in _freezing(resumed.trainer).history]
    assert history == [(1, "layer2"), (2, "layer1")]
    rec.assert_bn_follows_freezing()


class SeedEachBatch(Callback):
    """The same random draws at each step whether the run was resumed or not (dropout, flips),
    so a difference can only come from the restored training state. Exact restore of the RNG
    states is another concern: the test takes the sampler's per-epoch seed and every view of
    each action (max pooling: the views' random order does not matter)."""

    def on_train_epoch_start(self, trainer, pl_module):
        torch.manual_seed(1000 + trainer.current_epoch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        torch.manual_seed(1000 * trainer.current_epoch + batch_idx)


def test_resumed_run_matches_uninterrupted_run(synthetic_root, tmp_path):
    """Stages unfrozen before the checkpoint train their batch norm after resume exactly as
    they would have without the interruption (weights and running statistics)."""
    # The part run stops early by max_epochs: a fixed cosine length keeps both schedules equal.
    args = ["--trainer.max_epochs", "3", "--data.sampler", "progressive", "--data.num_views", "4",
            "--model.lr_scheduler.init_args.T_max", "16"]  # fmt: skip
    whole = _fit(synthetic_root, tmp_path / "whole", *args, overlays=["gradual.yaml"],
                 callbacks=[SeedEachBatch()])  # fmt: skip
    part = _fit(synthetic_root, tmp_path / "part", *args, "--trainer.max_epochs", "2",
                overlays=["gradual.yaml"], callbacks=[SeedEachBatch()])  # fmt: skip
    last = Path(part.trainer.log_dir) / "checkpoints" / "last.ckpt"
    resumed = _fit(synthetic_root, tmp_path / "part", *args, overlays=["gradual.yaml"],
                   callbacks=[SeedEachBatch()], ckpt_path=str(last))  # fmt: skip
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert any("running_mean" in k for k in a)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)


class SyncBatchNormSingleDevice(SingleDeviceStrategy):
    """Converts batch norm to SyncBatchNorm in ``setup``, after the callbacks' setup, as
    DDPStrategy does with ``sync_batchnorm: true`` (SyncBatchNorm computes local statistics
    when no process group is initialised, so this runs on one CPU process)."""

    def setup(self, trainer):
        self.model = TorchSyncBatchNorm().apply(self.model)
        super().setup(trainer)


def test_sync_batchnorm_follows_freezing(synthetic_root, tmp_path):
    rec = Recorder()
    strategy = {"class_path": f"{__name__}.SyncBatchNormSingleDevice"}
    cli = _fit(synthetic_root, tmp_path, "--trainer.max_epochs", "2",
               "--trainer.strategy", json.dumps(strategy), overlays=["gradual.yaml"],
               callbacks=[rec])  # fmt: skip
    backbone = cli.model.network.backbone
    assert _bns(backbone) and all(isinstance(m, torch.nn.SyncBatchNorm) for m in _bns(backbone))
    assert [e["trainable"]["layer2"] for e in rec.epochs] == [False, True]
    assert not rec.violations  # frozen stages' SyncBatchNorm layers stayed in eval mode
    rec.assert_bn_follows_freezing()


@pytest.mark.slow
def test_ddp_ranks_stay_in_sync_and_draw_disjoint_shards(synthetic_root, tmp_path):
    """2 CPU processes: stages unfrozen (and rolled back) by the advanced strategy train
    identically on both ranks (DDP is re-wrapped on every change; without it they drift apart),
    and the ranks split each epoch's sampler draw."""
    script = Path(__file__).with_name("ddp_run.py")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, str(script), str(synthetic_root), str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
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


def test_the_cli_puts_freezing_first():
    """Before trainer.callbacks (a LearningRateMonitor there logs the LRs freezing set) and
    the other sections: the order comes from the CLI (FIRST_SECTIONS), fixed at construction."""
    cli = main(["--model.backbone", "tiny", "--freezing", "FixedFreezing",
                "--trainer.callbacks+=LearningRateMonitor"], run=False)  # fmt: skip
    names = [type(c).__name__ for c in cli.trainer.callbacks]
    assert names[:2] == ["FixedFreezing", "LearningRateMonitor"]
