"""The scoring function against the official evaluator on whole files."""

from __future__ import annotations

import json
import math
import random

import pytest

from mvcli.data.taxonomy import submission_entry
from mvcli.deploy.scoring import score
from tests.evaluator import official_evaluate

KEYS = [
    "accuracy_offence_severity",
    "accuracy_action",
    "balanced_accuracy_offence_severity",
    "balanced_accuracy_action",
    "leaderboard_value",
]


def _write(tmp_path, truth: dict, preds: dict):
    t, p = tmp_path / "annotations.json", tmp_path / "predictions.json"
    t.write_text(json.dumps({"Actions": truth}))
    p.write_text(json.dumps({"Actions": preds}))
    return t, p


def _random_files(tmp_path, seed: int, absent: set[int] = frozenset()):
    rng = random.Random(seed)
    truth, preds = {}, {}
    for i in range(60):
        os_class, action = i % 4, (i * 3) % 8
        if action in absent:
            action = 0
        truth[str(i)] = submission_entry(os_class, action)
        if rng.random() < 0.9:  # some actions not predicted at all
            preds[str(i)] = submission_entry(rng.randrange(4), rng.randrange(8))
    return _write(tmp_path, truth, preds)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_score_equals_official_evaluator(tmp_path, seed):
    truth, preds = _random_files(tmp_path, seed)
    ours, official = score(preds, truth), official_evaluate(truth, preds)
    for key in KEYS:
        assert ours[key] == pytest.approx(official[key], abs=1e-9), key


def test_absent_classes_do_not_give_nan(tmp_path):
    truth, preds = _random_files(tmp_path, 0, absent={5, 6, 7})
    official = official_evaluate(truth, preds)
    assert math.isnan(official["balanced_accuracy_action"])
    ours = score(preds, truth)
    assert not math.isnan(ours["leaderboard_value"])
    assert ours["accuracy_action"] == pytest.approx(official["accuracy_action"])
