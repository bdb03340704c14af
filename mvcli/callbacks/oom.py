"""Out-of-memory recovery: a training batch that does not fit is split, not lost.

When a training step runs out of memory, what it held is freed, the batch is split in halves
(recursively, down to one action) and the halves' gradients are accumulated, each weighted
by its share of the batch, so the optimizer step is the whole batch's (for a loss that is a
mean over actions, up to floating-point rounding). The smaller micro-batch is kept for the
rest of the run (it does not grow back: memory that ran out once, from fragmentation or a
neighbour on the GPU, tends to run out again) and travels in checkpoints. Each event is
logged as a warning and counted in ``train/oom_events``. If one action alone does not fit,
``last.ckpt`` is written and the run stops, naming the settings that lower the memory.

Batch statistics are the one thing a split changes: batch-norm layers in train mode see
micro-batches, not the batch (and dropout draws different masks).

The split happens through the module's declared extension point: OOMRecovery is a
``mvcli.task.module.StepRunner``, set as ``MVFoulModule.step_runner`` for a fit, so the
module's ``training_step`` hands it ``batch_training_step`` and the batch.

Testing without a GPU: ``MVCLI_FAULT_OOM_ABOVE=<n>`` makes the training step raise
``torch.OutOfMemoryError`` whenever a micro-batch holds more than n actions.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import Metric

from mvcli.callbacks.memory import free_memory
from mvcli.callbacks.resume import _clone, _load_metric_state, _metric_state
from mvcli.commandline.outputs import resume_command
from mvcli.utils import compat
from mvcli.utils.checkpoints import save_last_checkpoint
from mvcli.utils.errors import SETTINGS_HINT

FAULT_ENV = "MVCLI_FAULT_OOM_ABOVE"


class OutOfMemoryStop(SystemExit):
    """Even one action per micro-batch runs out of memory (exit status 1, with the message)."""


class OOMRecovery(Callback):
    """Splits training batches that run out of memory and accumulates their gradients.

    Args:
        enabled: on or off; unset: on when training on one CUDA device (multi-process runs
            need every process to take the same steps, so they stop on OOM instead). Needs a
            module with a ``step_runner`` property (MVFoulModule), else it stays off.
    """

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = enabled
        self.micro_batch: int | None = None  # actions per micro-batch since the first OOM
        self.events = 0
        self._active = False
        self._trainer: Trainer | None = None
        self._module: LightningModule | None = None

    # -- wiring ------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        on = self.enabled
        if on is None:
            on = trainer.strategy.root_device.type == "cuda" and trainer.world_size == 1
        elif on and trainer.world_size > 1:
            rank_zero_warn("oom_recovery is off in multi-process training (processes must agree)")
            on = False
        self._active = bool(on)
        if not self._active and _fault_limit() is None:
            return
        if not _runs_steps(pl_module):
            if self._active:
                rank_zero_warn(
                    f"oom_recovery is off: {type(pl_module).__name__} has no `step_runner` "
                    "property (mvcli.task.module.MVFoulModule's extension point)"
                )
            self._active = False
            return
        self._trainer = trainer
        self._module = pl_module
        pl_module.step_runner = self  # the module's declared extension point

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._module is not None and self._module.step_runner is self:
            self._module.step_runner = None
        self._module = None
        self._trainer = None

    def state_dict(self) -> dict[str, Any]:
        return {"micro_batch": self.micro_batch, "events": self.events}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.micro_batch = state_dict.get("micro_batch")
        self.events = int(state_dict.get("events", 0))

    # -- the guarded step (mvcli.task.module.StepRunner) ------------------------------------
    def run_training_step(self, step, batch: Any, batch_idx: int):
        """``step`` (the module's ``batch_training_step``) on ``batch``, split into
        micro-batches as memory requires; the loss whose gradient is the whole batch's."""
        pl_module = self._module
        size = _batch_size(batch)
        if not self._active:  # fault injection alone: fail as a real OOM would
            _inject(size)
            return step(batch, batch_idx)
        if size == 0:
            return step(batch, batch_idx)
        params = [p for p in pl_module.parameters() if p.requires_grad]
        acc = _Accumulator(params, self._trainer)
        self._run(step, pl_module, batch, batch_idx, 0, size, size, acc)
        if self.events:
            pl_module.log("train/oom_events", float(self.events), on_step=True, on_epoch=True,
                          reduce_fx="max", batch_size=size)  # fmt: skip
        return acc.surrogate()

    def _run(self, step, pl_module, batch, batch_idx, lo, hi, total, acc) -> None:
        """Forward and backward of actions [lo, hi) of the batch, split as far as needed."""
        if self.micro_batch is not None and hi - lo > self.micro_batch:
            start = lo
            while start < hi:  # the micro-batch may shrink on the way
                end = min(hi, start + self.micro_batch)
                self._run(step, pl_module, batch, batch_idx, start, end, total, acc)
                start = end
            return
        snapshot = _Snapshot(pl_module, self._trainer)
        failed = False
        try:
            _inject(hi - lo)
            part = _slice(batch, lo, hi, total)  # a new dict: the step may replace its entries
            out = step(part, batch_idx)
            acc.add(out, (hi - lo) / total)
        except torch.OutOfMemoryError:
            failed = True  # handled outside the except block: its traceback holds the tensors
        if not failed:
            return
        part = out = None
        free_memory()
        snapshot.restore()  # metrics and logged sums of the attempt are not counted twice
        self._on_oom(pl_module, hi - lo)
        self._run(step, pl_module, batch, batch_idx, lo, hi, total, acc)

    def _on_oom(self, pl_module: LightningModule, size: int) -> None:
        trainer = self._trainer
        if size <= 1:
            path = save_last_checkpoint(trainer)
            raise OutOfMemoryStop(
                f"mvcli: out of memory with one action per micro-batch (epoch "
                f"{trainer.current_epoch}, step {trainer.global_step})"
                + (f"; progress saved in {path}" if path else "")
                + f". Lower the memory one action needs: {SETTINGS_HINT}; then resume with "
                f"{resume_command(trainer)} (plus the changed settings)."
            )
        self.events += 1
        self.micro_batch = math.ceil(size / 2)
        rank_zero_warn(
            f"out of memory on {size} actions (epoch {trainer.current_epoch}, step "
            f"{trainer.global_step}): splitting into micro-batches of {self.micro_batch} with "
            f"gradient accumulation, kept for the rest of the run (OOM event {self.events})"
        )


class _Accumulator:
    """Sums the weighted gradients of micro-batches; hands Lightning a loss whose gradient is
    that sum (so Lightning's backward, clipping, scaling and optimizer step run unchanged)."""

    def __init__(self, params: list[torch.Tensor], trainer: Trainer) -> None:
        self.params = params
        self.grads: list[torch.Tensor | None] = [None] * len(params)
        self.loss: torch.Tensor | None = None
        self.scaler = getattr(trainer.precision_plugin, "scaler", None)

    def add(self, out, weight: float) -> None:
        loss = out["loss"] if isinstance(out, dict) else out
        if loss is None:
            return  # the step skipped this part (e.g. no readable action)
        scaled = loss * weight
        if self.scaler is not None:  # as Lightning's backward would: no fp16 underflow
            scaled = self.scaler.scale(scaled)
        grads = torch.autograd.grad(scaled, self.params, allow_unused=True)
        if self.scaler is not None:
            # The scale as a device tensor (get_scale() would make the host wait for it).
            inv = 1.0 / self.scaler.scale(torch.ones((), device=loss.device))
            grads = [g * inv if g is not None else None for g in grads]
        for i, g in enumerate(grads):
            if g is not None:
                self.grads[i] = g if self.grads[i] is None else self.grads[i] + g
        value = loss.detach() * weight
        self.loss = value if self.loss is None else self.loss + value

    def surrogate(self) -> torch.Tensor | None:
        if self.loss is None:
            return None  # every micro-batch skipped its step
        pairs = [(p, g) for p, g in zip(self.params, self.grads, strict=True) if g is not None]
        if not pairs:
            return None
        link = sum((p * g).sum() for p, g in pairs)
        # Value: the batch's loss; gradient with respect to each parameter: its summed grads.
        return self.loss + link - link.detach()


class _Snapshot:
    """Metric states and logged running sums before an attempt, to undo a failed one."""

    def __init__(self, pl_module: LightningModule, trainer: Trainer) -> None:
        self.metrics = {
            name: (m, _metric_state(m, to_cpu=False))
            for name, m in pl_module.named_modules()
            if isinstance(m, Metric) and "train" in name
        }
        self.results = {}
        for key, metric in compat.logged_results(trainer).items():
            if getattr(metric, "is_tensor", False):
                state = {k: _clone(v, to_cpu=False) for k, v in metric.metric_state.items()}
                self.results[key] = (metric, state)

    def restore(self) -> None:
        for metric, state in self.metrics.values():
            _load_metric_state(metric, state)
        for metric, state in self.results.values():
            for key, value in state.items():
                setattr(metric, key, value)


def _runs_steps(pl_module: LightningModule) -> bool:
    """Whether the module declares a settable ``step_runner`` (MVFoulModule does)."""
    prop = getattr(type(pl_module), "step_runner", None)
    return isinstance(prop, property) and prop.fset is not None


def _fault_limit() -> int | None:
    value = os.environ.get(FAULT_ENV)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"{FAULT_ENV} must be an integer number of actions, got {value!r}"
        ) from None


def _inject(size: int) -> None:
    limit = _fault_limit()
    if limit is not None and size > limit:
        raise torch.OutOfMemoryError(
            f"{FAULT_ENV}={limit}: injected out-of-memory on a micro-batch of {size} actions"
        )


def _batch_size(batch) -> int:
    if isinstance(batch, dict) and batch.get("video") is not None:
        return len(batch["action_id"])
    return 0


def _slice(batch: dict, lo: int, hi: int, total: int) -> dict:
    """Actions [lo, hi) of a batch dict: per-action tensors and lists are sliced; anything
    else (e.g. the list of dropped actions) goes with the first slice only, so counts add up."""
    part = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == total:
            part[key] = value[lo:hi]
        elif isinstance(value, list) and len(value) == total:
            part[key] = value[lo:hi]
        elif lo == 0:
            part[key] = value
        else:
            part[key] = type(value)() if isinstance(value, list | dict) else value
    return part
