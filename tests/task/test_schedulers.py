"""Optimizers and schedulers: warmup values by hand, per-group factors composed with every
scheduler, OneCycle's total steps in a real fit with accumulation, plateau through the warmup."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LambdaLR,
    OneCycleLR,
    ReduceLROnPlateau,
    StepLR,
)

from mvcli.cli import main
from mvcli.task.schedulers import (
    GroupFactorLR,
    LinearWarmup,
    final_scheduler_class,
    inner_scheduler,
    scheduler_kwargs,
)
from tests.conftest import CONF, CONFIGS, tiny_args


def _optimizer(groups: int = 2, lr: float = 1.0) -> torch.optim.Optimizer:
    params = [
        {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr * 0.1**i, "name": f"g{i}"}
        for i in range(groups)
    ]
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def _lrs(optimizer) -> list[float]:
    return [g["lr"] for g in optimizer.param_groups]


def test_linear_warmup_then_wrapped_scheduler_by_hand():
    optimizer = _optimizer(groups=1)
    inner = functools.partial(StepLR, step_size=1, gamma=0.5)
    scheduler = LinearWarmup(optimizer, inner, warmup_steps=4, start_factor=0.2)
    seen = [_lrs(optimizer)[0]]
    for _ in range(6):
        optimizer.step()
        scheduler.step()
        seen.append(_lrs(optimizer)[0])
    # 0.2 + 0.8 t / 4 for t < 4; the StepLR's start (1.0) at t = 4; then halving.
    assert seen == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 0.5, 0.25])


def test_linear_warmup_state_round_trip():
    def make():
        opt = _optimizer(groups=1)
        inner = functools.partial(CosineAnnealingLR, T_max=10)
        return opt, LinearWarmup(opt, inner, warmup_steps=2)

    opt, scheduler = make()
    for _ in range(5):
        opt.step()
        scheduler.step()
    state = scheduler.state_dict()
    assert "optimizer" not in state and isinstance(state["scheduler"], dict)
    opt2, resumed = make()
    resumed.load_state_dict(state)
    opt2.param_groups[0]["lr"] = opt.param_groups[0]["lr"]  # as optimizer.load_state_dict does
    for _ in range(3):
        opt.step(), scheduler.step(), opt2.step(), resumed.step()
    assert _lrs(opt2) == pytest.approx(_lrs(opt))


def test_linear_warmup_in_front_of_plateau():
    optimizer = _optimizer(groups=1)
    inner = functools.partial(ReduceLROnPlateau, mode="max", patience=0, factor=0.5)
    scheduler = LinearWarmup(optimizer, inner, warmup_steps=2, start_factor=0.5)
    seen = []
    for metric in [0.1, 0.1, 0.2, 0.2, 0.2]:
        optimizer.step()
        scheduler.step(metric)
        seen.append(_lrs(optimizer)[0])
    # Warmup ignores the metric; then 0.2 is a first best, and each non-improvement halves.
    assert seen == pytest.approx([0.75, 1.0, 1.0, 0.5, 0.25])


FACTORIES = {
    "cosine": functools.partial(CosineAnnealingLR, T_max=10),
    "onecycle": functools.partial(OneCycleLR, max_lr=1.0, total_steps=20),
    "step": functools.partial(StepLR, step_size=2),
    "plateau": functools.partial(ReduceLROnPlateau, mode="max", patience=0),
    "lambda": functools.partial(LambdaLR, lr_lambda=lambda s: 0.9**s),
    "warmup+cosine": functools.partial(
        LinearWarmup, scheduler=functools.partial(CosineAnnealingLR, T_max=10), warmup_steps=2
    ),
    "warmup+onecycle": functools.partial(
        LinearWarmup,
        scheduler=functools.partial(OneCycleLR, max_lr=1.0, total_steps=20),
        warmup_steps=2,
    ),
    "warmup+plateau": functools.partial(
        LinearWarmup,
        scheduler=functools.partial(ReduceLROnPlateau, mode="max", patience=0),
        warmup_steps=2,
    ),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_group_factors_compose_with_every_scheduler(name):
    """A group's LR is the wrapped scheduler's LR times its factor, whatever the factor did
    before (0 while frozen, a ramp, changes between two scheduler steps); the scheduler
    itself runs as if there were no factors."""
    optimizer, twin = _optimizer(groups=3), _optimizer(groups=3)
    factors = {"g1": 0.0}
    scheduler = GroupFactorLR(optimizer, factors, FACTORIES[name](optimizer))
    twin_scheduler = FACTORIES[name](twin)

    def step(opt, sched, metric):
        opt.step()
        sched.step(metric) if "plateau" in name else sched.step()

    metrics = [0.5, 0.6, 0.6, 0.6, 0.6, 0.7, 0.7, 0.7]
    for i, metric in enumerate(metrics):
        factors["g2"] = min(1.0, i / 4)  # a ramp
        if i == 3:
            factors["g1"] = 0.5
        for group, factor in factors.items():  # what the freezing callback does at every batch
            scheduler.set_factor(group, factor)
        scheduler.apply()
        assert scheduler.factors == factors
        expected = [lr * factors.get(f"g{g}", 1.0) for g, lr in enumerate(_lrs(twin))]
        assert _lrs(optimizer) == pytest.approx(expected)
        assert scheduler.get_last_lr() == _lrs(optimizer)
        step(optimizer, scheduler, metric)
        step(twin, twin_scheduler, metric)


def test_group_factors_state_round_trip():
    def make():
        opt = _optimizer(groups=2)
        factors = {"g1": 0.5}
        inner = CosineAnnealingLR(opt, T_max=10)
        return opt, GroupFactorLR(opt, factors, inner)

    opt, scheduler = make()
    for _ in range(3):
        opt.step(), scheduler.step()
    opt2, resumed = make()
    resumed.load_state_dict(scheduler.state_dict())
    for _ in range(3):
        opt.step(), scheduler.step(), opt2.step(), resumed.step()
    assert _lrs(opt2) == pytest.approx(_lrs(opt))


def test_scheduler_kwargs_fill_total_steps_and_per_group_peaks():
    optimizer = _optimizer()  # heads lr 1.0, backbone 0.1
    onecycle = functools.partial(OneCycleLR, max_lr=0.5, total_steps=None, epochs=None)
    kwargs = scheduler_kwargs(onecycle, optimizer, 40)
    assert kwargs == {"total_steps": 40, "max_lr": pytest.approx([0.5, 0.05])}
    given = functools.partial(OneCycleLR, max_lr=0.5, total_steps=None, epochs=3, steps_per_epoch=5)
    assert "total_steps" not in scheduler_kwargs(given, optimizer, 40)
    wrapped = functools.partial(LinearWarmup, scheduler=onecycle, warmup_steps=10)
    inner = scheduler_kwargs(wrapped, optimizer, 40)["scheduler"]
    assert inner.keywords["total_steps"] == 30
    assert final_scheduler_class(wrapped) is OneCycleLR
    assert scheduler_kwargs(functools.partial(StepLR, step_size=2), optimizer, 40) == {}
    # A cosine's length: the run's when unset (after the warmup), the config's when given.
    cosine = functools.partial(CosineAnnealingLR, T_max=None, eta_min=0.0)
    assert scheduler_kwargs(cosine, optimizer, 40) == {"T_max": 40}
    assert scheduler_kwargs(functools.partial(CosineAnnealingLR, T_max=7), optimizer, 40) == {}
    warm = functools.partial(LinearWarmup, scheduler=cosine, warmup_steps=10)
    assert scheduler_kwargs(warm, optimizer, 40)["scheduler"].keywords["T_max"] == 30


def _cli(root, runs, *extra, configs=("demo.yaml",)):
    stack = [a for c in configs for a in ("--config", str(CONFIGS / c))]
    return main([*stack, "--config", str(CONF / "quick_val.yaml"), *tiny_args(root, runs), *extra],
                run=False)  # fmt: skip


def test_onecycle_total_steps_under_accumulation(synthetic_root, tmp_path):
    cli = _cli(synthetic_root, tmp_path,
               "--model.lr_scheduler", "torch.optim.lr_scheduler.OneCycleLR",
               "--model.lr_scheduler.max_lr", "0.01",
               "--trainer.accumulate_grad_batches", "3", "--trainer.limit_train_batches", "5",
               "--trainer.max_epochs", "2")  # fmt: skip
    used = _UsedLRs()
    cli.trainer.callbacks.append(used)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    (config,) = cli.trainer.lr_scheduler_configs
    scheduler = inner_scheduler(config.scheduler)
    assert isinstance(config.scheduler, GroupFactorLR) and isinstance(scheduler, OneCycleLR)
    # 5 batches, an optimizer step every 3 (and at the epoch's end): 2 per epoch, 4 in all.
    assert config.interval == "step"
    assert scheduler.total_steps == 4 == cli.trainer.global_step == len(used.lrs)
    groups = cli.trainer.optimizers[0].param_groups
    stages = ["backbone.stem", "backbone.layer1", "backbone.layer2"]
    assert [g["name"] for g in groups] == ["heads", *stages]
    assert [g["max_lr"] for g in groups] == pytest.approx([0.01] * 4)  # ratio 1 by default
    # The cycle fits the run exactly: its first step at the start LR, its last at the floor.
    assert used.lrs[0] == pytest.approx(groups[0]["initial_lr"])
    assert used.lrs[-1] == pytest.approx(groups[0]["min_lr"])
    assert max(used.lrs) > used.lrs[0]


COSINE_WARMUP = {
    "class_path": "mvcli.task.schedulers.LinearWarmup",
    "init_args": {
        "warmup_steps": 2,
        "scheduler": {
            "class_path": "mvcli.task.schedulers.CosineToEnd",
            "init_args": {"eta_min": 1e-4},
        },
    },
}


@pytest.mark.parametrize(
    ("flags", "interval", "length"),
    [
        # demo.yaml's cosine, without T_max: 3 epochs
        ([], "epoch", 3),
        # per optimizer step: 3 epochs x 4 batches / 2 accumulated
        (["--model.lr_interval", "step", "--trainer.accumulate_grad_batches", "2"], "step", 6),
        # behind a 2-epoch warmup: the cosine gets the 1 epoch left
        (["--model.lr_scheduler", yaml.safe_dump(COSINE_WARMUP)], "epoch", 1),
    ],
    ids=["epoch", "step", "warmup"],
)
def test_cosine_length_follows_the_run(synthetic_root, tmp_path, flags, interval, length):
    """CosineAnnealingLR without T_max ends the run at eta_min, stepped per epoch or per
    optimizer step, alone or behind a LinearWarmup."""
    cli = _cli(synthetic_root, tmp_path, "--model.lr_scheduler.init_args.eta_min", "1e-4",
               "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "4",
               *flags)  # fmt: skip
    used = _UsedLRs()
    cli.trainer.callbacks.append(used)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    (config,) = cli.trainer.lr_scheduler_configs
    cosine = inner_scheduler(config.scheduler)
    assert isinstance(cosine, CosineAnnealingLR) and config.interval == interval
    assert cosine.T_max == length
    heads = cli.trainer.optimizers[0].param_groups[0]
    assert max(used.lrs) == pytest.approx(0.006)  # demo.yaml's lr
    assert used.lrs[-1] > 1e-4  # the last step trained above the floor...
    assert heads["lr"] == pytest.approx(1e-4, abs=1e-12)  # ...which the last step reaches


def test_an_explicit_cosine_length_is_kept(synthetic_root, tmp_path):
    cli = _cli(synthetic_root, tmp_path, "--model.lr_scheduler.init_args.T_max", "10",
               "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "1")  # fmt: skip
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    (config,) = cli.trainer.lr_scheduler_configs
    assert inner_scheduler(config.scheduler).T_max == 10
    lr = cli.trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(0.003 * (1 + math.cos(math.pi * 2 / 10)))  # 2 of 10 epochs


class _UsedLRs(Callback):
    """The heads' LR of every optimizer step."""

    def __init__(self):
        self.lrs: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])


