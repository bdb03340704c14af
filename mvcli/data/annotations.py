"""Read a split (or any folder of actions) into ActionRecords plus a report of what was skipped.

View paths always come from what is on disk under ``action_<id>/``; the annotation ``Url``
fields are never used to build paths (they differ between releases and lack extensions).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mvcli.data.taxonomy import Labels, SkipAction, has_labels, labels_from_annotation
from mvcli.errors import DataError

SPLITS = ("Train", "Valid", "Test", "Chall")
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".mkv", ".avi", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".ts", ".mts", ".wmv"}
)
_ACTION_DIR = re.compile(r"^action_(.+)$")
_CLIP_INDEX = re.compile(r"^clip_(\d+)$")


class AnnotationError(DataError):
    """An annotations file that cannot be read as MVFoul annotations."""


@dataclass(frozen=True)
class ActionRecord:
    """One action: its id, the view files found on disk and its labels (None if unlabeled)."""

    action_id: str
    views: tuple[Path, ...]
    labels: Labels | None = None


@dataclass
class SkipReport:
    """Actions left out of a split, counted by reason (reported once, not per epoch)."""

    source: str
    total: int = 0
    reasons: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, action_id: str, reason: str) -> None:
        self.reasons[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(action_id)

    @property
    def skipped(self) -> int:
        return sum(self.reasons.values())

    def summary(self) -> str:
        head = f"{self.source}: {self.total - self.skipped}/{self.total} actions kept"
        if not self.reasons:
            return head
        lines = [f"{head}; skipped {self.skipped}:"]
        for reason, count in self.reasons.most_common():
            lines.append(
                f"  {count:5d}  {reason}  (e.g. action {', '.join(self.examples[reason])})"
            )
        return "\n".join(lines)


def find_views(action_dir: Path) -> tuple[Path, ...]:
    """Video files of one action, clip_<k> files in index order first, then others by name."""
    if not action_dir.is_dir():
        return ()
    files = [
        p for p in action_dir.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS
    ]

    def order(path: Path) -> tuple[int, int, str]:
        match = _CLIP_INDEX.match(path.stem)
        return (0, int(match.group(1)), path.name) if match else (1, 0, path.name)

    return tuple(sorted(files, key=order))


def load_annotations(path: Path) -> dict[str, dict]:
    """The ``Actions`` mapping of an annotations file, validated enough to fail clearly."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise AnnotationError(f"{path}: annotations file not found") from None
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}: not valid JSON ({err})") from None
    actions = data.get("Actions") if isinstance(data, dict) else None
    if not isinstance(actions, dict):
        raise AnnotationError(
            f"{path}: expected an object with an 'Actions' mapping of id -> action"
        )
    for action_id, entry in actions.items():
        if not isinstance(entry, dict):
            raise AnnotationError(f"{path}: Actions[{action_id!r}] should be an object")
    return actions


def read_split(
    split_dir: Path, *, require_labels: bool = True, require_views: bool = False
) -> tuple[list[ActionRecord], SkipReport]:
    """Read ``<split_dir>/annotations.json`` and the views on disk of each listed action.

    Args:
        split_dir: folder holding ``annotations.json`` and ``action_<id>/`` folders.
        require_labels: skip actions without usable labels (training/evaluation). When
            False (prediction), every listed action is kept, with its labels where usable.
        require_views: also skip actions without any view file on disk (training).
            Otherwise they are kept with no view: evaluation counts them as wrong, prediction
            lists them as failed, as the official evaluator counts a missing prediction.
    """
    split_dir = Path(split_dir)
    actions = load_annotations(split_dir / "annotations.json")
    report = SkipReport(source=str(split_dir), total=len(actions))
    records = []
    for action_id, entry in sorted(actions.items(), key=lambda item: _id_key(item[0])):
        labels = None
        if has_labels(entry):
            try:
                labels = labels_from_annotation(entry)
            except SkipAction as skip:
                if require_labels:
                    report.add(action_id, skip.reason)
                    continue
        elif require_labels:
            report.add(action_id, "no label fields")
            continue
        views = find_views(split_dir / f"action_{action_id}")
        if not views and require_views:
            report.add(action_id, "no view file on disk")
            continue
        # Kept without views: evaluation counts it wrong, prediction lists it as failed.
        records.append(ActionRecord(action_id, views, labels))
    return records, report


def discover_actions(root: Path) -> tuple[list[ActionRecord], SkipReport]:
    """Unlabeled actions from any prediction input.

    ``root`` may be a split (with or without annotations.json), a folder of ``action_*``
    folders, or one folder holding the views of a single action.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"predict input {root} is not a folder")
    if (root / "annotations.json").is_file():
        return read_split(root, require_labels=False)
    action_dirs = [p for p in root.iterdir() if p.is_dir() and _ACTION_DIR.match(p.name)]
    if action_dirs:
        return _records_from_dirs(action_dirs), SkipReport(str(root), total=len(action_dirs))
    views = find_views(root)
    report = SkipReport(source=str(root), total=1)
    if not views:
        return [], report  # not an action folder at all
    match = _ACTION_DIR.match(root.name)
    return [ActionRecord(match.group(1) if match else root.name, views)], report


def _records_from_dirs(dirs: Iterable[Path]) -> list[ActionRecord]:
    ids = [(_ACTION_DIR.match(p.name).group(1), p) for p in dirs]
    ids.sort(key=lambda item: _id_key(item[0]))
    return [ActionRecord(action_id, find_views(path)) for action_id, path in ids]


def _id_key(action_id: str) -> tuple[int, int | str]:
    return (0, int(action_id)) if action_id.isdigit() else (1, action_id)
