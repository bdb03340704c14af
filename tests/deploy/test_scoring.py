"""The scoring function against the official evaluator on whole files."""

from __future__ import annotations

import json
import math
import random

import pytest

from mvcli.__main__ import run
from mvcli.data.taxonomy import HEADS, submission_entry
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


def test_intervals_and_support_beside_the_official_numbers(tmp_path):
    truth, preds = _random_files(tmp_path, 1)
    ours, official = score(preds, truth, seed=5), official_evaluate(truth, preds)
    for key in KEYS:  # the point estimates stay the evaluator's
        assert ours[key] == pytest.approx(official[key], abs=1e-9), key
    for key in (
        "balanced_accuracy_offence_severity",
        "balanced_accuracy_action",
        "leaderboard_value",
    ):
        low, high = ours[f"{key}_ci95"]
        assert low < ours[key] < high, key
    assert ours == score(preds, truth, seed=5)  # seeded
    assert ours["leaderboard_value_ci95"] != score(preds, truth, seed=6)["leaderboard_value_ci95"]
    assert sum(ours["support_action"].values()) == ours["counted"] == 60
    assert list(ours["support_offence_severity"]) == list(HEADS["offence_severity"])
    narrow = score(preds, truth, level=0.5)
    assert "leaderboard_value_ci50" in narrow and "leaderboard_value_ci95" not in narrow
    assert not any(k.endswith("_ci95") for k in score(preds, truth, resamples=0))


def test_mvcli_score_prints_and_writes_the_intervals(tmp_path, capsys):
    truth, preds = _random_files(tmp_path, 2)
    out = tmp_path / "scores.json"
    args = ["score", str(preds), str(truth), "--output", str(out)]
    run([*args, "--resamples", "500", "--seed", "1"])  # the console command's entry point
    printed = capsys.readouterr().out.splitlines()
    written = json.loads(out.read_text())
    assert written == score(preds, truth, resamples=500, seed=1)
    assert printed[0].split() == ["value", "95%", "interval"]
    low, high = written["leaderboard_value_ci95"]
    line = next(x for x in printed if x.startswith("leaderboard_value"))
    assert line.endswith(f"{written['leaderboard_value']:8.3f}  [{low:6.2f}, {high:6.2f}]")
    line = next(x for x in printed if x.startswith("accuracy_action"))
    assert "[" not in line  # intervals of the balanced accuracies and the leaderboard only
    assert any(x.startswith("support action: Tackling ") for x in printed)
    with pytest.raises(SystemExit) as exit_info:
        run([*args, "--level", "1.5"])
    assert exit_info.value.code == 2
