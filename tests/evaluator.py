"""The official evaluator, imported if installed (``pip install --no-deps SoccerNet``)."""

from __future__ import annotations

import contextlib
import io
import warnings

import pytest


def official_evaluate(annotations_file, predictions_file) -> dict:
    module = pytest.importorskip("SoccerNet.Evaluation.MV_FoulRecognition")
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # its 0/0 for absent classes
        return module.evaluate(str(annotations_file), str(predictions_file))
