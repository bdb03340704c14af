"""LR scheduling: a linear warmup in front of any scheduler, per-group LR factors on top of
any scheduler (how the freezing callback stops and ramps up backbone stages), and what the
module needs to build schedulers from ``class_path`` callables (total steps, per-group peaks).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any

from jsonargparse.typing import NonNegativeInt, PositiveInt
from lightning.pytorch.cli import LRSchedulerCallable
from torch.optim import Optimizer, lr_scheduler
from torch.optim.lr_scheduler import CyclicLR, LRScheduler, OneCycleLR, ReduceLROnPlateau

from mvcli.commandline.limits import UnitIntervalOpenLeft

# Schedulers stepped per optimizer step by default (lr_interval: auto); others per epoch.
STEP_SCHEDULERS: tuple[type, ...] = (OneCycleLR, CyclicLR)


class CosineToEnd(lr_scheduler.CosineAnnealingLR):
    """torch's CosineAnnealingLR, whose length may be left unset in a config: ``mvcli`` then
    gives it the run's length (the module's ``lr_scheduler``), so the LR reaches ``eta_min``
    on the run's last scheduler step, whatever ``trainer.max_epochs`` is. (torch's own class
    needs ``T_max`` in the config: the command line refuses it without one; a ``T_max`` given
    to either is kept.)

    Args:
        optimizer: the optimizer (given by the module).
        T_max: scheduler steps from the start LR to ``eta_min``; None (left unset): the run's
            epochs, or its optimizer steps when stepped per step, less a LinearWarmup's.
        eta_min: the LR at the end.
        last_epoch: torch's resume index; leave at -1.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        T_max: PositiveInt | None = None,  # noqa: N803 (torch's name)
        eta_min: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if T_max is None:
            raise ValueError(
                "CosineToEnd: T_max is unset; the mvcli module fills it from the run, "
                "elsewhere give it"
            )
        super().__init__(optimizer, T_max, eta_min, last_epoch)


class LinearWarmup(LRScheduler):
    """Linear LR warmup in front of another scheduler (or of a constant LR).

    For the first ``warmup_steps`` scheduler steps, the LR of every parameter group rises
    linearly from ``start_factor`` times its target to the target: the LR the wrapped
    scheduler starts from. From then on the wrapped scheduler runs from its own first step,
    as if it had been started after the warmup (torch's SequentialLR, but configurable in YAML
    and able to precede ReduceLROnPlateau). A step is what the module's ``lr_interval`` says:
    an epoch or an optimizer step. Under ``mvcli``, a wrapped scheduler that takes
    ``total_steps`` (OneCycleLR) or ``T_max`` (CosineAnnealingLR) left unset gets the run's
    total minus the warmup.

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
        warmup_steps: NonNegativeInt = 1,
        start_factor: UnitIntervalOpenLeft = 0.01,
        last_epoch: int = -1,
    ) -> None:
        self.warmup_steps = int(warmup_steps)  # plain numbers in checkpoints (weights_only)
        self.start_factor = float(start_factor)
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
            for group, lr in zip(self.optimizer.param_groups, values, strict=True):
                group["lr"] = lr

    def get_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        return self.get_lr()

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


class GroupFactorLR(LRScheduler):
    """Per-group LR factors on top of another scheduler (or of a constant LR).

    Each parameter group's LR is the LR ``scheduler`` gives it times its factor (1 for a
    group without one). The factors are this scheduler's own, changed through
    :meth:`set_factor`: the freezing callback keeps a frozen stage's group at 0 and ramps a
    newly unfrozen one from 0 to 1 (it finds this scheduler in
    ``trainer.lr_scheduler_configs``). :meth:`apply` brings changed factors to the optimizer
    between two steps of the wrapped scheduler, so a ramp counted in optimizer steps also
    works under a scheduler stepped per epoch. The wrapped scheduler always sees
    the LRs it set itself (unscaled), so recursive schedulers (StepLR, cosine,
    ReduceLROnPlateau, LinearWarmup) and closed forms (OneCycleLR, LambdaLR) compose alike.

    Args:
        optimizer: the optimizer; its groups are all there from the start.
        factors: the initial factors, group name -> LR factor (copied; None: none).
        scheduler: the scheduler that sets the pace, already built on ``optimizer``; None:
            constant LRs.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        factors: Mapping[str, float] | None = None,
        scheduler: LRScheduler | ReduceLROnPlateau | None = None,
    ) -> None:
        self._factors = dict(factors or {})
        self.scheduler = scheduler
        self.scheduled = [group["lr"] for group in optimizer.param_groups]
        super().__init__(optimizer)  # calls step() once: applies the factors

    def step(self, metrics: Any = None) -> None:  # type: ignore[override]
        self.last_epoch += 1
        if self.last_epoch > 0 and self.scheduler is not None:
            for group, lr in zip(self.optimizer.param_groups, self.scheduled, strict=True):
                group["lr"] = lr
            # Lightning passes the monitored value to reduce-on-plateau schedulers only.
            self.scheduler.step() if metrics is None else self.scheduler.step(metrics)
            self.scheduled = [group["lr"] for group in self.optimizer.param_groups]
        self.apply()

    @property
    def factors(self) -> dict[str, float]:
        """The current factors, group name -> LR factor (a copy)."""
        return dict(self._factors)

    def set_factor(self, group: str, factor: float) -> None:
        """The LR factor of parameter group ``group`` (its ``name``), from the next
        :meth:`apply` or :meth:`step` on."""
        self._factors[group] = factor

    def apply(self) -> None:
        """Set every group's LR to its scheduled LR times its current factor."""
        for group, lr in zip(self.optimizer.param_groups, self.scheduled, strict=True):
            group["lr"] = lr * self._factors.get(group.get("name"), 1.0)

    def get_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        return self.get_lr()

    def state_dict(self) -> dict[str, Any]:
        inner = self.scheduler.state_dict() if self.scheduler is not None else None
        return {"last_epoch": self.last_epoch, "scheduled": list(self.scheduled), "inner": inner}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_epoch = state_dict["last_epoch"]
        self.scheduled = list(state_dict["scheduled"])
        if state_dict.get("inner") is not None and self.scheduler is not None:
            self.scheduler.load_state_dict(state_dict["inner"])


def inner_scheduler(scheduler: Any) -> Any:
    """The scheduler a GroupFactorLR (and then a LinearWarmup) wraps, else ``scheduler``."""
    while isinstance(scheduler, (GroupFactorLR, LinearWarmup)) and scheduler.scheduler is not None:
        scheduler = scheduler.scheduler
    return scheduler


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
    - ``T_max`` (CosineAnnealingLR), when the config leaves it unset: ``total_steps`` too,
      so the cosine ends at ``eta_min`` on the run's last scheduler step (``total_steps`` is
      the run's epochs for a scheduler stepped per epoch, its optimizer steps otherwise).
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
    if _takes(factory, "T_max") and keywords.get("T_max") is None:
        out["T_max"] = max(1, int(total_steps))
    max_lr = keywords.get("max_lr")
    groups = optimizer.param_groups
    if cls is not None and issubclass(cls, OneCycleLR) and isinstance(max_lr, (int, float)):
        if len(groups) > 1:
            head = groups[0]["lr"]
            out["max_lr"] = [max_lr * group["lr"] / head for group in groups]
    return out
