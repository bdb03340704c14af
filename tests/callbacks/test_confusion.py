"""Confusion matrices: the tables, the images of every validation epoch, and what `mvcli test`
writes (the figures themselves: tests/utils/test_plots.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mvcli.callbacks.confusion import (
    ConfusionMatrices,
    confused_pairs,
    per_class_rows,
    table_markdown,
)
from mvcli.callbacks.metrics_writer import MetricsWriter
from mvcli.cli import main
from mvcli.data.taxonomy import HEADS
from tests.conftest import _check_png

MATRIX = torch.tensor([[5, 1, 0], [3, 2, 0], [0, 0, 0]])  # class "c" absent from the targets


def test_confused_pairs_are_the_largest_off_diagonal_cells():
    pairs = confused_pairs(MATRIX, ["a", "b", "c"], k=5)
    assert pairs == [("b", "a", 3, pytest.approx(0.6)), ("a", "b", 1, pytest.approx(1 / 6))]


def test_per_class_rows():
    rows = {r["class"]: r for r in per_class_rows("h", MATRIX)}  # unknown head: names 0, 1, 2
    assert rows["0"]["support"] == 6 and rows["0"]["predicted"] == 8
    assert rows["0"]["recall"] == pytest.approx(5 / 6)
    assert rows["0"]["precision"] == pytest.approx(5 / 8)
    assert np.isnan(rows["2"]["recall"])  # absent: no recall, not 0
    assert "| h | 0 | 6 | 8 | 5 | 0.8333 | 0.6250 |" in table_markdown(list(rows.values()))


def test_test_writes_pngs_and_tables_next_to_metrics(trained, caplog):
    common, fit = trained
    cli = main(["test", *common, "--ckpt_path", fit.trainer.checkpoint_callback.best_model_path])
    # The CLI gave both writers one new folder of the checkpoint's run:
    # <run>/test/<checkpoint stem>[-N].
    ckpt = Path(fit.trainer.checkpoint_callback.best_model_path)
    folders = {
        next(c for c in cli.trainer.callbacks if isinstance(c, kind)).output_dir
        for kind in (ConfusionMatrices, MetricsWriter)
    }
    assert len(folders) == 1
    folder = folders.pop()
    assert folder.parent == Path(fit.trainer.log_dir) / "test"
    assert folder.name.startswith(ckpt.stem)
    assert (folder / "test_metrics.json").is_file()
    for head in HEADS:
        _check_png(folder / f"test_confusion_{head}.png", (500, 250))
        _check_png(folder / f"test_recall_{head}.png", (300, 200))
    rows = list(csv.DictReader((folder / "test_per_class.csv").open()))
    assert [r["class"] for r in rows] == [*HEADS["offence_severity"], *HEADS["action"]]
    metrics = json.loads((folder / "test_metrics.json").read_text())
    support = sum(int(r["support"]) for r in rows if r["head"] == "action")
    correct = sum(int(r["correct"]) for r in rows if r["head"] == "action")
    assert correct / support == pytest.approx(metrics["test/acc_action"])
    markdown = (folder / "test_per_class.md").read_text()
    assert markdown.count("\n") == len(rows) + 2
    assert f"wrote {folder / 'test_metrics.json'}" in caplog.text  # says where
    assert str(folder / "test_per_class.csv") in caplog.text


def test_confusion_images_and_pairs_every_validation_epoch(events):
    tags = events.Tags()
    for head in HEADS:
        for kind in ("confusion", "recall"):
            images = events.Images(f"val/{kind}_{head}")
            assert len(images) == 2, (kind, head)  # 2 epochs, sanity check left out
            assert images[0].width > 300 and images[0].height > 200
        assert f"val/confused_pairs_{head}/text_summary" in tags["tensors"]
