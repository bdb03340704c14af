"""Read a split (or any folder of actions) into ActionRecords plus a report of what was skipped.

View paths always come from what is on disk under ``action_<id>/``; the annotation ``Url``
fields are never used to build paths (they differ between releases and lack extensions).

Nothing outside the dataset is read: an action id naming anything but a folder directly under
the split (path separators, ``..``) is refused, and symlinked folders or views resolving
outside the dataset root are left out (unless ``allow_outside_root``), each counted in the
report with the action id.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from mvcli.data.taxonomy import Labels, SkipAction, has_labels, labels_from_annotation
from mvcli.utils.errors import DataError

Split = Literal["Train", "Valid", "Test", "Chall"]
SPLITS: tuple[str, ...] = get_args(Split)
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".mkv", ".avi", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".ts", ".mts", ".wmv"}
)
_ACTION_DIR = re.compile(r"^action_(.+)$")
_CLIP_INDEX = re.compile(r"^clip_(\d+)$")
# The live broadcast's view in MVFoul (file stem); every other view of an action is a replay.
LIVE_VIEW = "clip_0"
VIEW_CHOICES = ("all", "live", "replays")
OUTSIDE_ROOT = "views linking outside the dataset root left out (data.allow_outside_root)"


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
    """Actions left out of a split, counted by reason (reported once, not per epoch), and
    actions kept despite a problem (``notes``: e.g. some views left out)."""

    source: str
    total: int = 0
    reasons: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    notes: Counter = field(default_factory=Counter)

    def add(self, action_id: str, reason: str, kept: bool = False) -> None:
        (self.notes if kept else self.reasons)[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(action_id)

    @property
    def skipped(self) -> int:
        return sum(self.reasons.values())

    def summary(self) -> str:
        head = f"{self.source}: {self.total - self.skipped}/{self.total} actions kept"
        lines = [f"{head}; skipped {self.skipped}:" if self.reasons else head]
        lines += self._rows(self.reasons)
        if self.notes:
            lines += ["  kept, with a problem:", *self._rows(self.notes)]
        return "\n".join(lines)

    def _rows(self, counts: Counter) -> list[str]:
        return [
            f"  {count:5d}  {reason}  (e.g. action {', '.join(self.examples[reason])})"
            for reason, count in counts.most_common()
        ]


LABEL_FIELDS = ("Action class", "Offence", "Severity")


def label_field_error(entry: dict) -> str | None:
    """Why the label fields of an entry are malformed (each must be a string or absent)."""
    for name in LABEL_FIELDS:
        if name in entry and not isinstance(entry[name], str):
            kind = "null" if entry[name] is None else type(entry[name]).__name__
            return f"label field {name!r} is {kind}, expected a string"
    return None


def check_action_id(action_id: str) -> str | None:
    """Why ``action_id`` cannot name a folder directly under the split; None if it can."""
    if not action_id or action_id in (".", ".."):
        return "invalid action id (empty, '.' or '..')"
    if any(sep in action_id for sep in ("/", "\\", os.sep, os.altsep or "/", "\0")):
        return "invalid action id (path separator in the id)"
    if ".." in action_id:
        return "invalid action id ('..' in the id)"
    return None


def is_inside(path: Path, root: Path) -> bool:
    """Whether ``path``, with every symlink resolved, lies inside ``root`` (also resolved)."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # unreadable or a symlink loop
        return False


def find_views(
    action_dir: Path, root: Path | None = None, outside: list[Path] | None = None
) -> tuple[Path, ...]:
    """Video files of one action, clip_<k> files in index order first, then others by name.

    Args:
        action_dir: the action's folder.
        root: when given, views (and the folder) resolving outside it are left out.
        outside: receives the views left out that way.
    """
    if not action_dir.is_dir():
        return ()
    files = [
        p for p in action_dir.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS
    ]
    if root is not None:
        escaping = [p for p in files if not is_inside(p, root)]
        if outside is not None:
            outside.extend(escaping)
        files = [p for p in files if p not in escaping]

    def order(path: Path) -> tuple[int, int, str]:
        match = _CLIP_INDEX.match(path.stem)
        return (0, int(match.group(1)), path.name) if match else (1, 0, path.name)

    return tuple(sorted(files, key=order))


def choose_views(views: tuple[Path, ...], choice: str | int) -> tuple[Path, ...]:
    """The views of one action that a view choice keeps, in file order.

    Args:
        views: the action's views, as :func:`find_views` orders them (clip_0 first).
        choice: ``all``; ``live``: the view named ``clip_0`` (the live broadcast);
            ``replays``: every other view; an int k: the first k views.
    """
    if choice == "all":
        return views
    if choice == "live":
        return tuple(v for v in views if v.stem == LIVE_VIEW)
    if choice == "replays":
        return tuple(v for v in views if v.stem != LIVE_VIEW)
    if isinstance(choice, int) and not isinstance(choice, bool) and choice >= 1:
        return views[:choice]
    raise ValueError(
        f"view choice {choice!r}: expected one of {', '.join(VIEW_CHOICES)} or a number k >= 1"
    )


