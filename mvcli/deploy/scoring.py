"""Score a predictions file against an annotations file, as the official evaluator does.

Counting follows ``SoccerNet.Evaluation.MV_FoulRecognition.evaluate`` exactly (same skip
rules via the taxonomy, same string comparisons of the submission fields). One deliberate
difference: a class absent from the ground truth is left out of the balanced accuracy
instead of turning it into NaN, so small or one-sided splits still score; and an action
whose label fields are not strings is left out, as training and evaluation leave it out.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mvcli.data.annotations import label_field_error, load_annotations
from mvcli.data.taxonomy import (
    NUM_CLASSES,
    Labels,
    SkipAction,
    labels_from_annotation,
    submission_entry,
)


def score(predictions_file: Path, annotations_file: Path) -> dict[str, float]:
    """Official numbers in percent: accuracy and balanced accuracy per head, leaderboard.

    Also returns ``missing`` (labelled actions absent from the predictions) and ``counted``.
    """
    truth = load_annotations(Path(annotations_file))
    predicted = json.loads(Path(predictions_file).read_text()).get("Actions", {})
    support = {h: np.zeros(n) for h, n in NUM_CLASSES.items()}
    correct = {h: np.zeros(n) for h, n in NUM_CLASSES.items()}
    missing = 0
    for action_id, entry in truth.items():
        if label_field_error(entry) is not None:
            continue  # malformed labels: left out, as in training and evaluation
        try:
            labels = labels_from_annotation(entry)
        except SkipAction:
            continue
        support["offence_severity"][labels.offence_severity] += 1
        support["action"][labels.action] += 1
        guess = predicted.get(action_id)
        if guess is None:
            missing += 1
            continue
        for head, right in heads_correct(entry, labels, guess).items():
            correct[head][getattr(labels, head)] += right
    return _summary(support, correct, missing)


def heads_correct(entry: dict, labels: Labels, guess: dict) -> dict[str, bool]:
    """Whether a submission entry gets each head of one counted action right, by the
    evaluator's own string comparisons (``mvcli review`` marks actions with it)."""
    # The evaluator compares the raw ground-truth Offence string and a normalised severity.
    expected = _expected_severity(entry, labels.offence_severity)
    return {
        "offence_severity": entry.get("Offence") == guess.get("Offence")
        and expected == guess.get("Severity"),
        "action": entry.get("Action class") == guess.get("Action class"),
    }


def _expected_severity(entry: dict, offence_severity: int) -> str:
    if offence_severity == 0:
        return ""
    if entry.get("Action class") == "Dive":
        return "1.0"
    return submission_entry(offence_severity, 0)["Severity"]


def _summary(support: dict, correct: dict, missing: int) -> dict[str, float]:
    result: dict[str, float] = {}
    for head in NUM_CLASSES:
        present = support[head] > 0
        total = support[head].sum()
        result[f"accuracy_{head}"] = 100 * correct[head].sum() / total if total else float("nan")
        recall = correct[head][present] / support[head][present]
        result[f"balanced_accuracy_{head}"] = 100 * recall.mean() if present.any() else float("nan")
    result["leaderboard_value"] = (
        result["balanced_accuracy_offence_severity"] + result["balanced_accuracy_action"]
    ) / 2
    result["counted"] = float(support["action"].sum())
    result["missing"] = float(missing)
    return result


def score_command(predictions: Path, annotations: Path, output: Path | None = None) -> None:
    """Print the official numbers for a predictions file (``mvcli score``).

    Args:
        predictions: a predictions.json in the submission format.
        annotations: the split's annotations.json (ground truth).
        output: also write the numbers to this JSON file.
    """
    result = score(predictions, annotations)
    width = max(map(len, result))
    for key, value in result.items():
        print(
            f"{key:<{width}}  {value:8.3f}"
            if key not in ("counted", "missing")
            else f"{key:<{width}}  {int(value):8d}"
        )
    if output is not None:
        Path(output).write_text(json.dumps(result, indent=2) + "\n")
