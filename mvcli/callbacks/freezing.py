"""BackboneFreezing: freeze the backbone and unfreeze its stages on a schedule, a plateau or
gradient importance, on Lightning's BaseFinetuning.

The stages are the module's ``backbone_stages`` (stem first, deepest last: stem..layer4 for
the 3D ResNets, block groups for S3D/MViT/Swin). Frozen parameters have ``requires_grad``
False and are in no optimizer group; a stage that is unfrozen joins the optimizer as a group
of its own (``backbone.<stage>``), whose LR is the heads' current LR x the module's
backbone/heads ratio (``model.backbone_lr`` or ``model.backbone_lr_ratio``), ramped linearly
from 0 over ``warmup_epochs``: the LR scheduler (any of them) sets the pace, the callback the
ratio and the ramp, at every batch, before the LearningRateMonitor reads it.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from mvcli.schedulers import extend_scheduler_groups

FreezingStrategy = Literal["none", "fixed", "gradual", "adaptive", "advanced"]
_GROUP_PREFIX = "backbone."


class BackboneFreezing(BaseFinetuning):
    """Backbone freezing strategies (the ``freezing:`` section).

    Args:
        strategy: ``none``: everything trains from the start. ``fixed``: the backbone stays
            frozen (pooling and heads train). ``gradual``: frozen for ``freeze_epochs``
            epochs, then one stage is unfrozen every ``unfreeze_every`` epochs, deepest first.
            ``adaptive``: the next stage (deepest first) is unfrozen when ``monitor`` has not
            improved by ``min_delta`` for ``patience`` validations. ``advanced``: adaptive,
            but the next stage is the frozen one with the largest gradient importance (RMS
            gradient measured on ``probe_batches`` training batches per epoch with the frozen
            stages temporarily requiring grad, averaged with ``gradient_momentum``), plus
            rollback: after ``rollback_patience`` validations in a row worse than the best by
            more than ``min_delta``, with stages unfrozen since the best, the best weights
            and freezing state are restored and those stages are not unfrozen again.
        freeze_epochs: ``gradual``: epochs with the whole backbone frozen.
        unfreeze_every: ``gradual``: epochs between two unfrozen stages.
        monitor: ``adaptive``/``advanced``: the metric watched.
        mode: whether ``monitor`` improves going up (``max``) or down (``min``).
        patience: ``adaptive``/``advanced``: validations without improvement before the next
            stage is unfrozen.
        min_delta: smallest change of ``monitor`` that counts as an improvement (or a decline).
        warmup_epochs: a newly unfrozen stage's LR rises linearly from 0 to its target over
            this many epochs (counted in optimizer steps; 0: no warmup).
        train_bn: batch norm layers of frozen stages train (their affine parameters in the
            ``backbone`` group, running statistics updated); by default they stay in eval mode
            with frozen statistics.
        gradient_momentum: ``advanced``: EMA momentum of the gradient importance.
        probe_batches: ``advanced``: training batches per epoch on which frozen stages'
            gradients are measured (the first ones of the epoch).
        rollback_patience: ``advanced``: validations of decline before a rollback.
    """

    def __init__(
        self,
        strategy: FreezingStrategy = "none",
        freeze_epochs: int = 2,
        unfreeze_every: int = 2,
        monitor: str = "val/leaderboard",
        mode: Literal["max", "min"] = "max",
        patience: int = 2,
        min_delta: float = 0.0,
        warmup_epochs: float = 1.0,
        train_bn: bool = False,
        gradient_momentum: float = 0.9,
        probe_batches: int = 2,
        rollback_patience: int = 3,
    ) -> None:
        super().__init__()
        for name, value in {
            "freeze_epochs": freeze_epochs,
            "patience": patience,
            "min_delta": min_delta,
            "warmup_epochs": warmup_epochs,
            "probe_batches": probe_batches,
        }.items():
            if value < 0:
                raise ValueError(f"freezing.{name} must be >= 0, got {value}")
        if unfreeze_every < 1 or rollback_patience < 1:
            raise ValueError("freezing.unfreeze_every and freezing.rollback_patience must be >= 1")
        if not 0.0 <= gradient_momentum < 1.0:
            raise ValueError(
                f"freezing.gradient_momentum must be in [0, 1), got {gradient_momentum}"
            )
        self.strategy = strategy
        self.freeze_epochs = freeze_epochs
        self.unfreeze_every = unfreeze_every
        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.min_delta = min_delta
        self.warmup_epochs = warmup_epochs
        self.train_bn = train_bn
        self.gradient_momentum = gradient_momentum
        self.probe_batches = probe_batches
        self.rollback_patience = rollback_patience
        # Freezing state (saved in checkpoints).
        self.unfrozen: list[int] = []  # stage indices, in unfreezing order
        self.unfrozen_at: dict[int, int] = {}  # stage -> global step of its (last) unfreezing
        self.blocked: list[int] = []  # stages rolled back, never unfrozen again
        self.best: float | None = None
        self.wait = 0
        self.decline = 0
        self.importance: dict[int, float] = {}
        self.history: list[dict[str, Any]] = []
        self.snapshot: dict[str, Any] | None = None
        # Run-time structures.
        self._stages: list[nn.Module] = []
        self._names: list[str] = []
        self._params: list[list[nn.Parameter]] = []
        self._bns: list[list[_BatchNorm]] = []
        self._probing = False
        self._warned_missing = False

    # -- structure -----------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.strategy != "none"

    @property
    def stage_names(self) -> list[str]:
        return list(self._names)

    def _index_stages(self, pl_module: LightningModule) -> None:
        stages = list(getattr(pl_module, "backbone_stages", None) or [])
        if self.active and not stages:
            raise ValueError(
                f"freezing.strategy={self.strategy!r} needs the module's backbone_stages"
            )
        names = list(getattr(pl_module, "backbone_stage_names", None) or [])
        if len(names) != len(stages):
            names = [f"stage{i}" for i in range(len(stages))]
        params: list[list[nn.Parameter]] = []
        seen: set[int] = set()
        for stage in stages:
            own = [p for p in stage.parameters() if id(p) not in seen]
            seen.update(id(p) for p in own)
            params.append(own)
        # Backbone parameters outside every stage go with the stem, unfrozen last.
        backbone = getattr(getattr(pl_module, "network", None), "backbone", None)
        if backbone is not None and params:
            params[0] += [p for p in backbone.parameters() if id(p) not in seen]
        self._stages, self._names, self._params = stages, names, params
        self._bns = [[m for m in s.modules() if isinstance(m, _BatchNorm)] for s in stages]

    def frozen_stages(self) -> list[int]:
        if not self.active:
            return []
        return [i for i in range(len(self._stages)) if i not in self.unfrozen]

    # -- BaseFinetuning ------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._index_stages(pl_module)
        super().setup(trainer, pl_module, stage)
        if self.active and self in trainer.callbacks:
            # First at every hook: the LearningRateMonitor and other callbacks then see the
            # freezing state and LRs of the step they run at. (Moving an item to the front
            # leaves the items after it in place, so the running hook loop is unaffected.)
            trainer.callbacks.remove(self)
            trainer.callbacks.insert(0, self)

    def freeze_before_training(self, pl_module: LightningModule) -> None:
        if self.active:
            for i in range(len(self._stages)):
                self._freeze_stage(i)

    def _freeze_stage(self, i: int) -> None:
        self.freeze(self._stages[i], train_bn=self.train_bn)
        bn_params = {id(p) for m in self._bns[i] for p in m.parameters()}
        for p in self._params[i]:  # parameters outside the stage modules (with the stem)
            if not (self.train_bn and id(p) in bn_params):
                p.requires_grad = False

    def finetune_function(self, pl_module: LightningModule, epoch: int, optimizer: Optimizer):
        trainer = pl_module.trainer
        if self.strategy in ("none", "fixed"):
            return
        if self.strategy == "gradual":
            if epoch >= self.freeze_epochs:
                due = 1 + (epoch - self.freeze_epochs) // self.unfreeze_every
                while len(self.unfrozen) < min(due, len(self._stages)):
                    self._unfreeze(self.frozen_stages()[-1], trainer, optimizer, epoch)
            return
        rollback = self.strategy == "advanced" and self._rollback_due()
        if _broadcast(trainer, rollback):
            self._rollback(pl_module, optimizer, epoch)
            return
        if self.wait >= self.patience and self.frozen_stages():
            stage = _broadcast(trainer, self._next_stage(trainer))
            if stage is not None:
                self._unfreeze(stage, trainer, optimizer, epoch)
                self.wait = 0

    # -- unfreezing, rollback ------------------------------------------------------------------
    def _next_stage(self, trainer: Trainer) -> int | None:
        candidates = [i for i in self.frozen_stages() if i not in self.blocked]
        if not candidates:
            return None
        if self.strategy != "advanced":
            return candidates[-1]
        scores = torch.tensor([self.importance.get(i, -1.0) for i in candidates])
        scores = trainer.strategy.reduce(scores.to(trainer.strategy.root_device), reduce_op="mean")
        scores = scores.cpu()
        if (scores < 0).all():
            return candidates[-1]  # nothing measured (probe_batches=0): deepest first
        return candidates[int(scores.argmax())]

    def _unfreeze(self, i: int, trainer: Trainer, optimizer: Optimizer, epoch: int) -> None:
        self.make_trainable(self._stages[i])
        for p in self._params[i]:
            p.requires_grad = True
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        new = [p for p in self._params[i] if id(p) not in in_optimizer]
        name = _GROUP_PREFIX + self._names[i]
        if new:
            optimizer.add_param_group({"params": new, "name": name, "lr": 0.0})
            for scheduler in _schedulers(trainer, optimizer):
                extend_scheduler_groups(scheduler)
        self.unfrozen.append(i)
        self.unfrozen_at[i] = trainer.global_step
        self._record(epoch, "unfreeze", i)
        _resync_ddp(trainer)
        self.apply_learning_rates(trainer)

    def _rollback_due(self) -> bool:
        if self.snapshot is None or self.decline < self.rollback_patience:
            return False
        return set(self.unfrozen) != set(self.snapshot["unfrozen"])

    def _rollback(self, pl_module: LightningModule, optimizer: Optimizer, epoch: int) -> None:
        assert self.snapshot is not None
        pl_module.load_state_dict(self.snapshot["state_dict"])
        keep = self.snapshot["unfrozen"]
        for i in [i for i in self.unfrozen if i not in keep]:
            self._freeze_stage(i)
            for p in self._params[i]:
                optimizer.state.pop(p, None)
            self.blocked.append(i)
            self._record(epoch, "rollback", i)
        self.unfrozen = [i for i in self.unfrozen if i in keep]
        self.wait = self.decline = 0
        _resync_ddp(pl_module.trainer)
        self.apply_learning_rates(pl_module.trainer)

    def _record(self, epoch: int, event: str, i: int) -> None:
        self.history.append({"epoch": epoch, "event": event, "stage": self._names[i]})
        rank_zero_info(f"freezing ({self.strategy}): epoch {epoch}: {event} {self._names[i]}")

    # -- learning rates ------------------------------------------------------------------------
    def apply_learning_rates(self, trainer: Trainer) -> None:
        """Set each stage group's LR: heads' LR now x backbone ratio x warmup ramp (0 if
        frozen again)."""
        pl_module = trainer.lightning_module
        for optimizer in trainer.optimizers:
            groups = {g.get("name"): g for g in optimizer.param_groups}
            heads = groups.get("heads", optimizer.param_groups[0])
            base = optimizer.defaults.get("lr", heads["lr"])
            scale = (
                pl_module.backbone_lr_scale(base)
                if hasattr(pl_module, "backbone_lr_scale")
                else 1.0
            )
            for i, name in enumerate(self._names):
                group = groups.get(_GROUP_PREFIX + name)
                if group is None:
                    continue
                ramp = self._ramp(trainer, i) if i in self.unfrozen else 0.0
                group["lr"] = float(heads["lr"]) * scale * ramp

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

    # -- hooks ---------------------------------------------------------------------------------
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._restarting and self.active:
            # The checkpoint's freezing state, before its parameter groups are restored.
            for i in self.unfrozen:
                self.make_trainable(self._stages[i])
                for p in self._params[i]:
                    p.requires_grad = True
            if self.unfrozen:
                _resync_ddp(trainer)
        super().on_fit_start(trainer, pl_module)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for optimizer in trainer.optimizers:  # after the schedulers' state was restored
            for scheduler in _schedulers(trainer, optimizer):
                extend_scheduler_groups(scheduler)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.active:
            return
        super().on_train_epoch_start(trainer, pl_module)
        self._set_bn_modes()
        self.apply_learning_rates(trainer)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self.active:
            return
        self._set_bn_modes()
        self.apply_learning_rates(trainer)
        if self.strategy == "advanced" and batch_idx < self.probe_batches:
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
        scale = _grad_scale(trainer)
        for i in self.frozen_stages():
            grads = [p.grad for p in self._params[i] if p.requires_grad and p.grad is not None]
            if grads:
                squares = sum(float(g.float().pow(2).sum()) for g in grads)
                count = sum(g.numel() for g in grads)
                value = math.sqrt(squares / count) / scale
                if math.isfinite(value):
                    old = self.importance.get(i)
                    m = self.gradient_momentum
                    self.importance[i] = value if old is None else m * old + (1 - m) * value
        for i in self.frozen_stages():
            self._freeze_stage(i)
            for p in self._params[i]:
                if not p.requires_grad:
                    p.grad = None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.strategy not in ("adaptive", "advanced") or trainer.sanity_checking:
            return
        if trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            if not self._warned_missing:
                rank_zero_warn(f"freezing: metric {self.monitor!r} not logged; nothing unfrozen")
                self._warned_missing = True
            return
        value = float(value)
        sign = 1.0 if self.mode == "max" else -1.0
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.wait, self.decline = value, 0, 0
            if self.strategy == "advanced":
                state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
                self.snapshot = {"state_dict": state, "unfrozen": list(self.unfrozen)}
        else:
            self.wait += 1
            self.decline = self.decline + 1 if sign * (self.best - value) > self.min_delta else 0

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._probing:  # the probe batch had no backward (an unreadable batch)
            self._probing = False
            for i in self.frozen_stages():
                self._freeze_stage(i)
        if self.active:
            trainable = float(len(self.unfrozen))
            pl_module.log("freezing/unfrozen_stages", trainable, on_step=False, on_epoch=True)

    def _set_bn_modes(self) -> None:
        if self.train_bn:
            return
        for i in self.frozen_stages():
            for bn in self._bns[i]:
                bn.eval()

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            strategy=self.strategy,
            unfrozen=list(self.unfrozen),
            unfrozen_at=dict(self.unfrozen_at),
            blocked=list(self.blocked),
            best=self.best,
            wait=self.wait,
            decline=self.decline,
            importance=dict(self.importance),
            history=list(self.history),
            snapshot=self.snapshot,
        )
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        saved = state_dict.get("strategy", self.strategy)
        if saved != self.strategy:
            rank_zero_warn(
                f"freezing: checkpoint was trained with strategy {saved!r}, this run uses "
                f"{self.strategy!r}; the checkpoint's unfrozen stages stay unfrozen"
            )
        self.unfrozen = list(state_dict.get("unfrozen", []))
        self.unfrozen_at = {int(k): v for k, v in state_dict.get("unfrozen_at", {}).items()}
        self.blocked = list(state_dict.get("blocked", []))
        self.best = state_dict.get("best")
        self.wait = state_dict.get("wait", 0)
        self.decline = state_dict.get("decline", 0)
        self.importance = {int(k): v for k, v in state_dict.get("importance", {}).items()}
        self.history = list(state_dict.get("history", []))
        self.snapshot = state_dict.get("snapshot")


def _schedulers(trainer: Trainer, optimizer: Optimizer) -> list[Any]:
    return [c.scheduler for c in trainer.lr_scheduler_configs if c.scheduler.optimizer is optimizer]


def _broadcast(trainer: Trainer, value):
    """Rank 0's decision, so every process freezes the same stages."""
    return trainer.strategy.broadcast(value, src=0) if trainer.world_size > 1 else value


def _grad_scale(trainer: Trainer) -> float:
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0


def _resync_ddp(trainer: Trainer) -> None:
    """Re-wrap a DDP model after its trainable parameters changed.

    DistributedDataParallel registers the parameters that require grad when it is built and
    only ever all-reduces those: a stage unfrozen later would silently train apart on each
    process (Lightning-AI/pytorch-lightning#20340). Wrapping again makes it sync them.
    """
    from torch.nn.parallel import DistributedDataParallel

    strategy = trainer.strategy
    if isinstance(getattr(strategy, "model", None), DistributedDataParallel):
        strategy.model = strategy._setup_model(strategy.lightning_module)
        if hasattr(strategy, "_register_ddp_hooks"):
            strategy._register_ddp_hooks()
