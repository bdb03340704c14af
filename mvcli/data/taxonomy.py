"""Class names of both heads and the official mapping from annotation fields.

This is the only module that knows label strings. The mapping mirrors
``SoccerNet.Evaluation.MV_FoulRecognition.evaluate`` rule for rule, so the actions we train
and score on are exactly the ones the official evaluator counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

OFFENCE_SEVERITY_CLASSES: tuple[str, ...] = (
    "No offence",
    "Offence + No card",
    "Offence + Yellow card",
    "Offence + Red card",
)
ACTION_CLASSES: tuple[str, ...] = (
    "Tackling",
    "Standing tackling",
    "High leg",
    "Holding",
    "Pushing",
    "Elbowing",
    "Challenge",
    "Dive",
)
HeadName = Literal["offence_severity", "action"]
HEADS: dict[str, tuple[str, ...]] = dict(
    zip(get_args(HeadName), (OFFENCE_SEVERITY_CLASSES, ACTION_CLASSES), strict=True)
)
NUM_CLASSES: dict[str, int] = {head: len(names) for head, names in HEADS.items()}

# (Offence, Severity) strings of each offence-severity class, as annotations hold them and the
# evaluator compares them in submissions.
OFFENCE_SEVERITY_FIELDS: tuple[tuple[str, str], ...] = (
    ("No offence", ""),
    ("Offence", "1.0"),
    ("Offence", "3.0"),
    ("Offence", "5.0"),
)
_SEVERITY_TO_CLASS = {"1.0": 1, "3.0": 2, "5.0": 3}
_UNSURE_SEVERITY = ("", "2.0", "4.0")
_UNSURE_OFFENCE = ("", "Between")
_NO_OFFENCE = ("No offence", "No Offence")


@dataclass(frozen=True)
class Labels:
    """Class indices of both heads for one action."""

    offence_severity: int
    action: int


class SkipAction(Exception):
    """The official rules exclude this action; ``reason`` is a short human-readable key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def has_labels(entry: Mapping) -> bool:
    """Chall actions (and unlabeled folders) carry no label fields at all."""
    return any(key in entry for key in ("Action class", "Offence", "Severity"))


def labels_from_annotation(entry: Mapping) -> Labels:
    """Map one annotation entry to class indices, applying the official skip rules.

    Raises:
        SkipAction: when the official evaluator would not count this action.
    """
    action = str(entry.get("Action class", ""))
    offence = str(entry.get("Offence", ""))
    severity = str(entry.get("Severity", ""))
    if action in ("", "Dont know"):
        return _skip("action class unknown ('' or 'Dont know')")
    if action not in ACTION_CLASSES:
        return _skip(f"action class {action!r} not in the taxonomy")
    is_dive = action == "Dive"
    if offence in _UNSURE_OFFENCE and not is_dive:
        return _skip("offence unsure ('' or 'Between')")
    if severity in _UNSURE_SEVERITY and not is_dive and offence not in _NO_OFFENCE:
        return _skip("severity unsure ('', '2.0' or '4.0')")
    if offence in _UNSURE_OFFENCE:
        offence = "Offence"
    if severity in _UNSURE_SEVERITY:
        severity = "1.0"
    if offence in _NO_OFFENCE:
        offence_severity = 0
    elif offence == "Offence" and severity in _SEVERITY_TO_CLASS:
        offence_severity = _SEVERITY_TO_CLASS[severity]
    else:
        return _skip(f"offence/severity pair ({offence!r}, {severity!r}) not in the taxonomy")
    return Labels(offence_severity, ACTION_CLASSES.index(action))


def _skip(reason: str) -> Labels:
    raise SkipAction(reason)


def submission_entry(offence_severity: int, action: int) -> dict[str, str]:
    """The official submission fields for predicted class indices."""
    offence, severity = OFFENCE_SEVERITY_FIELDS[offence_severity]
    return {"Action class": ACTION_CLASSES[action], "Offence": offence, "Severity": severity}