def test_plateau_through_warmup_gets_the_metric(synthetic_root, tmp_path):
    schedule = {
        "class_path": "mvcli.task.schedulers.LinearWarmup",
        "init_args": {
            "warmup_steps": 1,
            "scheduler": {
                "class_path": "torch.optim.lr_scheduler.ReduceLROnPlateau",
                "init_args": {"mode": "max", "patience": 0},
            },
        },
    }
    cli = _cli(synthetic_root, tmp_path, "--model.lr_scheduler", yaml.safe_dump(schedule),
               "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "1")  # fmt: skip
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    (config,) = cli.trainer.lr_scheduler_configs
    assert config.reduce_on_plateau and config.monitor == "val/leaderboard"
    assert inner_scheduler(config.scheduler).best > float("-inf")  # it saw val/leaderboard

    bad = _cli(synthetic_root, tmp_path, "--model.lr_scheduler",
               "torch.optim.lr_scheduler.ReduceLROnPlateau")  # fmt: skip
    bad.model.trainer = bad.trainer
    with pytest.raises(ValueError, match="mode: max"):
        bad.model.configure_optimizers()


@pytest.mark.parametrize(
    ("overlay", "optimizer", "scheduler"),
    [
        (None, "torch.optim.AdamW", "mvcli.task.schedulers.CosineToEnd"),
        ("small_gpu.yaml", "torch.optim.Adam", "mvcli.task.schedulers.LinearWarmup"),
        ("high_performance.yaml", "torch.optim.SGD", "torch.optim.lr_scheduler.OneCycleLR"),
    ],
)
def test_recipes_optimizers_and_clipping(
    synthetic_root, tmp_path, overlay, optimizer, scheduler, torch_hub
):  # torch_hub: mvfoul.yaml loads torchvision weights
    configs = ("mvfoul.yaml",) + ((overlay,) if overlay else ())
    cli = _cli(synthetic_root, tmp_path, configs=configs)
    config = cli.config
    assert config.model.optimizer.class_path == optimizer
    assert config.model.lr_scheduler.class_path == scheduler
    assert cli.trainer.gradient_clip_val == 1.0
    assert cli.trainer.gradient_clip_algorithm == "norm"
    built = cli.model.optimizer([{"params": [torch.nn.Parameter(torch.zeros(1))]}])
    assert type(built).__name__ == optimizer.rsplit(".", 1)[1]


@pytest.mark.parametrize(
    ("flags", "key"),
    [
        (["--model.backbone_lr_ratio", "-1"], "backbone_lr_ratio"),
        (["--model.backbone_lr", "-0.1"], "backbone_lr"),
        (["--model.lr_scheduler", "mvcli.task.schedulers.LinearWarmup",
          "--model.lr_scheduler.start_factor", "0"], "UnitIntervalOpenLeft"),
        (["--model.lr_scheduler", "mvcli.task.schedulers.LinearWarmup",
          "--model.lr_scheduler.warmup_steps", "-1"], "warmup_steps: expected int >= 0"),
    ],
)  # fmt: skip
def test_limits_are_checked_at_parse_time(synthetic_root, tmp_path, capsys, flags, key):
    with pytest.raises(SystemExit):
        _cli(synthetic_root, tmp_path, *flags)
    assert key in capsys.readouterr().err


def test_linear_warmup_keeps_plain_numbers_for_its_checkpoint_state():
    from jsonargparse.typing import NonNegativeInt

    from mvcli.commandline.limits import UnitIntervalOpenLeft

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    warmup = LinearWarmup(
        optimizer, warmup_steps=NonNegativeInt(3), start_factor=UnitIntervalOpenLeft(0.5)
    )
    state = warmup.state_dict()
    assert type(state["warmup_steps"]) is int and type(state["start_factor"]) is float
