"""An exponential moving average (EMA) of the weights, through Lightning's ``WeightAveraging``.

The run trains the live weights as usual; after optimizer steps (from ``start_step`` on,
every ``every_n_steps``) the average moves towards them: ``average = decay * average + (1 -
decay) * weights``. Validation (so the monitored
metric and the best-checkpoint choice) runs with the average swapped in, and every checkpoint
holds the average as the model's ``state_dict``, so ``mvcli validate|test|predict|export
--ckpt_path`` use it with or without this callback. The live weights travel beside it
(``current_model_state``) with the average's update count (``averaging_state``): a fit
resumed from any checkpoint (epoch end, mid-epoch on a signal, OOM stop) continues both
exactly. A fit leaves the average in the model (Lightning copies it at the end).

What is averaged: every parameter, those that do not require grad included. A frozen stage
(``mvcli.callbacks.freezing``) does not change, so its average is its value, exactly; once
unfrozen, its average follows it from that value. Floating-point buffers too (batch-norm
running statistics) unless ``use_buffers`` is false, where they are the live ones as of the
last update; integer buffers (``num_batches_tracked``) are always the live values.

DDP: every process holds the same weights after each step (gradients are all-reduced), so
each updates an identical average; checkpoints hold rank 0's. With ``trainer.sync_batchnorm``
(configs/ddp.yaml) the batch-norm statistics are identical too; without it each process has
its own, as it does for the live model.

Not combined with pruning (``mvcli.callbacks.pruning``): the pruned layers' weights change
form mid-run, and an average would bring pruned weights back.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from jsonargparse.typing import NonNegativeInt, OpenUnitInterval, PositiveInt
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelPruning, WeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn

from mvcli.utils import compat
from mvcli.utils.errors import UsageError


class EMAWeights(WeightAveraging):
    """Exponential moving average of the weights, for validation, checkpoints and evaluation.

    The average is a copy of the live weights until ``start_step`` optimizer steps are done
    (so validation and checkpoints before then show the model being trained); from then on,
    every ``every_n_steps`` steps, ``average = decay * average + (1 - decay) * weights``.
    Its memory is about ``every_n_steps / (1 - decay)`` steps (0.999: 1000 steps).

    Args:
        decay: weight of the average at each update, in (0, 1).
        start_step: optimizer steps (``trainer.global_step``) before averaging starts; the
            first steps move the weights furthest from where training ends up.
        every_n_steps: optimizer steps between two updates of the average (counted from
            ``start_step``).
        use_buffers: average the floating-point buffers (batch-norm running statistics) as
            well; false: the average uses the live buffers as of its last update.
        device: where the average is kept, e.g. ``cpu`` to spare accelerator memory (each
            update then copies the weights there); default: the model's device.
    """

    def __init__(
        self,
        decay: OpenUnitInterval = 0.999,
        start_step: NonNegativeInt = 0,
        every_n_steps: PositiveInt = 1,
        use_buffers: bool = True,
        device: str | None = None,
    ) -> None:
        super().__init__(device=device, use_buffers=use_buffers, multi_avg_fn=self.average_into)
        self.decay = float(decay)
        self.start_step = int(start_step)
        self.every_n_steps = int(every_n_steps)
        self.ema = get_ema_multi_avg_fn(self.decay)
        self.following = True  # before start_step: the average copies the live weights
        self.swapped = False  # the module holds the average (validation)

    # -- when and how the average moves -------------------------------------------------------
    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """After optimizer step ``step_idx`` (0-based): every step until ``start_step``, then
        every ``every_n_steps``; never at epoch ends."""
        if step_idx is None:
            return False
        steps = step_idx + 1
        return steps <= self.start_step or (steps - self.start_step) % self.every_n_steps == 0

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.following = trainer.global_step <= self.start_step
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def average_into(
        self, averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: Any
    ) -> None:
        """The update of one group of tensors (one device and dtype), in place."""
        # The average is copied before a "*-true" precision converts the module: it may keep
        # float32 where the live weights are 16-bit.
        current = [c.to(dtype=a.dtype) for a, c in zip(averaged, current, strict=True)]
        if self.following or not averaged[0].is_floating_point():
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)
        else:
            self.ema(averaged, current, num_averaged)

    # -- the fit ------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            pruning = [type(c).__name__ for c in trainer.callbacks if isinstance(c, ModelPruning)]
            if pruning:
                raise UsageError(
                    f"ema: an average of the weights cannot follow pruning ({pruning[0]} in "
                    "trainer.callbacks): pruned weights change form mid-run and the average "
                    "would bring them back; remove the ema section or the pruning callback"
                )
        super().setup(trainer, pl_module, stage)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the average from the weights the fit starts from, unless a checkpoint gave
        one: it was copied in ``setup``, before the module's own setup (class weights)."""
        average = compat.averaged_model(self)
        if average is None or int(average.n_averaged) > 0:
            return
        with torch.no_grad():
            for a, live in zip(_tensors(average.module), _tensors(pl_module), strict=True):
                a.copy_(live)
            average.n_averaged.fill_(1)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_epoch_start(trainer, pl_module)
        self.swapped = compat.averaged_model(self) is not None

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_epoch_end(trainer, pl_module)
        self.swapped = False

    # -- checkpoints --------------------------------------------------------------------------
    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """The average as ``state_dict``, the live weights as ``current_model_state``; outside
        a fit the module's weights as they are (the average, after a fit)."""
        if compat.averaged_model(self) is None:
            return
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self.swapped:  # saved during validation: the two are in each other's place
            checkpoint["state_dict"], checkpoint["current_model_state"] = (
                checkpoint["current_model_state"],
                checkpoint["state_dict"],
            )

    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """In a fit: the live weights and the average back; outside one nothing to do (the
        ``state_dict`` already loaded is the average)."""
        if compat.averaged_model(self) is None:
            return
        super().on_load_checkpoint(trainer, pl_module, checkpoint)


def _tensors(module: torch.nn.Module):
    return itertools.chain(module.parameters(), module.buffers())
