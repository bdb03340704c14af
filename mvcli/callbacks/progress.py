"""The progress bar of every run: Rich, without Lightning's ``v_num``."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    """Rich progress bar showing the metrics only; the run's version is in its folder name."""

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items
