"""The metrics of ``mvcli validate`` and ``mvcli test``, as JSON files (the module writes none)."""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from mvcli.commandline.outputs import checkpoint_of, output_dir
from mvcli.utils.io import atomic_write_text


class MetricsWriter(Callback):
    """Writes ``validate_metrics.json`` (``mvcli validate``: the ``val/*`` metrics) and
    ``test_metrics.json`` (``mvcli test``: the ``test/*`` metrics), once the epoch-level
    aggregates are final: every value the module logged for the stage, reduced across
    processes, written by rank zero, then where they come from: ``checkpoint`` (its absolute
    path) and ``data`` (the split folder evaluated). The validation epochs of a fit write
    nothing.

    Args:
        output_dir: folder of the files; None: the run's log folder. ``mvcli validate`` and
            ``mvcli validate``/``test`` fill it from ``--output_dir``, else with a new folder
            of the checkpoint's run, ``<run>/<validate|test>/<checkpoint stem>`` (``-2``,
            ``-3``, ... when that exists).
    """

    def __init__(self, output_dir: Path | None = None) -> None:
        self.output_dir = Path(output_dir) if output_dir is not None else None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self.write(trainer, "validate", "val")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.write(trainer, "test", "test")

    def write(self, trainer: Trainer, stage: str, prefix: str) -> Path | None:
        """``<stage>_metrics.json``: the ``<prefix>/*`` values of ``trainer.callback_metrics``
        (the path written, None when there was nothing to write or on other ranks)."""
        # Every rank asks: without output_dir, the folder is trainer.log_dir, a broadcast.
        folder = output_dir(trainer, self.output_dir)
        if not trainer.is_global_zero:
            return None
        metrics = trainer.callback_metrics
        values = {k: float(v) for k, v in sorted(metrics.items()) if k.startswith(f"{prefix}/")}
        if not values:
            return None
        path = folder / f"{stage}_metrics.json"
        values |= {"checkpoint": checkpoint_of(trainer), "data": _split_folder(trainer, stage)}
        atomic_write_text(path, json.dumps(values, indent=2) + "\n")
        rank_zero_info(f"wrote {path}")
        return path


_SPLITS = {"validate": "Valid", "test": "Test"}


def _split_folder(trainer: Trainer, stage: str) -> str | None:
    """The split folder the stage read (the data module's ``root`` and the stage's split)."""
    root = getattr(trainer.datamodule, "root", None)
    return str(Path(root) / _SPLITS[stage]) if root is not None else None
