"""Confusion matrices of each head: images per validation epoch, PNGs and tables at test.

The counts live in the module (``MVFoulModule.confusion``, torchmetrics'
MulticlassConfusionMatrix per stage and head), so they are summed across processes under DDP
when computed here; every rank computes, rank zero draws and writes.
"""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

import torch
from jsonargparse.typing import NonNegativeInt
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from mvcli.commandline.outputs import output_dir
from mvcli.data.taxonomy import HEADS
from mvcli.utils import plots
from mvcli.utils.io import atomic_write_text
from mvcli.utils.loggers import has_media_logger, log_image, log_text

TABLE_COLUMNS = ("head", "class", "support", "predicted", "correct", "recall", "precision", "f1")


class ConfusionMatrices(Callback):
    """Confusion matrix (counts and row-normalised) and per-class recall of each head.

    Every validation epoch logs them as images (``val/confusion_<head>``,
    ``val/recall_<head>``) and the most-confused class pairs as text; ``test`` also writes
    ``test_confusion_<head>.png``, ``test_recall_<head>.png`` and a per-class table
    (``test_per_class.csv``, ``test_per_class.md``) next to ``test_metrics.json``.

    Args:
        log_every_n_epochs: log the validation images every n epochs (the last epoch of a
            fit and ``validate`` always log); 0 turns validation images off.
        top_pairs: how many most-confused (true, predicted) pairs to list per head.
        output_dir: folder of the files ``test`` writes; None: the run's log folder.
            ``mvcli validate``/``test`` fill it from ``--output_dir``, else with a new folder
            of the checkpoint's run, ``<run>/<validate|test>/<checkpoint stem>`` (``-2``,
            ``-3``, ... when that exists).
    """

    def __init__(
        self,
        log_every_n_epochs: NonNegativeInt = 1,
        top_pairs: NonNegativeInt = 5,
        output_dir: Path | None = None,
    ) -> None:
        self.log_every_n_epochs = log_every_n_epochs
        self.top_pairs = top_pairs
        self.output_dir = Path(output_dir) if output_dir is not None else None

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        matrices = _compute(pl_module, "val")
        if trainer.sanity_checking or not matrices or not self._due(trainer):
            return
        if trainer.is_global_zero:
            self._log(trainer, "val", matrices)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        matrices = _compute(pl_module, "test")
        if not matrices:
            return
        folder = output_dir(trainer, self.output_dir)  # every rank: may be a broadcast
        if not trainer.is_global_zero:
            return
        self._log(trainer, "test", matrices)
        written = []
        for head, matrix in matrices.items():
            names = class_names(head, len(matrix))
            written.append(
                plots.save_png(
                    plots.confusion_figure(matrix, names, head),
                    folder / f"test_confusion_{head}.png",
                )
            )
            written.append(
                plots.save_png(
                    plots.recall_figure(matrix, names, head), folder / f"test_recall_{head}.png"
                )
            )
        rows = [row for head, m in matrices.items() for row in per_class_rows(head, m)]
        for path, text in [
            (folder / "test_per_class.csv", table_csv(rows)),
            (folder / "test_per_class.md", table_markdown(rows)),
        ]:
            atomic_write_text(path, text)
            written.append(path)
        rank_zero_info("wrote " + ", ".join(str(p) for p in written))

    def _due(self, trainer: Trainer) -> bool:
        if self.log_every_n_epochs == 0:
            return False
        last = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        fitting = trainer.state.fn == TrainerFn.FITTING
        return not fitting or last or trainer.current_epoch % self.log_every_n_epochs == 0

    def _log(self, trainer: Trainer, stage: str, matrices: dict[str, torch.Tensor]) -> None:
        if not has_media_logger(trainer.loggers):
            return  # nothing would show the figures: not drawn
        for head, matrix in matrices.items():
            names = class_names(head, len(matrix))
            figure = plots.confusion_figure(matrix, names, head)
            log_image(trainer, f"{stage}/confusion_{head}", plots.to_array(figure))
            figure = plots.recall_figure(matrix, names, head)
            log_image(trainer, f"{stage}/recall_{head}", plots.to_array(figure))
            if self.top_pairs:
                pairs = confused_pairs(matrix, names, self.top_pairs)
                log_text(trainer, f"{stage}/confused_pairs_{head}", pairs_markdown(pairs))


def _compute(pl_module: LightningModule, stage: str) -> dict[str, torch.Tensor]:
    """The stage's matrices (synced across processes), reset for the next epoch."""
    confusion = getattr(pl_module, "confusion", None)
    if confusion is None or stage not in confusion:
        return {}
    matrices = {}
    for head, metric in confusion[stage].items():
        with warnings.catch_warnings():
            # A rank may have seen no batch; it still takes part in the sync.
            warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
            matrices[head] = metric.compute().cpu()
        metric.reset()
    return matrices if any(m.sum() > 0 for m in matrices.values()) else {}


def class_names(head: str, num_classes: int) -> list[str]:
    names = HEADS.get(head, ())
    return list(names) if len(names) == num_classes else [str(i) for i in range(num_classes)]


def confused_pairs(
    matrix: torch.Tensor, names: list[str], k: int
) -> list[tuple[str, str, int, float]]:
    """The k largest off-diagonal cells: (true, predicted, count, share of the true class)."""
    off = matrix.clone().long()
    off.fill_diagonal_(0)
    support = matrix.sum(dim=1).clamp(min=1)
    flat = off.flatten()
    order = torch.argsort(flat, descending=True, stable=True)[:k]
    n = len(names)
    return [
        (names[i // n], names[i % n], int(flat[i]), float(flat[i] / support[i // n]))
        for i in order.tolist()
        if flat[i] > 0
    ]


def pairs_markdown(pairs: list[tuple[str, str, int, float]]) -> str:
    if not pairs:
        return "no confusions"
    lines = ["| true | predicted | count | share of true |", "|---|---|---|---|"]
    lines += [f"| {t} | {p} | {c} | {s:.2f} |" for t, p, c, s in pairs]
    return "\n".join(lines)


def per_class_rows(head: str, matrix: torch.Tensor) -> list[dict]:
    """One row per class: support, predicted count, correct, recall, precision, F1."""
    matrix = matrix.long()
    support, predicted, correct = matrix.sum(1), matrix.sum(0), matrix.diagonal()
    rows = []
    for i, name in enumerate(class_names(head, len(matrix))):
        rec = correct[i] / support[i] if support[i] else float("nan")
        prec = correct[i] / predicted[i] if predicted[i] else float("nan")
        f1 = 2 * rec * prec / (rec + prec) if support[i] and predicted[i] and correct[i] else 0.0
        rows.append(
            {
                "head": head,
                "class": name,
                "support": int(support[i]),
                "predicted": int(predicted[i]),
                "correct": int(correct[i]),
                "recall": float(rec),
                "precision": float(prec),
                "f1": float(f1),
            }
        )
    return rows


def table_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def table_markdown(rows: list[dict]) -> str:
    def cell(value) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(cell(row[c]) for c in TABLE_COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"
