"""The run's key settings and its best validation score, for loggers' hyperparameter views."""

from __future__ import annotations

import math
import os
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only

from mvcli.callbacks.distributed import effective_batch
from mvcli.callbacks.freezing import StageFreezing
from mvcli.task.schedulers import GroupFactorLR, inner_scheduler

MONITOR = "val/leaderboard"
METRICS = ("hp_metric", "hp/best_val_leaderboard", "hp/best_epoch")


class RunHParams(Callback):
    """Logs the hyperparameters once per fit, with the run's best ``val/leaderboard`` as metric.

    The parameters are the model's and data's (``model.*``, ``data.*``) plus the settings that
    live elsewhere: optimizer and LR, scheduler, accumulation, precision, freezing, seed. The
    metrics ``hp_metric`` / ``hp/best_val_leaderboard`` (best so far) and ``hp/best_epoch``
    are updated after every validation, so TensorBoard's HParams tab compares runs by them.
    The CLI turns Lightning's own hyperparameter logging off (``trainer.enable_autolog_hparams``)
    since this callback logs a superset, once.
    """

    def __init__(self) -> None:
        self.best: float | None = None
        self.best_epoch: int | None = None

    @rank_zero_only
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        params = run_settings(trainer, pl_module)
        initial = self._metrics()
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                # The metrics named here are what the HParams tab shows for the run.
                logger.log_hyperparams(params, metrics=initial)
            else:
                logger.log_hyperparams(params)
            logger.save()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        score = trainer.callback_metrics.get(MONITOR)
        if score is None or not math.isfinite(float(score)):
            return
        if self.best is None or float(score) > self.best:
            self.best, self.best_epoch = float(score), trainer.current_epoch
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(self._metrics(), step=trainer.global_step)

    def _metrics(self) -> dict[str, float]:
        best = math.nan if self.best is None else self.best
        epoch = math.nan if self.best_epoch is None else float(self.best_epoch)
        return dict(zip(METRICS, (best, best, epoch), strict=True))

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")
        self.best_epoch = state_dict.get("best_epoch")


def run_settings(trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
    """Flat ``name -> value`` of the model, the data and the key settings of the trainer."""
    model = dict(pl_module.hparams_initial)
    datamodule = getattr(trainer, "datamodule", None)
    data = dict(getattr(datamodule, "hparams_initial", {}) or {})
    # Keys with a leading underscore are Lightning's bookkeeping, not settings: _class_path,
    # and _instantiator (LightningCLI's, for load_from_checkpoint; checkpoints keep it).
    params: dict[str, Any] = {
        **{f"model/{k}": v for k, v in model.items() if not k.startswith("_")},
        **{f"data/{k}": v for k, v in data.items() if not k.startswith("_")},
    }
    optimizer = trainer.optimizers[0] if trainer.optimizers else None
    if optimizer is not None:
        params["optimizer"] = type(optimizer).__name__
        for group in optimizer.param_groups:
            name = group.get("name", "group")
            params[f"lr/{name}"] = group.get("initial_lr", group["lr"])
        params["weight_decay"] = optimizer.param_groups[0].get("weight_decay")
    params["lr_scheduler"] = _scheduler(trainer)
    params["batch_size"] = data.get("batch_size")
    params["accumulate_grad_batches"] = trainer.accumulate_grad_batches
    params["effective_batch_size"] = effective_batch(trainer, data.get("batch_size") or 0)
    params["precision"] = trainer.precision
    params["devices"] = trainer.world_size
    params["freezing"] = _freezing(trainer)
    params["sampler"] = data.get("sampler", "n/a")
    params["seed"] = os.environ.get("PL_GLOBAL_SEED", "unset")
    params["max_epochs"] = trainer.max_epochs
    return params


def _scheduler(trainer: Trainer) -> str:
    """The configured scheduler(s), not mvcli's per-group LR factor wrapper around them."""
    names = []
    for config in trainer.lr_scheduler_configs:
        scheduler = inner_scheduler(config.scheduler)
        if not isinstance(scheduler, GroupFactorLR):  # a bare GroupFactorLR: no schedule set
            names.append(type(scheduler).__name__)
    return "+".join(names) or "none"


def _freezing(trainer: Trainer) -> str:
    """The freezing strategy's class (``NoFreezing``, ``GradualFreezing``, ...)."""
    strategies = [type(c).__name__ for c in trainer.callbacks if isinstance(c, StageFreezing)]
    return "+".join(strategies) or "none"
