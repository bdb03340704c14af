"""What a multi-process run needs beyond Lightning's DDP: its typed options, the effective
batch, linear LR scaling and a clear exit when another process is lost."""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import Literal

import torch.distributed as dist
from jsonargparse.typing import PositiveFloat, PositiveInt
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from mvcli.utils import compat

LRScaling = Literal["none", "linear"]
# What torch.distributed raises when a peer process vanished or stalled past the timeout.
_LOST_PEER_MARKERS = ("connection closed by peer", "connection reset", "timed out", "timeout")


class DistributedRun(Callback):
    """Options of distributed runs (``--distributed.*``), for one process or many.

    Args:
        timeout: seconds a process waits for the others in a collective (gradient
            all-reduce, barrier, metric sync) before it stops with an error saying it lost
            contact with them; applies to DDP strategies (Lightning's default: 1800).
        find_unused_parameters: let DDP tolerate parameters that get no gradient in a step
            (slower; needed only by models with unused branches); unset: the strategy's own.
        scale_lr: ``linear`` multiplies the optimizer's learning rate (every parameter group,
            schedulers included) by effective batch / ``reference_batch``; an absolute
            ``model.backbone_lr`` is kept as given. ``none`` uses the configured LR as is.
            Through the module's ``lr`` property (read and set, as LR finders do; the
            module's ``configure_optimizers`` builds every group from it), for the fit only.
        reference_batch: the effective batch the configured LR was tuned for (default:
            ``data.batch_size``, i.e. one process without gradient accumulation).
    """

    def __init__(
        self,
        timeout: PositiveFloat | None = None,
        find_unused_parameters: bool | None = None,
        scale_lr: LRScaling = "none",
        reference_batch: PositiveInt | None = None,
    ) -> None:
        self.timeout = timeout
        self.find_unused_parameters = find_unused_parameters
        self.scale_lr = scale_lr
        self.reference_batch = reference_batch
        self._original_lr: float | None = None

    def configure_strategy(self, trainer: Trainer) -> None:
        """Apply the options to the trainer's DDP strategy, before its process group exists
        (through :mod:`mvcli.utils.compat`: a strategy chosen by name, e.g. ``strategy: ddp``, has
        no public setters)."""
        strategy = trainer.strategy
        if not isinstance(strategy, DDPStrategy):
            return
        # torch's SyncBatchNorm refuses CPU modules; the same config still runs on CPU.
        if isinstance(trainer.accelerator, CPUAccelerator) and compat.disable_sync_batchnorm(
            strategy
        ):
            rank_zero_warn("trainer.sync_batchnorm needs GPUs: off on CPU (per-process BN)")
        if self.timeout is not None:
            compat.set_process_group_timeout(strategy, timedelta(seconds=self.timeout))
        if self.find_unused_parameters is not None:
            compat.set_ddp_option(strategy, "find_unused_parameters", self.find_unused_parameters)

    # -- start of fit: effective batch and LR scaling ------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Runs before configure_optimizers (the strategy's setup), so a scaled optimizer
        # factory gives every group and every scheduler the scaled LR from the start.
        if stage != "fit":
            return
        batch = _batch_size(trainer)
        effective = effective_batch(trainer, batch)
        rank_zero_info(
            f"world size {trainer.world_size} ({trainer.num_nodes} node(s) x "
            f"{trainer.num_devices} device(s)); effective batch {effective} = "
            f"{trainer.world_size} processes x batch_size {batch} x "
            f"accumulate_grad_batches {trainer.accumulate_grad_batches}"
        )
        if self.scale_lr == "linear" and _has_lr(pl_module):
            factor = effective / (self.reference_batch or batch)
            rank_zero_info(
                f"linear LR scaling: learning rates x {factor:g} (effective batch {effective} / "
                f"reference batch {self.reference_batch or batch})"
            )
            self._original_lr = pl_module.lr
            pl_module.lr = self._original_lr * factor

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._original_lr is not None:
            pl_module.lr = self._original_lr  # a second fit scales afresh
            self._original_lr = None

    # -- a lost process ------------------------------------------------------------------------
    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        if trainer.world_size > 1 and lost_peer(exception):
            timeout = compat.process_group_timeout(trainer.strategy)
            sys.stderr.write(
                f"mvcli: process {trainer.global_rank} of {trainer.world_size} lost contact "
                "with the other processes (one died or stalled past the timeout of "
                f"{timeout}); stopping this one too. Look for the first error in the other "
                "processes' logs; raise --distributed.timeout if a step legitimately takes "
                f"longer. ({type(exception).__name__}: {str(exception).splitlines()[0][:200]})\n"
            )


def lost_peer(exception: BaseException) -> bool:
    """Whether ``exception`` is torch.distributed failing on a vanished or stalled peer."""
    if isinstance(exception, dist.DistError):
        return True
    return isinstance(exception, RuntimeError) and any(
        marker in str(exception).lower() for marker in _LOST_PEER_MARKERS
    )


def gather_lists(items: list, world_size: int) -> list:
    """Every rank's ``items``, concatenated in rank order (a collective: every rank calls it;
    one process, or no process group: ``items`` as is)."""
    if world_size <= 1 or not dist.is_available() or not dist.is_initialized():
        return items
    gathered: list[list | None] = [None] * world_size
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part or ()]


def effective_batch(trainer: Trainer, batch_size: int) -> int:
    """Samples per optimizer step: processes x batch size x accumulated batches."""
    return trainer.world_size * batch_size * trainer.accumulate_grad_batches


def _batch_size(trainer: Trainer) -> int:
    hparams = getattr(getattr(trainer, "datamodule", None), "hparams", {})
    return int(hparams.get("batch_size") or 1)


def _has_lr(pl_module: LightningModule) -> bool:
    """Whether the module declares a settable ``lr`` property (MVFoulModule does)."""
    prop = getattr(type(pl_module), "lr", None)
    return isinstance(prop, property) and prop.fset is not None
