"""Our label mapping against the official evaluator, on every combination of field values."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from mvcli.data.taxonomy import (
    ACTION_CLASSES,
    SkipAction,
    labels_from_annotation,
    submission_entry,
)
from mvcli.deploy.scoring import score
from tests.evaluator import official_evaluate

ACTIONS = ["", "Dont know", "Dive", "Tackling", "High leg", "Elbowing"]
OFFENCES = ["", "Between", "Offence", "No offence", "No Offence"]
SEVERITIES = ["", "1.0", "2.0", "3.0", "4.0", "5.0"]
COMBOS = list(itertools.product(ACTIONS, OFFENCES, SEVERITIES))


def _evaluator_quirk(action: str, offence: str, severity: str) -> bool:
    """Counted actions whose offence-severity no submission of its class can match.

    The evaluator compares the raw ground-truth Offence string ("No Offence", or "" and
    "Between" for dives) and expects severity "1.0" for any offending dive.
    """
    if offence == "No Offence":
        return True
    if action == "Dive" and offence in ("", "Between"):
        return True
    return action == "Dive" and offence == "Offence" and severity in ("3.0", "5.0")


def _files(tmp_path, entry: dict, prediction: dict | None):
    truth = tmp_path / "truth.json"
    preds = tmp_path / "preds.json"
    truth.write_text(json.dumps({"Actions": {"7": entry}}))
    preds.write_text(json.dumps({"Actions": {"7": prediction} if prediction else {}}))
    return truth, preds


@pytest.mark.parametrize(("action", "offence", "severity"), COMBOS)
def test_mapping_matches_official_evaluator(tmp_path, action, offence, severity):
    entry = {"Action class": action, "Offence": offence, "Severity": severity}
    truth, preds = _files(tmp_path, entry, None)
    counted = not math.isnan(official_evaluate(truth, preds)["accuracy_action"])
    try:
        labels = labels_from_annotation(entry)
    except SkipAction:
        assert not counted, "we skip an action the evaluator counts"
        return
    assert counted, "we keep an action the evaluator skips"
    truth, preds = _files(tmp_path, entry, submission_entry(labels.offence_severity, labels.action))
    official = official_evaluate(truth, preds)
    assert official["accuracy_action"] == 100.0
    expected = 0.0 if _evaluator_quirk(action, offence, severity) else 100.0
    assert official["accuracy_offence_severity"] == expected
    ours = score(preds, truth)
    for key in ("accuracy_action", "accuracy_offence_severity"):
        assert ours[f"{key}"] == official[key]


def test_submission_strings_round_trip():
    for os_class, action in itertools.product(range(4), range(8)):
        entry = submission_entry(os_class, action)
        labels = labels_from_annotation(entry)
        assert (labels.offence_severity, labels.action) == (os_class, action)
    assert len(ACTION_CLASSES) == 8
