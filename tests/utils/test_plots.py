"""The figures: recall per class (absent classes NaN), confusion and recall PNGs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mvcli.data.taxonomy import HEADS
from mvcli.utils import plots
from tests.conftest import _check_png

MATRIX = torch.tensor([[5, 1, 0], [3, 2, 0], [0, 0, 0]])  # class "c" absent from the targets


def test_recall_treats_absent_classes_as_nan():
    values = plots.recall(MATRIX)
    assert values[:2].tolist() == pytest.approx([5 / 6, 0.4]) and torch.isnan(values[2])
    assert plots.row_normalised(MATRIX)[2].tolist() == [0, 0, 0]


def test_confusion_png_renders(tmp_path):
    names = list(HEADS["action"])
    matrix = torch.randint(0, 20, (len(names), len(names)))
    path = plots.save_png(plots.confusion_figure(matrix, names, "action"), tmp_path / "c.png")
    _check_png(path, (700, 350))
    array = plots.to_array(plots.recall_figure(matrix, names, "action"))
    assert array.dtype == np.uint8 and array.shape[2] == 3 and array.std() > 10
