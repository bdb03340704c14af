"""Lightning's LR finder as a callback, with the suggestion applied the mvcli way."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateFinder as _LearningRateFinder

from mvcli.utils import compat


class LearningRateFinder(_LearningRateFinder):
    """Runs the LR range test when fit starts; with ``update_attr`` the suggestion becomes
    the heads' LR (``model.lr``, the optimizer's ``lr``) and the optimizer and scheduler are
    built again from it, so every parameter group keeps its LR ratio (``backbone_lr_ratio``)
    and the scheduler starts from the new LRs. (Lightning's own class sets every group to the
    suggestion and leaves the scheduler's base LRs as they were.)

    Args: those of ``lightning.pytorch.callbacks.LearningRateFinder``.
    """

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if compat.lr_finder_updates_attr(self) and self.optimal_lr is not None:
            if self.optimal_lr.suggestion() is not None:
                trainer.strategy.setup_optimizers(trainer)
