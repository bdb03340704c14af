"""Score a predictions file against an annotations file, as the official evaluator does.

Counting follows ``SoccerNet.Evaluation.MV_FoulRecognition.evaluate`` exactly (same skip
rules via the taxonomy, same string comparisons of the submission fields). One deliberate
difference: a class absent from the ground truth is left out of the balanced accuracy
instead of turning it into NaN, so small or one-sided splits still score; and an action
whose label fields are not strings is left out, as training and evaluation leave it out.

Beside the official numbers: each class's support and a bootstrap interval
(:func:`mvcli.task.bootstrap.bootstrap_intervals`) of each balanced accuracy and of the
leaderboard.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from jsonargparse.typing import NonNegativeInt, OpenUnitInterval

from mvcli.data.annotations import label_field_error, load_annotations
from mvcli.data.taxonomy import (
    HEADS,
    NUM_CLASSES,
    Labels,
    SkipAction,
    labels_from_annotation,
    submission_entry,
)
from mvcli.task.bootstrap import bootstrap_intervals, interval_key


def score(
    predictions_file: Path,
    annotations_file: Path,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Official numbers in percent: accuracy and balanced accuracy per head, leaderboard.

    Also returns ``counted`` and ``missing`` (labelled actions absent from the predictions,
    counted wrong on both heads), ``support_<head>`` (class name -> counted actions) and, with
    ``resamples`` > 0, the bootstrap intervals in percent, ``balanced_accuracy_<head>_ci95``
    and ``leaderboard_value_ci95`` (``ci90`` for ``level`` 0.9, ...) as ``[low, high]``.
    """
    truth = load_annotations(Path(annotations_file))
    predicted = json.loads(Path(predictions_file).read_text()).get("Actions", {})
    targets: dict[str, list[int]] = {h: [] for h in NUM_CLASSES}
    right: dict[str, list[bool]] = {h: [] for h in NUM_CLASSES}
    missing = 0
    for action_id, entry in truth.items():
        if label_field_error(entry) is not None:
            continue  # malformed labels: left out, as in training and evaluation
        try:
            labels = labels_from_annotation(entry)
        except SkipAction:
            continue
        guess = predicted.get(action_id)
        if guess is None:
            missing += 1
            verdict = dict.fromkeys(NUM_CLASSES, False)
        else:
            verdict = heads_correct(entry, labels, guess)
        for head in NUM_CLASSES:
            targets[head].append(getattr(labels, head))
            right[head].append(bool(verdict[head]))
    arrays = {h: np.asarray(t, dtype=np.int64) for h, t in targets.items()}
    hits = {h: np.asarray(r, dtype=bool) for h, r in right.items()}
    support = {h: np.bincount(arrays[h], minlength=n) for h, n in NUM_CLASSES.items()}
    correct = {
        h: np.bincount(arrays[h], weights=hits[h], minlength=n) for h, n in NUM_CLASSES.items()
    }
    result = _summary(support, correct, missing)
    for head, counts in support.items():
        result[f"support_{head}"] = dict(zip(HEADS[head], map(int, counts), strict=True))
    intervals = bootstrap_intervals(arrays, hits, NUM_CLASSES, resamples, seed, level)
    suffix = interval_key(level)
    names = {h: f"balanced_accuracy_{h}" for h in NUM_CLASSES} | {
        "leaderboard": "leaderboard_value"
    }
    for name, (low, high) in intervals.items():
        result[f"{names[name]}_{suffix}"] = [100 * low, 100 * high]
    return result


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


def _summary(support: dict, correct: dict, missing: int) -> dict:
    result: dict = {}
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


def score_command(
    predictions: Path,
    annotations: Path,
    output: Path | None = None,
    resamples: NonNegativeInt = 1000,
    seed: int = 0,
    level: OpenUnitInterval = 0.95,
) -> None:
    """Print the official numbers for a predictions file (``mvcli score``), with each
    balanced accuracy's and the leaderboard's bootstrap interval and each class's support.

    Args:
        predictions: a predictions.json in the submission format.
        annotations: the split's annotations.json (ground truth).
        output: also write the numbers to this JSON file.
        resamples: bootstrap resamples of the counted actions (drawn with replacement);
            0: no intervals.
        seed: the bootstrap's seed (the same seed gives the same intervals).
        level: the intervals' coverage (0.95: the 2.5 and 97.5 percentiles).
    """
    result = score(predictions, annotations, resamples, seed, level)
    print(score_table(result, level))
    if output is not None:
        Path(output).write_text(json.dumps(result, indent=2) + "\n")


def score_table(result: dict, level: float = 0.95) -> str:
    """:func:`score`'s numbers as a console table: value and interval, then the supports."""
    suffix = interval_key(level)
    rows = [(k, v) for k, v in result.items() if isinstance(v, float)]
    width = max(len(k) for k, _ in rows)
    lines = [f"{'':<{width}}  {'value':>8}  {f'{round(level * 100, 6):g}% interval':>16}"]
    for key, value in rows:
        if key in ("counted", "missing"):
            lines.append(f"{key:<{width}}  {int(value):8d}")
            continue
        interval = result.get(f"{key}_{suffix}")
        span = f"[{interval[0]:6.2f}, {interval[1]:6.2f}]" if interval else ""
        lines.append(f"{key:<{width}}  {value:8.3f}  {span:>16}".rstrip())
    for head in NUM_CLASSES:
        counts = result.get(f"support_{head}")
        if counts:
            lines.append(f"support {head}: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
    return "\n".join(lines)
