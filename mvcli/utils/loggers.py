"""Images and text to whichever loggers a run has; Lightning's loggers share no API for them.

TensorBoard, MLflow and W&B take both; CSV takes neither (its files are tables of scalars), so
a CSV-only run keeps the figures `test` writes as PNGs.
"""

from __future__ import annotations

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from numpy import ndarray


@rank_zero_only
def log_image(trainer: Trainer, tag: str, image: ndarray) -> None:
    """An HxWx3 uint8 image under ``tag`` at the current global step."""
    step = trainer.global_step
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, image, step, dataformats="HWC")
        elif isinstance(logger, MLFlowLogger):
            name = f"{tag}/epoch{trainer.current_epoch:03d}_step{step}.png"
            logger.experiment.log_image(logger.run_id, image, artifact_file=name)
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[image])


@rank_zero_only
def log_text(trainer: Trainer, tag: str, text: str) -> None:
    """Markdown ``text`` under ``tag`` at the current global step."""
    step = trainer.global_step
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text(tag, text, step)
        elif isinstance(logger, MLFlowLogger):
            name = f"{tag}/epoch{trainer.current_epoch:03d}_step{step}.md"
            logger.experiment.log_text(logger.run_id, text, artifact_file=name)
        elif isinstance(logger, WandbLogger):
            logger.log_text(key=tag, columns=["text"], data=[[text]])


def has_media_logger(loggers: list[Logger]) -> bool:
    return any(isinstance(lg, (TensorBoardLogger, MLFlowLogger, WandbLogger)) for lg in loggers)
