"""What the model sees: a grid of the first training batch, augmented, at the start of fit,
captioned: each row's action (id, action class, severity), each column's view and frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from mvcli.commandline.outputs import log_folder
from mvcli.data.taxonomy import HEADS

PREVIEW_FILE = "augmented_batch.png"


class AugmentationPreview(Callback):
    """Writes one augmented training batch as an image grid: one row per action, the first,
    middle and last frame of each view side by side (padded views left black), to
    ``<log dir>/augmented_batch.png`` and to TensorBoard (``augmentation/batch``). A header
    names each column (view, frame) and a left margin each row (action id, action class,
    severity; the larger share of a mixed label).

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
            self._write(trainer, batch, folder)

    @rank_zero_only
    def _write(self, trainer: Trainer, batch: dict, folder: Path) -> None:
        video = batch["video"][: self.max_actions]
        grid = captioned(preview_grid(video), row_labels(batch, len(video)), video.shape)
        path = folder / PREVIEW_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)
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


_PAD = 2  # preview_grid's padding
_LINE = 12  # pixels per caption line (PIL's default font)
_MARGIN = 160  # left margin: the row captions


def row_labels(batch: dict, rows: int) -> list[list[str]]:
    """Per action two lines: ``#<id> <action class>`` and its severity (the larger share of
    a mixed label)."""
    ids = batch.get("action_id")
    labels = []
    for i in range(rows):
        names = {}
        for head in ("action", "offence_severity"):
            target = batch.get(head)
            if target is None:
                continue
            value = target[i]
            index = int(value.argmax()) if value.dim() else int(value)
            classes = HEADS[head]
            names[head] = classes[index] if 0 <= index < len(classes) else "unlabelled"
        first = f"#{ids[i]}" if ids is not None else f"row {i + 1}"
        severity = names.get("offence_severity", "").replace("Offence + ", "")
        labels.append([f"{first} {names.get('action', '')}".strip(), severity])
    return labels


def captioned(grid: torch.Tensor, labels: list[list[str]], shape: torch.Size) -> torch.Tensor:
    """The grid with a header (view and frame of each column) and each row's labels at its
    left; uint8 (C, H, W) in and out."""
    _, views, _, _, h, w = shape
    font = ImageFont.load_default()
    header = 2 * _LINE + 4
    image = Image.new("RGB", (_MARGIN + grid.shape[2], header + grid.shape[1]), "white")
    pixels = grid.permute(1, 2, 0).cpu().numpy().astype(np.uint8)
    if pixels.shape[2] == 1:
        pixels = pixels.repeat(3, axis=2)
    image.paste(Image.fromarray(pixels), (_MARGIN, header))
    draw = ImageDraw.Draw(image)
    draw.text((2, 2), "augmented training batch", fill="black", font=font)
    draw.text((2, 2 + _LINE), "#action, class, severity", fill="black", font=font)
    for view in range(views):
        for k, frame in enumerate(("first", "mid", "last")):
            x = _MARGIN + _PAD + (view * 3 + k) * (w + _PAD)
            if k == 0:
                draw.text((x, 2), f"view {view + 1}", fill="black", font=font)
            draw.text((x, 2 + _LINE), frame, fill="black", font=font)
    for row, lines in enumerate(labels):
        y = header + _PAD + row * (h + _PAD)
        for n, line in enumerate(lines[: max(1, (h + _PAD) // _LINE)]):
            draw.text((2, y + n * _LINE), line, fill="black", font=font)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
