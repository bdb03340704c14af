"""Where a run's files go: one rule for metrics, confusion matrices and predictions."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Trainer


def output_dir(trainer: Trainer, chosen: Path | str | None = None) -> Path:
    """Folder for the files of validate/test/predict: ``chosen`` (a writer callback's
    ``output_dir`` argument, which the CLI fills from ``--output_dir`` or the run folder of
    ``--ckpt_path``), else the run's log folder (:func:`log_folder`).

    Without ``chosen`` this asks ``trainer.log_dir``, a broadcast under DDP: every rank must
    call it, together.
    """
    return Path(chosen) if chosen else log_folder(trainer)


def log_folder(trainer: Trainer) -> Path:
    """The run's log folder (the logger's), else ``trainer.default_root_dir``.

    ``trainer.log_dir`` is a broadcast under DDP: every rank must ask, together.
    """
    return Path(trainer.log_dir or trainer.default_root_dir)


def resume_command(trainer: Trainer) -> str:
    """The command that continues this fit from its ``last.ckpt``."""
    config = log_folder(trainer) / "config.yaml"
    option = f"--config {config}" if config.is_file() else "--config <your configs>"
    return f"mvcli fit {option} --ckpt_path last"


def run_dir_of(ckpt_path: Path) -> Path:
    """The run folder a checkpoint belongs to: ``<run>/checkpoints/x.ckpt`` -> ``<run>``."""
    parent = Path(ckpt_path).resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent
