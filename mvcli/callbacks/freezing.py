"""Backbone freezing strategies, one callback class each (the ``freezing:`` section, chosen by
``class_path``): NoFreezing, FixedFreezing, GradualFreezing, AdaptiveFreezing and
AdvancedFreezing, sharing StageFreezing.

The stages are the module's backbone stages (stem first, deepest last: stem..layer4 for the
3D ResNets, block groups for S3D/MViT/Swin). Every stage is a parameter group of the
optimizer from the start (``backbone.<stage>``, see ``MVFoulModule.configure_optimizers``).
A frozen stage has ``requires_grad`` False, its batch norm layers in eval mode (unless
``train_bn``) and an LR factor of 0; an unfrozen stage trains (batch norm included) and its
LR factor rises linearly from 0 to 1 over ``warmup_epochs``. The factors multiply whatever the
configured LR scheduler gives each group: they are set on the module's
``mvcli.task.schedulers.GroupFactorLR`` (found in ``trainer.lr_scheduler_configs``).

The freezing callback runs first at every hook (``mvcli.cli`` puts the ``freezing`` section's
callback at the head of the trainer's callbacks), so the LearningRateMonitor, the checkpoint
callbacks and the others see the freezing state and LRs of the step they run at.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Literal

import torch
from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveInt
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, WeightAveraging
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from mvcli.commandline.limits import UnitIntervalClosedOpen
from mvcli.task.schedulers import GroupFactorLR
from mvcli.utils.compat import BatchNormBase, rewrap_ddp


class StageFreezing(Callback, ABC):
    """What every strategy shares: which stages are unfrozen, their batch norm modes and LR
    factors, resume. A subclass says when a stage is unfrozen (:meth:`to_unfreeze`).

    Lightning's BaseFinetuning/BackboneFinetuning add a parameter group when a stage thaws;
    this creates every group up front (LR factor 0), so a resume restores the optimizer exactly.

    Args:
        warmup_epochs: a newly unfrozen stage's LR rises linearly from 0 to its scheduled
            value over this many epochs (counted in optimizer steps; 0: no warmup).
        train_bn: batch norm layers of frozen stages train too (affine parameters at the
            stage's LR, running statistics updated); by default they stay in eval mode with
            frozen statistics. Unfrozen stages always train their batch norm.
    """

    def __init__(self, warmup_epochs: NonNegativeFloat = 1.0, train_bn: bool = False) -> None:
        self.warmup_epochs = warmup_epochs
        self.train_bn = train_bn
        # Freezing state (saved in checkpoints).
        self.unfrozen: list[int] = []  # stage indices, in unfreezing order
        self.unfrozen_at: dict[int, int] = {}  # stage -> global step of its (last) unfreezing
        self.history: list[dict[str, Any]] = []
        # Run-time structures.
        self._names: list[str] = []
        self._params: list[list[nn.Parameter]] = []
        self._module: LightningModule | None = None

    @property
    def state_key(self) -> str:
        return "BackboneFreezing"  # one freezing callback per run, whatever its class

    # -- structure -----------------------------------------------------------------------------
    @property
    def stage_names(self) -> list[str]:
        return list(self._names)

    def frozen_stages(self) -> list[int]:
        return [i for i in range(len(self._names)) if i not in self.unfrozen]

    def batch_norms(self, i: int) -> list[BatchNormBase]:
        """Stage ``i``'s batch norm layers, looked up now: a strategy may have replaced them
        (DDP's ``sync_batchnorm`` swaps them for SyncBatchNorm layers after ``setup``)."""
        stage = self._module.backbone_stages[i]
        return [m for m in stage.modules() if isinstance(m, BatchNormBase)]

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not getattr(pl_module, "backbone_stages", None):
            raise ValueError(f"freezing: {type(self).__name__} needs the module's backbone stages")
        stages = pl_module.backbone_stage_parameters()
        self._module = pl_module
        self._names, self._params = list(stages), list(stages.values())
        for i in range(len(self._names)):
            self._apply(i)
        # The LR factors reach the scheduler configure_optimizers builds at on_fit_start.

    # -- freezing state -> the module ----------------------------------------------------------
    def _apply(self, i: int) -> None:
        """Stage ``i``'s requires_grad, from the freezing state."""
        trainable = i in self.unfrozen
        bn_params = {id(p) for m in self.batch_norms(i) for p in m.parameters()}
        for p in self._params[i]:
            p.requires_grad = trainable or (self.train_bn and id(p) in bn_params)

    def _factor(self, trainer: Trainer, i: int) -> float:
        if i in self.unfrozen:
            return self._ramp(trainer, i)
        return 1.0 if self.train_bn else 0.0  # train_bn: batch norm trains at the stage LR

    def _ramp(self, trainer: Trainer, i: int) -> float:
        batches = trainer.num_training_batches
        per_epoch = (
            1
            if not math.isfinite(batches)
            else math.ceil(batches / trainer.accumulate_grad_batches)
        )
        total = self.warmup_epochs * max(1, per_epoch)
        if total <= 0:
            return 1.0
        return min(1.0, (trainer.global_step - self.unfrozen_at.get(i, 0) + 1) / total)

    def _set_bn_modes(self) -> None:
        # Lightning's evaluation loop restores the modes it found, and a resumed run starts
        # with everything in train mode: set them at every batch.
        for i in range(len(self._names)):
            training = self.train_bn or i in self.unfrozen
            for bn in self.batch_norms(i):
                bn.train(training)

    def _refresh_lrs(self, trainer: Trainer) -> None:
        """Each stage's LR factor, brought to the optimizer (through the GroupFactorLR of the
        module's ``configure_optimizers``)."""
        factors = {
            self._module.stage_group(name): self._factor(trainer, i)
            for i, name in enumerate(self._names)
        }
        for config in trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, GroupFactorLR):
                for group, factor in factors.items():
                    config.scheduler.set_factor(group, factor)
                config.scheduler.apply()

    # -- unfreezing ----------------------------------------------------------------------------
    @abstractmethod
    def to_unfreeze(self, trainer: Trainer, epoch: int) -> list[int]:
        """Stages to unfreeze at the start of ``epoch`` (the same on every process)."""

    def unfreeze(self, trainer: Trainer, i: int, epoch: int) -> None:
        self.unfrozen.append(i)
        self.unfrozen_at[i] = trainer.global_step
        self._apply(i)
        self._record(epoch, "unfreeze", i)

    def _record(self, epoch: int, event: str, i: int) -> None:
        self.history.append({"epoch": epoch, "event": event, "stage": self._names[i]})
        name = type(self).__name__
        rank_zero_info(f"freezing ({name}): epoch {epoch}: {event} {self._names[i]}")

    # -- hooks ---------------------------------------------------------------------------------
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After the strategy's setup and the callback state's restore: a resumed run's
        # unfrozen stages train again (and join DDP's gradient sync).
        for i in range(len(self._names)):
            self._apply(i)
        self._refresh_lrs(trainer)
        if self.unfrozen:
            rewrap_ddp(trainer)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        changed = self.update(trainer, trainer.current_epoch)
        if changed:
            rewrap_ddp(trainer)
        self._set_bn_modes()
        self._refresh_lrs(trainer)

    def update(self, trainer: Trainer, epoch: int) -> bool:
        """Apply this epoch's freezing decisions; whether the trainable parameters changed."""
        due = self.to_unfreeze(trainer, epoch)
        for i in due:
            self.unfreeze(trainer, i, epoch)
        return bool(due)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._set_bn_modes()
        self._refresh_lrs(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        unfrozen = float(len(self.unfrozen))
        pl_module.log("freezing/unfrozen_stages", unfrozen, on_step=False, on_epoch=True)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "strategy": type(self).__name__,
            "unfrozen": list(self.unfrozen),
            "unfrozen_at": dict(self.unfrozen_at),
            "history": list(self.history),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("strategy", type(self).__name__)
        if saved != type(self).__name__:
            rank_zero_warn(
                f"freezing: checkpoint was trained with {saved}, this run uses "
                f"{type(self).__name__}; the checkpoint's unfrozen stages stay unfrozen"
            )
        self.unfrozen = list(state_dict.get("unfrozen", []))
        self.unfrozen_at = {int(k): v for k, v in state_dict.get("unfrozen_at", {}).items()}
        self.history = list(state_dict.get("history", []))


class NoFreezing(StageFreezing):
    """No freezing: every stage trains from the start, at its scheduled LR (the default)."""

    def __init__(self) -> None:
        super().__init__(warmup_epochs=0.0, train_bn=True)

    # Nothing to do at any hook: every parameter of a fresh module requires grad.
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        pass

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pass

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pass

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        pass

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pass

    def to_unfreeze(self, trainer: Trainer, epoch: int) -> list[int]:
        return []


class FixedFreezing(StageFreezing):
    """The backbone stays frozen; pooling and heads train.

    Args:
        train_bn: batch norm layers of the backbone train (affine parameters at the backbone
            LR, running statistics updated); by default they stay in eval mode.
    """

    def __init__(self, train_bn: bool = False) -> None:
        super().__init__(warmup_epochs=0.0, train_bn=train_bn)

    def to_unfreeze(self, trainer: Trainer, epoch: int) -> list[int]:
        return []


class GradualFreezing(StageFreezing):
    """The backbone is frozen for ``freeze_epochs`` epochs, then one stage is unfrozen every
    ``unfreeze_every`` epochs, deepest first.

    Args:
        freeze_epochs: epochs with the whole backbone frozen.
        unfreeze_every: epochs between two unfrozen stages.
    """

    def __init__(
        self, freeze_epochs: NonNegativeInt = 2, unfreeze_every: PositiveInt = 2, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.freeze_epochs = freeze_epochs
        self.unfreeze_every = unfreeze_every

    def to_unfreeze(self, trainer: Trainer, epoch: int) -> list[int]:
        if epoch < self.freeze_epochs:
            return []
        due = min(1 + (epoch - self.freeze_epochs) // self.unfreeze_every, len(self._names))
        frozen = self.frozen_stages()
        return frozen[::-1][: max(0, due - len(self.unfrozen))]


class AdaptiveFreezing(StageFreezing):
    """The next stage (deepest first) is unfrozen when ``monitor`` has not improved by
    ``min_delta`` for ``patience`` validations.

    Args:
        monitor: the metric watched.
        mode: whether ``monitor`` improves going up (``max``) or down (``min``).
        patience: validations without improvement before the next stage is unfrozen.
        min_delta: smallest change of ``monitor`` that counts as an improvement (or, for
            AdvancedFreezing's rollback, a decline).
    """

    def __init__(
        self,
        monitor: str = "val/leaderboard",
        mode: Literal["max", "min"] = "max",
        patience: NonNegativeInt = 2,
        min_delta: NonNegativeFloat = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.min_delta = min_delta
        self.best: float | None = None
        self.wait = 0
        self.decline = 0
        self.blocked: list[int] = []  # stages never unfrozen again (rolled back)
        self._warned_missing = False

    def _candidates(self) -> list[int]:
        return [i for i in self.frozen_stages() if i not in self.blocked]

    def choose(self, trainer: Trainer, candidates: list[int]) -> int:
        """The next stage to unfreeze: the deepest frozen one."""
        return candidates[-1]

    def to_unfreeze(self, trainer: Trainer, epoch: int) -> list[int]:
        candidates = self._candidates()
        if self.wait < self.patience or not candidates:
            return []
        self.wait = 0
        return [_broadcast(trainer, self.choose(trainer, candidates))]

    def improved(self, value: float) -> bool:
        sign = 1.0 if self.mode == "max" else -1.0
        return self.best is None or sign * (value - self.best) > self.min_delta

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            if not self._warned_missing:
                rank_zero_warn(f"freezing: metric {self.monitor!r} not logged; nothing unfrozen")
                self._warned_missing = True
            return
        value = float(value)
        if self.improved(value):
            self.best, self.wait, self.decline = value, 0, 0
        else:
            self.wait += 1
            sign = 1.0 if self.mode == "max" else -1.0
            declined = sign * (self.best - value) > self.min_delta
            self.decline = self.decline + 1 if declined else 0

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {
            "best": self.best,
            "wait": self.wait,
            "decline": self.decline,
            "blocked": list(self.blocked),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best = state_dict.get("best")
        self.wait = state_dict.get("wait", 0)
        self.decline = state_dict.get("decline", 0)
        self.blocked = list(state_dict.get("blocked", []))


class AdvancedFreezing(AdaptiveFreezing):
    """Adaptive, but the next stage is the frozen one with the largest gradient importance,
    plus rollback.

    Gradient importance: the RMS gradient of each frozen stage, measured on the first
    ``probe_batches`` training batches of every epoch with the frozen stages temporarily
    requiring grad (never stepped), averaged with ``gradient_momentum``. Rollback: after
    ``rollback_patience`` validations in a row worse than the best by more than
    ``min_delta``, with stages unfrozen since the best, the best checkpoint (the
    ``checkpoint`` callback's, which must monitor the same metric) is loaded back, weights
    and freezing state, and those stages are never unfrozen again.

    Args:
        gradient_momentum: EMA momentum of the gradient importance, in [0, 1).
        probe_batches: training batches per epoch on which frozen stages' gradients are
            measured (0: deepest first, like adaptive).
        rollback_patience: validations of decline before a rollback.
    """

    def __init__(
        self,
        gradient_momentum: UnitIntervalClosedOpen = 0.9,
        probe_batches: NonNegativeInt = 2,
        rollback_patience: PositiveInt = 3,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.gradient_momentum = gradient_momentum
        self.probe_batches = probe_batches
        self.rollback_patience = rollback_patience
        self.importance: dict[int, float] = {}
        self.best_unfrozen: list[int] = []  # the unfrozen stages when ``best`` was reached
        self._probing = False
        # (stage, RMS gradient) measured, still on the device: read when folded into
        # ``importance`` (epoch end, a choice, a checkpoint), not at each probe batch.
        self._probes: list[tuple[int, torch.Tensor]] = []

    # -- rollback ------------------------------------------------------------------------------
    def _checkpoint(self, trainer: Trainer) -> ModelCheckpoint:
        for callback in trainer.checkpoint_callbacks:
            if callback.monitor == self.monitor and callback.mode == self.mode:
                return callback
        raise ValueError(
            f"freezing: AdvancedFreezing rolls back to the best checkpoint by {self.monitor!r} "
            f"({self.mode}): set checkpoint.monitor: {self.monitor} and checkpoint.mode: "
            f"{self.mode} (now: "
            f"{[(c.monitor, c.mode) for c in trainer.checkpoint_callbacks] or 'none'})"
        )

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            self._checkpoint(trainer)  # fail before training, not at the first rollback

    def update(self, trainer: Trainer, epoch: int) -> bool:
        rollback = (
            self.decline >= self.rollback_patience
            and set(self.unfrozen) != set(self.best_unfrozen)
            and bool(self._checkpoint(trainer).best_model_path)
        )
        if _broadcast(trainer, rollback):
            self._rollback(trainer, epoch)
            return True
        return super().update(trainer, epoch)

    def _rollback(self, trainer: Trainer, epoch: int) -> None:
        path = self._checkpoint(trainer).best_model_path
        checkpoint = trainer.strategy.load_checkpoint(path)
        self._module.load_state_dict(checkpoint["state_dict"])
        for callback in trainer.callbacks:
            if isinstance(callback, WeightAveraging):
                # An EMA's checkpoint holds the average as state_dict: the live weights and
                # the average both go back (mvcli.callbacks.ema).
                callback.on_load_checkpoint(trainer, self._module, checkpoint)
        keep = checkpoint["callbacks"][self.state_key]["unfrozen"]
        optimizer = trainer.optimizers[0]
        for i in [i for i in self.unfrozen if i not in keep]:
            self.unfrozen.remove(i)
            self._apply(i)
            for p in self._params[i]:
                optimizer.state.pop(p, None)  # its moments belong to the abandoned weights
            self.blocked.append(i)
            self._record(epoch, "rollback", i)
        self.wait = self.decline = 0
        rank_zero_info(f"freezing (AdvancedFreezing): restored {path}")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        best = self.best
        super().on_validation_end(trainer, pl_module)
        if self.best != best:
            self.best_unfrozen = list(self.unfrozen)

    # -- gradient importance -------------------------------------------------------------------
    def choose(self, trainer: Trainer, candidates: list[int]) -> int:
        self._fold_probes()
        scores = torch.tensor([self.importance.get(i, -1.0) for i in candidates])
        scores = trainer.strategy.reduce(scores.to(trainer.strategy.root_device), reduce_op="mean")
        scores = scores.cpu()
        if (scores < 0).all():
            return candidates[-1]  # nothing measured (probe_batches=0): deepest first
        return candidates[int(scores.argmax())]

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        if batch_idx < self.probe_batches:
            probe = [
                p for i in self.frozen_stages() for p in self._params[i] if not p.requires_grad
            ]
            for p in probe:
                p.requires_grad = True
            self._probing = bool(probe)

    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._probing:
            return
        self._probing = False
        scale = None
        for i in self.frozen_stages():
            grads = [p.grad.detach() for p in self._params[i] if p.grad is not None]
            if grads:
                if scale is None:
                    scale = _grad_scale(trainer, grads[0].device)
                count = sum(g.numel() for g in grads)
                norm = torch.nn.utils.get_total_norm(grads).float()
                self._probes.append((i, norm / math.sqrt(count) / scale))
        self._end_probe()

    def _fold_probes(self) -> None:
        """The measured RMS gradients, in order, into the importance EMA (non-finite ones
        skipped)."""
        probes, self._probes = self._probes, []
        for i, measured in probes:
            value = float(measured)
            if math.isfinite(value):
                old = self.importance.get(i)
                m = self.gradient_momentum
                self.importance[i] = value if old is None else m * old + (1 - m) * value

    def _end_probe(self) -> None:
        for i in self.frozen_stages():
            self._apply(i)
            for p in self._params[i]:
                if not p.requires_grad:
                    p.grad = None  # measured, never stepped

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._probing:  # the probe batch had no backward
            self._probing = False
            self._end_probe()
        self._fold_probes()
        super().on_train_epoch_end(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        self._fold_probes()
        return super().state_dict() | {
            "importance": dict(self.importance),
            "best_unfrozen": list(self.best_unfrozen),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.importance = {int(k): v for k, v in state_dict.get("importance", {}).items()}
        self.best_unfrozen = list(state_dict.get("best_unfrozen", []))


def _broadcast(trainer: Trainer, value):
    """Rank 0's decision, so every process freezes the same stages."""
    return trainer.strategy.broadcast(value, src=0) if trainer.world_size > 1 else value


def _grad_scale(trainer: Trainer, device: torch.device) -> torch.Tensor | float:
    """The fp16 loss scale the gradients carry (a device tensor: ``get_scale()`` would read
    it on the host), or 1."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return 1.0
    return scaler.scale(torch.ones((), device=device))