def load_annotations(path: Path) -> dict[str, dict]:
    """The ``Actions`` mapping of an annotations file, validated enough to fail clearly."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AnnotationError(f"{path}: annotations file not found") from None
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}: not valid JSON ({err})") from None
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not UTF-8 text, so not JSON ({err.reason})") from None
    except OSError as err:
        raise AnnotationError(f"{path}: cannot be read ({err.strerror or err})") from None
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
    split_dir: Path,
    *,
    require_labels: bool = True,
    require_views: bool = False,
    root: Path | None = None,
    allow_outside_root: bool = False,
) -> tuple[list[ActionRecord], SkipReport]:
    """Read ``<split_dir>/annotations.json`` and the views on disk of each listed action.

    Args:
        split_dir: folder holding ``annotations.json`` and ``action_<id>/`` folders.
        require_labels: skip actions without usable labels (training/evaluation). When
            False (prediction), every listed action is kept, with its labels where usable.
        require_views: also skip actions without any view file on disk (training).
            Otherwise they are kept with no view: evaluation counts them as wrong, prediction
            lists them as failed, as the official evaluator counts a missing prediction.
        root: the dataset root no view may resolve outside of (default: the split's parent).
        allow_outside_root: accept views that symlinks place outside ``root``.
    """
    split_dir = Path(split_dir)
    bound = None if allow_outside_root else Path(root if root is not None else split_dir.parent)
    actions = load_annotations(split_dir / "annotations.json")
    report = SkipReport(source=str(split_dir), total=len(actions))
    records = []
    for action_id, entry in sorted(actions.items(), key=lambda item: _id_key(item[0])):
        if (invalid := check_action_id(action_id)) is not None:
            report.add(action_id, invalid)
            continue
        labels = None
        if (malformed := label_field_error(entry)) is not None:
            # Reported with the id and field; left out of training and evaluation (guessing a
            # label from 3 or null could only teach or score the wrong class).
            report.add(action_id, malformed, kept=not require_labels)
            if require_labels:
                continue
        elif has_labels(entry):
            try:
                labels = labels_from_annotation(entry)
            except SkipAction as skip:
                if require_labels:
                    report.add(action_id, skip.reason)
                    continue
        elif require_labels:
            report.add(action_id, "no label fields")
            continue
        views = _confined_views(split_dir / f"action_{action_id}", bound, report, action_id)
        if not views and require_views:
            report.add(action_id, "no view file on disk")
            continue
        # Kept without views: evaluation counts it wrong, prediction lists it as failed.
        records.append(ActionRecord(action_id, views, labels))
    return records, report


def discover_actions(
    root: Path, allow_outside_root: bool = False
) -> tuple[list[ActionRecord], SkipReport]:
    """Unlabeled actions from any prediction input.

    ``root`` may be a split (with or without annotations.json), a folder of ``action_*``
    folders, or one folder holding the views of a single action. Nothing resolving outside
    ``root`` is read unless ``allow_outside_root``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"predict input {root} is not a folder (data.predict_root)")
    bound = None if allow_outside_root else root
    if (root / "annotations.json").is_file():
        return read_split(
            root, require_labels=False, root=root, allow_outside_root=allow_outside_root
        )
    action_dirs = [p for p in root.iterdir() if p.is_dir() and _ACTION_DIR.match(p.name)]
    if action_dirs:
        report = SkipReport(str(root), total=len(action_dirs))
        return _records_from_dirs(action_dirs, bound, report), report
    report = SkipReport(source=str(root), total=1)
    views = _confined_views(root, bound, report, root.name)
    if not views:
        return [], report  # not an action folder at all
    match = _ACTION_DIR.match(root.name)
    return [ActionRecord(match.group(1) if match else root.name, views)], report


def _records_from_dirs(
    dirs: Iterable[Path], bound: Path | None, report: SkipReport
) -> list[ActionRecord]:
    ids = [(_ACTION_DIR.match(p.name).group(1), p) for p in dirs]
    ids.sort(key=lambda item: _id_key(item[0]))
    return [ActionRecord(i, _confined_views(path, bound, report, i)) for i, path in ids]


def _confined_views(
    action_dir: Path, bound: Path | None, report: SkipReport, action_id: str
) -> tuple[Path, ...]:
    """:func:`find_views` inside ``bound``; views left out are noted in ``report``."""
    outside: list[Path] = []
    views = find_views(action_dir, bound, outside)
    if outside:
        report.add(action_id, OUTSIDE_ROOT, kept=True)
    return views


def _id_key(action_id: str) -> tuple[int, int | str]:
    return (0, int(action_id)) if action_id.isdigit() else (1, action_id)
