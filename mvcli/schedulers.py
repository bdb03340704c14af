"""LR scheduling helpers: a linear warmup in front of any scheduler, and what the module needs
to build schedulers from ``class_path`` callables (total steps, per-group peaks, groups added
by the freezing callback after the scheduler was built)."""

from __future__ import annotations

import functools
import inspect
from typing import Any

from lightning.pytorch.cli import LRSchedulerCallable
from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    ChainedScheduler,
    CyclicLR,
    LRScheduler,
    OneCycleLR,
    ReduceLROnPlateau,
    SequentialLR,
)

# Schedulers stepped per optimizer step by default (lr_interval: auto); others per epoch.
STEP_SCHEDULERS: tuple[type, ...] = (OneCycleLR, CyclicLR)


class LinearWarmup(LRScheduler):
    """Linear LR warmup in front of another scheduler (or of a constant LR).

    For the first ``warmup_steps`` scheduler steps, the LR of every parameter group rises
    linearly from ``start_factor`` times its target to the target: the LR the wrapped
    scheduler starts from. From then on the wrapped scheduler runs from its own first step,
    as if it had been started after the warmup (torch's SequentialLR, but configurable in YAML
    and able to precede ReduceLROnPlateau). A step is what the module's ``lr_interval`` says:
    an epoch or an optimizer step. Under ``mvcli``, a wrapped scheduler that takes
    ``total_steps`` (OneCycleLR) gets the run's total minus the warmup.

    Args:
        optimizer: the optimizer (given by the module).
        scheduler: the scheduler that follows the warmup (``class_path``); None keeps the
            LR constant after the warmup.
        warmup_steps: length of the warmup, in scheduler steps.
        start_factor: LR factor at the first step, in (0, 1].
        last_epoch: torch's resume index; leave at -1.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        scheduler: LRSchedulerCallable | None = None,
        warmup_steps: int = 1,
        start_factor: float = 0.01,
        last_epoch: int = -1,
    ) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if not 0.0 < start_factor <= 1.0:
            raise ValueError(f"start_factor must be in (0, 1], got {start_factor}")
        self.warmup_steps = warmup_steps
        self.start_factor = start_factor
        # Built first: its constructor sets the LRs it starts from, which the warmup reaches.
        self.scheduler = scheduler(optimizer) if scheduler is not None else None
        self.targets = [group["lr"] for group in optimizer.param_groups]
        super().__init__(optimizer, last_epoch)

    def step(self, metrics: Any = None) -> None:  # type: ignore[override]
        self.last_epoch += 1
        t = self.last_epoch
        values = None
        if t < self.warmup_steps:
            factor = self.start_factor + (1.0 - self.start_factor) * t / self.warmup_steps
            values = [target * factor for target in self.targets]
        elif t == self.warmup_steps:
            values = list(self.targets)
        elif isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.step(metrics)
        elif self.scheduler is not None:
            self.scheduler.step()
        if values is not None:
            # Groups added later (unfrozen stages) are not ours: their LR is set by freezing.
            for group, lr in zip(self.optimizer.param_groups, values, strict=False):
                group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "scheduler")}
        state["scheduler"] = self.scheduler.state_dict() if self.scheduler is not None else None
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        inner = state.pop("scheduler", None)
        self.__dict__.update(state)
        if inner is not None and self.scheduler is not None:
            self.scheduler.load_state_dict(inner)


# -- building schedulers from class_path callables -------------------------------------------
def scheduler_class(factory: Any) -> type | None:
    """The class a scheduler callable builds (jsonargparse gives a functools.partial)."""
    if isinstance(factory, type):
        return factory
    if isinstance(factory, functools.partial):
        if isinstance(factory.func, type):
            return factory.func
        return next((a for a in factory.args if isinstance(a, type)), None)
    return None


def final_scheduler_class(factory: Any) -> type | None:
    """The scheduler that sets the pace: the one a LinearWarmup wraps, else the scheduler."""
    cls = scheduler_class(factory)
    inner = _keywords(factory).get("scheduler")
    if cls is not None and issubclass(cls, LinearWarmup) and inner is not None:
        return final_scheduler_class(inner)
    return cls


def _keywords(factory: Any) -> dict[str, Any]:
    return dict(factory.keywords) if isinstance(factory, functools.partial) else {}


def _takes(factory: Any, name: str) -> bool:
    keywords = _keywords(factory)
    if name in keywords:
        return True
    target = scheduler_class(factory) or factory
    try:
        return name in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


def scheduler_kwargs(factory: Any, optimizer: Optimizer, total_steps: int) -> dict[str, Any]:
    """Arguments the module adds when it calls a scheduler callable on its optimizer.

    - ``total_steps`` (OneCycleLR), when the config leaves it (and ``epochs``) unset: the
      run's scheduler steps, from ``trainer.estimated_stepping_batches`` (accumulation,
      ``limit_train_batches``, ``max_steps`` and the number of processes included).
    - a OneCycleLR ``max_lr`` given as one number peaks the first group (the heads) there and
      every other group in proportion to its LR, keeping discriminative LRs.
    - a LinearWarmup passes the same on to the scheduler it wraps, with its warmup steps
      taken off ``total_steps``.
    """
    cls = scheduler_class(factory)
    keywords = _keywords(factory)
    out: dict[str, Any] = {}
    if cls is not None and issubclass(cls, LinearWarmup):
        inner = keywords.get("scheduler")
        if inner is not None:
            warmup = keywords.get("warmup_steps", 1)
            extra = scheduler_kwargs(inner, optimizer, max(1, total_steps - warmup))
            out["scheduler"] = functools.partial(inner, **extra) if extra else inner
        return out
    if _takes(factory, "total_steps") and keywords.get("total_steps") is None:
        if keywords.get("epochs") is None:
            out["total_steps"] = max(1, int(total_steps))
    max_lr = keywords.get("max_lr")
    groups = optimizer.param_groups
    if cls is not None and issubclass(cls, OneCycleLR) and isinstance(max_lr, (int, float)):
        if len(groups) > 1:
            head = groups[0]["lr"]
            out["max_lr"] = [max_lr * group["lr"] / head for group in groups]
    return out


def extend_scheduler_groups(scheduler: Any) -> None:
    """Let a scheduler step an optimizer that gained parameter groups after it was built.

    Several torch schedulers keep per-group state sized when they are built (``base_lrs``,
    ``lr_lambdas``, ``max_lrs``; OneCycleLR's ``initial_lr``/``max_lr`` keys) and zip it
    strictly with the groups at every step, so a group added later (an unfrozen backbone
    stage) makes the next step fail (LambdaLR: ValueError, OneCycleLR: KeyError). The new
    entries copy the first group's; the freezing callback sets those groups' LRs itself.
    """
    if isinstance(scheduler, (SequentialLR, ChainedScheduler)):
        for child in scheduler._schedulers:
            extend_scheduler_groups(child)
    if isinstance(scheduler, LinearWarmup):
        if scheduler.scheduler is not None:
            extend_scheduler_groups(scheduler.scheduler)
        _extend(scheduler.targets, scheduler.optimizer.param_groups, "lr")
    groups = scheduler.optimizer.param_groups
    if isinstance(scheduler, OneCycleLR):
        keys = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")
        for group in groups[1:]:
            for key in keys:
                if key in groups[0]:
                    group.setdefault(key, groups[0][key])
    if not isinstance(scheduler, ReduceLROnPlateau):
        for group in groups:
            group.setdefault("initial_lr", group["lr"])
    for name, key in (("base_lrs", "initial_lr"), ("_last_lr", "lr")):
        values = getattr(scheduler, name, None)
        if isinstance(values, list):
            _extend(values, groups, key)
    for name in ("min_lrs", "max_lrs", "lr_lambdas", "base_momentums", "max_momentums"):
        values = getattr(scheduler, name, None)
        if isinstance(values, list) and 0 < len(values) < len(groups):
            values.extend([values[0]] * (len(groups) - len(values)))


def _extend(values: list, groups: list[dict], key: str) -> None:
    values.extend(group.get(key, group["lr"]) for group in groups[len(values) :])
