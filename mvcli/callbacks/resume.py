"""Exact resume: what a checkpoint needs beyond weights, optimizer, scheduler and loops.

Lightning restores the model, optimizers, schedulers, loop counters and callback states
(freezing included). This callback adds what makes the continuation bit-identical to a run
that was never stopped (CPU, fixed seed):

- the global RNG states (torch, CUDA, numpy, Python) at the moment of the save, put back
  exactly where the uninterrupted run would have been: at the start of the next epoch for an
  epoch-end checkpoint (``last.ckpt``), at the next batch for a mid-epoch one (written on
  SIGTERM/SIGINT by :mod:`mvcli.callbacks.signals`);
- the training data position: the order and per-item random choices are functions of (seed,
  epoch, position) (``mvcli.data.sampler.SeededSampler``); a mid-epoch resume skips the
  batches already trained on (under DDP, in each process's shard: ``ShardedSampler``);
- a mid-epoch resume also restores the epoch's running metric states (torchmetrics) and the
  running sums of the values logged with ``self.log`` (e.g. ``train/loss``), so the epoch's
  figures cover the whole epoch.

Under DDP the checkpoint holds rank 0's RNG states, which every process gets back: the
processes of a run seeded alike draw alike. Limit: a mid-epoch checkpoint taken inside a
gradient-accumulation window does not hold the gradients accumulated so far (epoch-end
checkpoints are exact).
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torchmetrics import Metric

from mvcli.data.sampler import SeededSampler, ShardedSampler
from mvcli.utils import compat

KEY = "mvcli_resume"


class ResumeState(Callback):
    """Saves and restores RNG states, data position and running epoch metrics (see module)."""

    def __init__(self) -> None:
        self._in_epoch = False
        self._pending: dict | None = None  # loaded state, applied at the right moment
        self._pending_results: dict | None = None

    # -- saving ------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._pending is not None and not self._pending["mid_epoch"]:
            self._restart_iterator(trainer, skip=0)
            _set_rng_states(self._pending["rng"])
            self._pending = None
        self._in_epoch = True

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Runs before the checkpoint callbacks (monitoring callbacks come last).
        self._in_epoch = False

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        mid_epoch = self._in_epoch and trainer.training
        state = {"rng": _rng_states(), "mid_epoch": mid_epoch}
        if mid_epoch:
            state["batches_done"] = trainer.fit_loop.epoch_loop.batch_progress.current.completed
            # Summed over the processes (a collective: every process saves a checkpoint's
            # state); put back in rank 0 alone, so the epoch's sync counts each item once.
            state["metrics"] = {
                name: _synced_metric_state(m)
                for name, m in pl_module.named_modules()
                if isinstance(m, Metric) and m.update_count > 0
            }
            state["results"] = _results_state(trainer)
        checkpoint[KEY] = state

    # -- restoring ---------------------------------------------------------------------------
    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._pending = checkpoint.get(KEY)
        if self._pending is not None and self._pending["mid_epoch"]:
            # Lightning cannot see that the training loader is resumed here (on_train_start).
            warnings.filterwarnings(
                "ignore", message="You're resuming from a checkpoint that ended"
            )

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Resumed mid-epoch, Lightning skips on_train_epoch_start: the epoch is under way.
        self._in_epoch = trainer.fit_loop.restarted_mid_epoch
        if self._pending is None or not self._pending["mid_epoch"]:
            return  # an epoch-end state is applied at the next epoch start
        state, self._pending = self._pending, None
        batch_size = _train_batch_size(trainer)
        self._restart_iterator(trainer, skip=state["batches_done"] * batch_size)
        modules = dict(pl_module.named_modules())
        for name, metric_state in state["metrics"].items():
            metric = modules.get(name)
            if not isinstance(metric, Metric):
                continue
            if trainer.global_rank == 0:
                _load_metric_state(metric, metric_state)
            else:
                metric.reset()  # rank 0 holds every process's share of the epoch so far
                compat.restore_update_count(metric, metric_state["update_count"])
        self._pending_results = state["results"]
        _set_rng_states(state["rng"])

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        if self._pending_results is not None:
            # The epoch's logged values exist again once the first step has logged them.
            _add_results_state(trainer, self._pending_results)
            self._pending_results = None

    @staticmethod
    def _restart_iterator(trainer: Trainer, skip: int) -> None:
        """A resumed run builds its training iterator before it knows the epoch: rebuild it
        for the epoch being trained, past the ``skip`` items already trained on."""

        def prepare(loader) -> None:
            compat.set_sampler_epoch(loader, trainer.current_epoch)
            sampler = getattr(loader, "sampler", None)
            if isinstance(sampler, SeededSampler | ShardedSampler):
                sampler.skip = skip  # per process: each trained on as many items

        compat.restart_training_iterator(trainer, prepare)


def _train_batch_size(trainer: Trainer) -> int:
    loader = compat.training_loaders(trainer)[0]
    return int(getattr(loader, "batch_size", None) or 1)


# -- RNG states, in types a weights_only checkpoint load accepts ------------------------------
def _rng_states() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": [version, list(internal), py_gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, py_gauss = states["python"]
    random.setstate((version, tuple(internal), py_gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# -- running epoch metrics --------------------------------------------------------------------
def _metric_state(metric: Metric, to_cpu: bool = True) -> dict[str, Any]:
    """A copy of the metric's state: on the CPU for a checkpoint, where it is for a snapshot
    taken and restored within a step (no device-to-host copy on the hot path)."""
    state = {k: _clone(v, to_cpu) for k, v in metric.metric_state.items()}
    return {"state": state, "update_count": metric.update_count}


def _synced_metric_state(metric: Metric) -> dict[str, Any]:
    """The metric's state summed over the processes of a distributed run (as is in one).

    mvcli's metrics all have sum-reduced states, so rank 0 holding the sum and the other
    processes nothing gives the same epoch value once synced.
    """
    with metric.sync_context():
        return _metric_state(metric)


def _load_metric_state(metric: Metric, saved: dict[str, Any]) -> None:
    for key, value in saved["state"].items():
        current = getattr(metric, key)
        device = current.device if isinstance(current, torch.Tensor) else None
        setattr(metric, key, value.to(device) if device is not None else value)
    compat.restore_update_count(metric, saved["update_count"])


def _clone(value, to_cpu: bool = True):
    if isinstance(value, torch.Tensor):
        return (value.detach().cpu() if to_cpu else value.detach()).clone()
    if isinstance(value, list):
        return [_clone(v, to_cpu) for v in value]
    return value


def _results_state(trainer: Trainer) -> dict[str, dict[str, torch.Tensor]]:
    """Running sums of the values logged with ``self.log(..., on_epoch=True)`` in training."""
    results = compat.logged_results(trainer)
    out = {}
    for key, metric in results.items():
        if getattr(metric, "is_tensor", False) and metric.meta.on_epoch and metric.update_count:
            state = {"value": metric.value.detach().cpu().clone()}
            if metric.meta.is_mean_reduction:
                state["cumulated_batch_size"] = metric.cumulated_batch_size.detach().cpu().clone()
            out[key] = state
    return out


def _add_results_state(trainer: Trainer, saved: dict[str, dict[str, torch.Tensor]]) -> None:
    results = compat.logged_results(trainer)
    for key, state in saved.items():
        metric = results.get(key)
        if metric is None or not metric.is_tensor:
            continue
        value = state["value"].to(metric.value.device)
        if metric.meta.is_max_reduction:
            metric.value = torch.maximum(metric.value, value)
        elif metric.meta.is_min_reduction:
            metric.value = torch.minimum(metric.value, value)
        else:  # mean and sum: running sums, added in the order the uninterrupted run would
            metric.value = value + metric.value
            if metric.meta.is_mean_reduction:
                size = state["cumulated_batch_size"].to(metric.cumulated_batch_size.device)
                metric.cumulated_batch_size = size + metric.cumulated_batch_size
