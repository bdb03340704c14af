"""The metrics of ``mvcli validate`` and ``mvcli test``, as JSON files (the module writes none)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from jsonargparse.typing import NonNegativeInt, OpenUnitInterval
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from mvcli.callbacks.confusion import class_names
from mvcli.commandline.outputs import checkpoint_of, output_dir
from mvcli.data.taxonomy import HEADS
from mvcli.data.tta import tta_of
from mvcli.task.bootstrap import bootstrap_intervals, interval_key
from mvcli.utils.io import atomic_write_text


class MetricsWriter(Callback):
    """Writes ``validate_metrics.json`` (``mvcli validate``: the ``val/*`` metrics) and
    ``test_metrics.json`` (``mvcli test``: the ``test/*`` metrics), once the epoch-level
    aggregates are final: every value the module logged for the stage, reduced across
    processes, written by rank zero, then where they come from: ``checkpoint`` (its absolute
    path), ``data`` (the split folder evaluated) and ``tta`` (the test-time augmentation,
    ``data.tta``: flip, window offsets, how the copies were averaged, how many). The
    validation epochs of a fit write nothing.

    ``test`` adds, from the module's per-action test predictions (``test_predictions``, an
    :class:`mvcli.task.metrics.ActionPredictions`): ``test/support_<head>`` (class name ->
    actions) and a percentile bootstrap interval of each balanced accuracy and of the
    leaderboard, ``test/bacc_<head>_ci95`` and ``test/leaderboard_ci95`` as ``[low, high]``
    (``ci90`` for ``bootstrap_level`` 0.9, ...; :mod:`mvcli.task.bootstrap`). It prints them
    as a table and writes the table to ``test_metrics.md``.

    Args:
        output_dir: folder of the files; None: the run's log folder. ``mvcli validate`` and
            ``mvcli validate``/``test`` fill it from ``--output_dir``, else with a new folder
            of the checkpoint's run, ``<run>/<validate|test>/<checkpoint stem>`` (``-2``,
            ``-3``, ... when that exists).
        bootstrap_resamples: resamples of the test actions (drawn with replacement) for the
            intervals; 0: no intervals.
        bootstrap_seed: the resampling's seed (the same seed gives the same intervals).
        bootstrap_level: the intervals' coverage (0.95: the 2.5 and 97.5 percentiles).
    """

    def __init__(
        self,
        output_dir: Path | None = None,
        bootstrap_resamples: NonNegativeInt = 1000,
        bootstrap_seed: int = 0,
        bootstrap_level: OpenUnitInterval = 0.95,
    ) -> None:
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.bootstrap_resamples = bootstrap_resamples
        self.bootstrap_seed = bootstrap_seed
        self.bootstrap_level = bootstrap_level
        self._extra: dict = {}

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._extra = {}

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        predictions = getattr(pl_module, "test_predictions", None)
        if predictions is None:
            return
        pairs = predictions.compute()  # every rank: a gather under DDP
        if trainer.is_global_zero:
            self._extra = self.intervals(pairs, "test")

    def intervals(self, pairs: dict, prefix: str) -> dict:
        """``{head: (targets, predicted)}`` -> ``<prefix>/support_<head>`` and the
        bootstrap intervals (empty without actions)."""
        targets = {h: t.cpu().numpy() for h, (t, _) in pairs.items()}
        if not targets or not len(next(iter(targets.values()))):
            return {}
        correct = {h: (t == p).cpu().numpy() for h, (t, p) in pairs.items()}
        sizes = {h: max(len(HEADS.get(h, ())), int(t.max()) + 1) for h, t in targets.items()}
        extra: dict = {}
        for head, t in targets.items():
            counts = np.bincount(t, minlength=sizes[head])
            names = class_names(head, len(counts))
            extra[f"{prefix}/support_{head}"] = dict(zip(names, map(int, counts), strict=True))
        found = bootstrap_intervals(
            targets,
            correct,
            sizes,
            self.bootstrap_resamples,
            self.bootstrap_seed,
            self.bootstrap_level,
        )
        suffix = interval_key(self.bootstrap_level)
        for name, (low, high) in found.items():
            key = "leaderboard" if name == "leaderboard" else f"bacc_{name}"
            extra[f"{prefix}/{key}_{suffix}"] = [low, high]
        return extra

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
        extra = self._extra if stage == "test" else {}
        tta = tta_of(trainer.datamodule)
        table = metrics_table(values, extra, prefix, self.bootstrap_level)
        markdown = markdown_table(values, extra, prefix)
        if tta is not None:
            table += f"\n{TTA_LINE}{tta.describe()}"
            markdown += f"\n{TTA_LINE}{tta.describe()}\n"
        values |= extra
        values |= {"checkpoint": checkpoint_of(trainer), "data": _split_folder(trainer, stage)}
        values["tta"] = tta.record() if tta is not None else None
        atomic_write_text(path, json.dumps(values, indent=2) + "\n")
        written = [path]
        if extra:
            rank_zero_info(table)
            written.append(folder / f"{stage}_metrics.md")
            atomic_write_text(written[-1], markdown)
        rank_zero_info("wrote " + ", ".join(str(p) for p in written))
        return path


# Below the tables: the test-time augmentation the predictions were made with.
TTA_LINE = "test-time augmentation (data.tta): "


def _rows(values: dict, prefix: str) -> list[tuple[str, float]]:
    """The balanced accuracies, the leaderboard, then the accuracies (the intervals' order)."""
    names = [k for k in values if k.startswith(f"{prefix}/bacc_")]
    names += [f"{prefix}/leaderboard"] + [k for k in values if k.startswith(f"{prefix}/acc_")]
    return [(k, values[k]) for k in names if k in values]


def _interval(extra: dict, key: str) -> list[float] | None:
    return next((v for k, v in extra.items() if k.startswith(f"{key}_ci")), None)


def metrics_table(values: dict, extra: dict, prefix: str, level: float) -> str:
    """The console table of ``test``: value and interval per metric, then the supports."""
    rows = _rows(values, prefix)
    if not rows:
        return ""
    width = max(len(k) for k, _ in rows)
    lines = [f"{'':<{width}}  {'value':>7}  {f'{round(level * 100, 6):g}% interval':>16}"]
    for key, value in rows:
        interval = _interval(extra, key)
        span = f"[{interval[0]:.4f}, {interval[1]:.4f}]" if interval else ""
        lines.append(f"{key:<{width}}  {value:7.4f}  {span:>16}".rstrip())
    for key, counts in extra.items():
        if key.startswith(f"{prefix}/support_"):
            support = ", ".join(f"{name} {n}" for name, n in counts.items())
            lines.append(f"{key.removeprefix(prefix + '/').replace('_', ' ', 1)}: {support}")
    return "\n".join(lines)


def markdown_table(values: dict, extra: dict, prefix: str) -> str:
    """``<stage>_metrics.md``: metric, value, interval; then head, class, support."""
    lines = ["| metric | value | interval |", "|---|---|---|"]
    for key, value in _rows(values, prefix):
        interval = _interval(extra, key)
        span = f"[{interval[0]:.4f}, {interval[1]:.4f}]" if interval else ""
        lines.append(f"| {key} | {value:.4f} | {span} |")
    lines += ["", "| head | class | support |", "|---|---|---|"]
    for key, counts in extra.items():
        if key.startswith(f"{prefix}/support_"):
            head = key.removeprefix(f"{prefix}/support_")
            lines += [f"| {head} | {name} | {n} |" for name, n in counts.items()]
    return "\n".join(lines) + "\n"


_SPLITS = {"validate": "Valid", "test": "Test"}


def _split_folder(trainer: Trainer, stage: str) -> str | None:
    """The split folder the stage read (the data module's ``root`` and the stage's split:
    its ``stage_split``, e.g. ``data.val_split`` for validate)."""
    datamodule = trainer.datamodule
    root = getattr(datamodule, "root", None)
    stage_split = getattr(datamodule, "stage_split", None)
    split = stage_split(stage) if stage_split is not None else _SPLITS[stage]
    return str(Path(root) / split) if root is not None and split else None
