"""What the model sees: a grid of the first training batch, augmented, at the start of fit."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torchvision.utils import make_grid, save_image

from mvcli.commandline.outputs import log_folder

PREVIEW_FILE = "augmented_batch.png"


class AugmentationPreview(Callback):
    """Writes one augmented training batch as an image grid: one row per action, the first,
    middle and last frame of each view side by side (padded views left black), to
    ``<log dir>/augmented_batch.png`` and to TensorBoard (``augmentation/batch``).

    Args:
        max_actions: rows of the grid (actions of the batch shown).
    """

    def __init__(self, max_actions: int = 8) -> None:
        self.max_actions = max_actions
        self.done = False

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: dict, batch_idx: int
    ) -> None:
        # The batch arrives here transferred and augmented (on_after_batch_transfer ran).
        if self.done or trainer.fast_dev_run or trainer.sanity_checking:
            return
        self.done = True
        if batch.get("video") is not None:
            # trainer.log_dir is a broadcast under DDP: asked here, on every rank, never in
            # the rank-zero-only writer (rank 0 alone in a collective hangs the run).
            folder = log_folder(trainer)
            self._write(trainer, batch["video"], folder)

    @rank_zero_only
    def _write(self, trainer: Trainer, video: torch.Tensor, folder: Path) -> None:
        grid = preview_grid(video[: self.max_actions])
        path = folder / PREVIEW_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid.float() / 255, path)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("augmentation/batch", grid, trainer.global_step)
        rank_zero_info(f"augmented training batch: {path}")


def preview_grid(video: torch.Tensor) -> torch.Tensor:
    """uint8 (B, V, C, T, H, W) -> uint8 (C, H', W') grid: B rows of V x (first, mid, last)."""
    b, v, c, t, h, w = video.shape
    frames = video[:, :, :, [0, t // 2, t - 1]]  # (B, V, C, 3, H, W)
    tiles = frames.permute(0, 1, 3, 2, 4, 5).reshape(b * v * 3, c, h, w)
    return make_grid(tiles.cpu(), nrow=v * 3, padding=2, pad_value=255)
