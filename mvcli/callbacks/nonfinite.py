"""Numerical faults: a NaN/inf loss or gradient skips the optimizer step, on every rank.

The decision is reduced across processes (any rank's fault skips the step everywhere), so
DDP replicas never diverge. Skipped steps are counted (``train/nonfinite_steps``); past
``max_steps`` of them the run stops with a checkpoint, naming the action ids of the batches
that caused them, instead of training on garbage.

The decision is the one deliberate host-device synchronisation of a training step in mvcli:
whether to call the optimizer is decided on the host, so the host reads one flag, computed on
the device (losses and gradient norm checked together, reduced across processes there), once
per optimizer step, as AMP's GradScaler does for fp16. Zeroing the update on the device
instead would not skip it: AdamW's moments, step count and weight decay would still move.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from mvcli.callbacks.distributed import gather_lists
from mvcli.commandline.limits import StepLimit
from mvcli.utils.errors import DataError

CHECKPOINT_NAME = "nonfinite.ckpt"
_MAX_NAMED = 20  # action ids named in the message


class NonFiniteError(DataError):
    """Too many optimizer steps had a non-finite loss or gradient."""


class NonFiniteGuard(Callback):
    """Skip optimizer steps whose loss or gradients are not finite; stop past a limit.

    Args:
        max_steps: skipped steps allowed in a run; one more stops it, after saving
            ``nonfinite.ckpt`` next to the other checkpoints (its weights are those before
            the faulty steps: a skipped step changes nothing). -1: never stop.
    """

    def __init__(self, max_steps: StepLimit = 10) -> None:
        self.max_steps = max_steps
        self.skipped = 0
        self.offending: list[str] = []
        self._batch_ids: list[str] = []
        self._losses_finite: torch.Tensor | None = None  # since the last optimizer step
        self._stop = False

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "offending": self.offending}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = state_dict.get("skipped", 0)
        self.offending = list(state_dict.get("offending", []))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # Every batch accumulated into the coming optimizer step.
        ids = batch.get("action_id", []) if isinstance(batch, dict) else []
        self._batch_ids.extend(str(i) for i in ids)

    def on_before_backward(
        self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor
    ) -> None:
        # Every loss accumulated into the coming optimizer step; checked (one device sync)
        # before that step.
        finite = torch.isfinite(loss.detach()).all()
        seen = self._losses_finite
        self._losses_finite = finite if seen is None else seen & finite

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer
    ) -> None:
        ids, self._batch_ids = self._batch_ids, []
        finite, self._losses_finite = self._losses_finite, None
        local = self._faults(trainer, finite, optimizer)
        if trainer.world_size == 1:
            if local is None:
                return
            faults = local
        else:  # every process joins the reduction
            if local is None:
                local = torch.zeros((), dtype=torch.int32, device=pl_module.device)
            faults = trainer.strategy.reduce(local, reduce_op="sum")
        if not bool(faults):  # the one read: see the module docstring
            return
        # No gradient: the optimizer leaves every parameter (and its state) as it was.
        optimizer.zero_grad(set_to_none=True)
        self.skipped += 1
        self.offending.extend(gather_lists(ids if bool(local) else [], trainer.world_size))
        if self.max_steps >= 0 and self.skipped > self.max_steps:
            self._stop = True

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Cumulative over the run; the same on every rank (the decision is reduced).
        pl_module.log("train/nonfinite_steps", float(self.skipped))

    def on_train_batch_end(self, trainer: Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._stop:
            return
        path = Path(_checkpoint_dir(trainer)) / CHECKPOINT_NAME
        trainer.save_checkpoint(path)
        named = list(dict.fromkeys(self.offending))
        more = f" and {len(named) - _MAX_NAMED} more" if len(named) > _MAX_NAMED else ""
        raise NonFiniteError(
            f"training stopped: {self.skipped} optimizer steps had a non-finite (NaN/inf) loss "
            f"or gradient, more than nonfinite.max_steps={self.max_steps}. Batches with action "
            f"ids {named[:_MAX_NAMED]}{more}. The weights before those steps are saved in "
            f"{path}. Check those actions' clips and labels, lower the learning rate or set "
            "trainer.gradient_clip_val; resume with --ckpt_path."
        )

    @staticmethod
    def _faults(
        trainer: Trainer, losses_finite: torch.Tensor | None, optimizer
    ) -> torch.Tensor | None:
        """1 on the device if this process's step is faulty, else 0; None: nothing to check
        (no loss and no gradient)."""
        checks = [] if losses_finite is None else [losses_finite]
        # fp16 loss scaling: inf gradients are the scaler's to skip.
        if getattr(trainer.precision_plugin, "scaler", None) is None:
            grads = [
                p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None
            ]
            if grads:
                # A NaN/inf anywhere makes the total norm non-finite; foreach kernels.
                checks.append(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
        if not checks:
            return None
        return (~torch.stack(checks).all()).to(torch.int32)


def _checkpoint_dir(trainer: Trainer) -> str:
    callback = trainer.checkpoint_callback
    if callback is not None and getattr(callback, "dirpath", None):
        return callback.dirpath
    return trainer.default_root_dir
