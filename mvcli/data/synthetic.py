"""Write a synthetic dataset in the exact on-disk layout of SoccerNet-MVFoul.

``<root>/{Train,Valid,Test,Chall}/annotations.json`` and
``<root>/<Split>/action_<id>/clip_<k>.mp4`` (h264, yuv420p). Each action is one coloured
square seen by 2-4 "cameras" (per-view background, offset, scale, noise). The labels live in
the pixels only:

- action class (8): the hue of the square, 8 hues 45 degrees apart, saturated, while every
  background is nearly grey, so the object is the only saturated thing in the frame;
- offence-severity (4): what the square does within ``event_frame`` +- 12 frames (period 10
  frames): 0 stays still, 1 flashes (brightness dips to 20% and back, hue unchanged),
  2 orbits a circle of radius 0.6 object sizes (motion-blurred), 3 orbits and flashes.
  Outside that window the square is static and steady in every class, so the temporal
  window matters.

Why these patterns: they survive horizontal flips, reversed playback and 2x downscaling, and
they are two orientation-free yes/no cues (does the interior change, do the edges move) that
a ~160k-parameter 3D CNN learnt within 16 epochs in our trials. Telling horizontal from
vertical oscillation, tried first, stayed near chance for that model in 16 epochs.
Run ``python -m mvcli.data.synthetic --root DIR`` to write one from the command line.
"""

from __future__ import annotations

import colorsys
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np

from mvcli.data.taxonomy import ACTION_CLASSES, OFFENCE_SEVERITY_FIELDS
from mvcli.utils.io import atomic_write_text

# Offence-severity class -> temporal pattern of the square around the event.
MOTIONS: list[str] = ["static", "flash", "circle", "circle+flash"]
SPLITS: dict[str, str] = {"Train": "train", "Valid": "valid", "Test": "test", "Chall": "challenge"}

# Roughly the label distribution of the real MVFoul train split.
REAL_OFFENCE_SEVERITY_P = [0.13, 0.58, 0.27, 0.02]
REAL_ACTION_P = [0.15, 0.43, 0.04, 0.12, 0.04, 0.06, 0.13, 0.03]
# Class counts of the real Test split (251 actions), class index order. With imbalance="real"
# the synthetic Test split holds exactly these, scaled, with at least REAL_TEST_MIN_COUNT of
# each class: drawn at 2 % a 48-action Test split often has no red card, and the official
# evaluator's balanced accuracy of an absent class is NaN.
REAL_TEST_OFFENCE_SEVERITY = [21, 157, 68, 5]
REAL_TEST_ACTION = [43, 107, 6, 28, 5, 11, 46, 5]
REAL_TEST_MIN_COUNT = 3

# Actions appended to every labelled split when quirks=True: name -> label fields overriding
# the drawn ones. "missing_clip" keeps valid labels but lists a clip that is not on disk.
QUIRKS: dict[str, dict[str, str]] = {
    "action_dont_know": {"Action class": "Dont know"},
    "action_empty": {"Action class": ""},
    "offence_between": {"Offence": "Between", "Severity": ""},
    "severity_2": {"Offence": "Offence", "Severity": "2.0"},
    "severity_4": {"Offence": "Offence", "Severity": "4.0"},
    "missing_clip": {},
}
_MISSING_CLIP_VIEWS = 4
_MISSING_CLIP_INDEX = 2  # as the real sample's action_4: clip_0..3 listed, clip_2 absent

_REPLAY_CAMERAS = [
    "Close-up player or field referee",
    "Main behind the goal",
    "Main camera left",
    "Main camera right",
    "Close-up behind the goal",
    "Close-up side staff",
    "Spider camera",
    "Public",
    "Other",
]
_LEAGUES = ["england_epl", "spain_laliga", "italy_serie-a", "germany_bundesliga", "france_ligue-1"]
_TEAMS = ["Northfield", "Riverside", "Eastport", "Westbury", "Southgate", "Hillcrest"]

_MOTION_HALF_WIDTH = 12  # frames either side of the event with motion (ramps in its last 2)
_PERIOD = 10.0  # frames per oscillation: >1 period inside a 16-frame window
_SHUTTER = 1.5  # exposure in frames: motion blur over this much of the trajectory
_SHUTTER_SAMPLES = 6
_SIZE = 0.3  # object size in frame heights
_AMPLITUDE = 0.6  # motion amplitude in object sizes
_CRF = "20"


@dataclass(frozen=True)
class _Action:
    """One action to write: true labels (rendered) and the annotation fields (written)."""

    action_id: str
    offence_severity: int
    action: int
    num_views: int
    entry: dict[str, Any]  # the annotation entry, as written (Chall: no label keys)
    quirk: str | None = None


def write_synthetic_dataset(
    root: str | os.PathLike,
    *,
    train: int = 160,
    valid: int = 48,
    test: int = 48,
    chall: int = 16,
    num_frames: int = 40,
    event_frame: int = 20,
    height: int = 64,
    width: int = 112,
    fps: int = 25,
    min_views: int = 2,
    max_views: int = 4,
    imbalance: Literal["none", "real"] = "none",
    shuffle_labels: bool = False,
    quirks: bool = False,
    seed: int = 0,
    overwrite: bool = False,
) -> dict:
    """Write a synthetic SoccerNet-MVFoul dataset whose labels are learnable from pixels only.

    Args:
        root: Dataset folder; receives Train/, Valid/, Test/ and Chall/.
        train: Number of Train actions (quirk actions come on top).
        valid: Number of Valid actions (quirk actions come on top).
        test: Number of Test actions (quirk actions come on top).
        chall: Number of Chall actions (written without labels).
        num_frames: Frames per clip.
        event_frame: Frame of the event; the pattern that encodes offence-severity spans
            event_frame +- 12 frames (+-2 per view), the square is static elsewhere.
        height: Frame height in pixels (even).
        width: Frame width in pixels (even).
        fps: Frame rate of the clips.
        min_views: Fewest views (clips) per action.
        max_views: Most views (clips) per action.
        imbalance: "none" for balanced classes; "real": Train and Valid drawn from roughly
            the real Train split's distribution, Test with exactly the real Test split's
            class counts scaled (``scaled_counts``), at least 3 of each class from 24 actions.
        shuffle_labels: Render from the true labels, then permute the written labels across
            the actions of each split, so no signal links pixels and labels.
        quirks: Append actions that exercise the official skip rules ('Dont know', '',
            'Between', severity '2.0'/'4.0') and one whose annotations list a missing clip.
        seed: Random seed; the same seed writes the same dataset.
        overwrite: Replace the splits of an existing dataset under root.

    Returns:
        Summary: per split the number of actions and clips, label histograms (class index
        order) of the actions with valid labels, and the ids of quirk actions.

    Raises:
        FileExistsError: root already holds (part of) a dataset and overwrite is False.
        ValueError: inconsistent sizes or view counts.
    """
    _check_arguments(num_frames, event_frame, height, width, fps, min_views, max_views, imbalance)
    root = Path(root)
    _prepare_root(root, overwrite)
    start = time.perf_counter()
    counts = {"Train": train, "Valid": valid, "Test": test, "Chall": chall}
    plans = {}
    for split_index, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, split_index])
        plans[split] = _plan_split(
            split,
            counts[split],
            rng,
            min_views,
            max_views,
            imbalance,
            shuffle_labels,
            quirks and split != "Chall",
            ensure_all=split == "Train",
        )
    clips = {}
    for split_index, split in enumerate(SPLITS):
        clips[split] = 0
        for action_index, action in enumerate(plans[split]):
            rng = np.random.default_rng([seed, split_index, action_index, 1])
            clips[split] += _write_action(
                root / split / f"action_{action.action_id}",
                action,
                rng,
                num_frames,
                event_frame,
                height,
                width,
                fps,
            )
    # Annotations last and atomically: a split without annotations.json is incomplete.
    for split in SPLITS:
        atomic_write_text(
            root / split / "annotations.json",
            json.dumps(_annotations(split, plans[split]), indent=4) + "\n",
        )
    summary = {
        "root": str(root),
        "seconds": round(time.perf_counter() - start, 2),
        "splits": {split: _split_summary(split, plans[split], clips[split]) for split in SPLITS},
    }
    return summary


def _check_arguments(
    num_frames: int,
    event_frame: int,
    height: int,
    width: int,
    fps: int,
    min_views: int,
    max_views: int,
    imbalance: str,
) -> None:
    if num_frames < 1 or not 0 <= event_frame < num_frames:
        raise ValueError(f"need 0 <= event_frame ({event_frame}) < num_frames ({num_frames})")
    if height < 16 or width < 16 or height % 2 or width % 2:
        raise ValueError(f"height and width must be even and >= 16 (yuv420p), got {height}x{width}")
    if fps < 1:
        raise ValueError(f"fps must be positive, got {fps}")
    if not 1 <= min_views <= max_views:
        raise ValueError(f"need 1 <= min_views ({min_views}) <= max_views ({max_views})")
    if imbalance not in ("none", "real"):
        raise ValueError(f"imbalance must be 'none' or 'real', got {imbalance!r}")


def _prepare_root(root: Path, overwrite: bool) -> None:
    existing = [root / s for s in SPLITS if (root / s).exists() and any((root / s).iterdir())]
    if existing and not overwrite:
        names = ", ".join(p.name for p in existing)
        raise FileExistsError(
            f"{root} already holds a dataset (non-empty {names}); pass overwrite=True "
            "(--overwrite true) to replace it"
        )
    # Only the split folders are ours to delete: root may hold other things.
    for path in existing:
        shutil.rmtree(path)
    root.mkdir(parents=True, exist_ok=True)


# ----------------------------------------------------------------------------- labels


def draw_labels(
    n: int, imbalance: str, rng: np.random.Generator, ensure_all: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Draw (offence_severity, action) class indices for n actions.

    Args:
        n: Number of actions.
        imbalance: "none" cycles through the classes (then shuffles), "real" samples the
            real train distribution.
        rng: Random generator.
        ensure_all: Make every class appear at least once when n allows it.

    Returns:
        Two int arrays of length n.
    """
    if imbalance == "none":
        # Independent permutations so the two heads are not correlated.
        off, act = rng.permutation(np.arange(n) % 4), rng.permutation(np.arange(n) % 8)
        _dives_without_card(off, act)
        return off, act
    off = rng.choice(4, size=n, p=REAL_OFFENCE_SEVERITY_P)
    act = rng.choice(8, size=n, p=REAL_ACTION_P)
    if ensure_all:
        _ensure_all_classes(off, 4)
        _ensure_all_classes(act, 8)
    _dives_without_card(off, act)
    return off, act


def real_test_labels(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(offence_severity, action) class indices for n Test actions: the real Test split's
    class counts scaled to n (``scaled_counts``), paired at random.

    Both heads' histograms are exact; the pairing is a seeded shuffle of each head's labels,
    then Dives get their no-card severities by swaps, which keep both histograms.

    Args:
        n: Number of actions.
        rng: Random generator.

    Returns:
        Two int arrays of length n.
    """
    off_counts = scaled_counts(n, REAL_TEST_OFFENCE_SEVERITY, REAL_TEST_MIN_COUNT)
    act_counts = scaled_counts(n, REAL_TEST_ACTION, REAL_TEST_MIN_COUNT)
    off = rng.permutation(np.repeat(np.arange(4), off_counts))
    act = rng.permutation(np.repeat(np.arange(8), act_counts))
    _dives_without_card(off, act)
    return off, act


def scaled_counts(n: int, counts: Sequence[int], minimum: int) -> np.ndarray:
    """Split n items among classes in proportion to ``counts``, each getting at least
    ``minimum`` (``n // len(counts)`` when n is too small for that).

    The classes whose share falls below the minimum get the minimum; the rest share what is
    left in proportion to their counts, rounded by largest remainder (ties: larger count).

    Args:
        n: Items to split.
        counts: Reference count of each class (positive).
        minimum: Fewest items of a class.

    Returns:
        int array of len(counts), summing to n.
    """
    weights = np.asarray(counts, dtype=float)
    minimum = min(minimum, n // len(weights))
    held = np.zeros(len(weights), dtype=bool)  # classes given the minimum
    share = np.zeros(len(weights))
    while not held.all():
        free = weights * ~held
        share = (n - minimum * held.sum()) * free / free.sum()
        below = ~held & (share < minimum)
        if not below.any():
            break
        held |= below
    result = np.where(held, minimum, np.floor(share)).astype(int)
    remainder = np.where(held, -1.0, share - np.floor(share))
    order = np.lexsort((-weights, -remainder))  # the last key sorts first
    result[order[: n - result.sum()]] += 1
    return result


def _dives_without_card(off: np.ndarray, act: np.ndarray) -> None:
    """Give every Dive offence-severity 0 or 1, swapping with non-Dive actions.

    The official evaluator forces a Dive's ground-truth severity to "1.0" before comparing,
    so a Dive with a card can never be predicted right: it would cap the official score of a
    perfect model below 100. Swapping keeps both heads' histograms exactly as drawn.
    """
    dive = ACTION_CLASSES.index("Dive")
    for i in np.flatnonzero((act == dive) & (off >= 2)):
        partners = np.flatnonzero((act != dive) & (off <= 1))
        if len(partners) == 0:
            off[i] = 1  # nothing to swap with (tiny sets): keep the action, lose the card
            continue
        j = partners[0]
        off[i], off[j] = off[j], off[i]


def _ensure_all_classes(labels: np.ndarray, k: int) -> None:
    if len(labels) < k:
        return
    for c in range(k):
        if not (labels == c).any():
            # Take one sample from the most frequent class: it can spare one.
            donor = np.bincount(labels, minlength=k).argmax()
            labels[np.flatnonzero(labels == donor)[0]] = c


def _plan_split(
    split: str,
    n: int,
    rng: np.random.Generator,
    min_views: int,
    max_views: int,
    imbalance: str,
    shuffle_labels: bool,
    quirks: bool,
    ensure_all: bool,
) -> list[_Action]:
    # The Test split's quota covers every action the evaluator counts: missing_clip's too.
    quota = imbalance == "real" and split == "Test"
    if quota:
        off, act = real_test_labels(n + (1 if quirks else 0), rng)
    else:
        off, act = draw_labels(n, imbalance, rng, ensure_all)
    views = rng.integers(min_views, max_views + 1, size=n)
    # Drawn either way so that shuffle_labels changes nothing but the label pairing.
    permutation = np.random.default_rng(rng.integers(2**63)).permutation(n)
    written = permutation if shuffle_labels else np.arange(n)
    labelled = split != "Chall"
    actions = []
    for i in range(n):
        j = written[i]
        fields = _label_fields(int(off[j]), int(act[j]), rng) if labelled else None
        entry = _entry(split, str(i), int(views[i]), fields, rng)
        actions.append(_Action(str(i), int(off[i]), int(act[i]), int(views[i]), entry))
    if quirks:
        for k, (name, override) in enumerate(QUIRKS.items()):
            # Dive is exempt from some skip rules; keep the skip quirks really skipped.
            o, a = int(rng.integers(1, 4)), int(rng.integers(0, 7))
            if quota and name == "missing_clip":
                o, a = int(off[n]), int(act[n])
            num_views = _MISSING_CLIP_VIEWS if name == "missing_clip" else min_views
            fields = {**_label_fields(o, a, rng), **override}
            entry = _entry(split, str(n + k), num_views, fields, rng)
            actions.append(_Action(str(n + k), o, a, num_views, entry, quirk=name))
    return actions


def _entry(
    split: str, action_id: str, num_views: int, fields: dict | None, rng: np.random.Generator
) -> dict[str, Any]:
    """One annotation entry, keys in the order of the real files."""
    entry: dict[str, Any] = {"UrlLocal": _url_local(rng)}
    entry.update(fields or {})
    entry["Clips"] = _clip_entries(split, action_id, num_views, rng)
    return entry


def _label_fields(offence_severity: int, action: int, rng: np.random.Generator) -> dict:
    """Annotation label fields; the non-head fields are random, independent of the labels."""
    offence, severity = OFFENCE_SEVERITY_FIELDS[offence_severity]
    upper = rng.random() < 0.3
    return {
        "Offence": offence,
        "Contact": str(rng.choice(["With contact", "Without contact"], p=[0.8, 0.2])),
        "Bodypart": "Upper body" if upper else "Under body",
        "Upper body part": str(rng.choice(["Use of arms", "Use of shoulder"])) if upper else "",
        "Action class": ACTION_CLASSES[action],
        "Severity": severity,
        "Multiple fouls": str(rng.choice(["No", "Yes", ""], p=[0.8, 0.1, 0.1])),
        "Try to play": str(rng.choice(["Yes", "No", ""], p=[0.6, 0.3, 0.1])),
        "Touch ball": str(rng.choice(["No", "Yes", "Maybe", ""], p=[0.6, 0.2, 0.1, 0.1])),
        "Handball": "No handball",
        "Handball offence": "",
    }


def _annotations(split: str, actions: Sequence[_Action]) -> dict:
    entries = {action.action_id: action.entry for action in actions}
    return {"Set": SPLITS[split], "Number of actions": len(actions), "Actions": entries}


def _url_local(rng: np.random.Generator) -> str:
    year = int(rng.integers(2014, 2017))
    home, away = rng.choice(_TEAMS, size=2, replace=False)
    month, day = int(rng.integers(1, 13)), int(rng.integers(1, 29))
    kickoff = f"{int(rng.integers(14, 22))}-{rng.choice(['00', '30', '45'])}"
    date = f"{year}-{month:02d}-{day:02d} - {kickoff}"
    score = f"{int(rng.integers(0, 4))} - {int(rng.integers(0, 4))}"
    return f"{rng.choice(_LEAGUES)}\\{year}-{year + 1}\\{date} {home} {score} {away}"


def _clip_entries(
    split: str, action_id: str, num_views: int, rng: np.random.Generator
) -> list[dict]:
    timestamp = int(rng.integers(10_000, 2_700_000))
    clips = []
    for k in range(num_views):
        live = k == 0
        clips.append(
            {
                "Url": f"Dataset/{split}/action_{action_id}/clip_{k}",
                "Camera type": "Main camera center" if live else str(rng.choice(_REPLAY_CAMERAS)),
                "Timestamp": timestamp + (0 if live else int(rng.integers(10_000, 40_000))),
                "Replay speed": 1.0
                if live or rng.random() < 0.3
                else round(rng.uniform(1.2, 4.4), 1),
            }
        )
    return clips


def _split_summary(split: str, actions: Sequence[_Action], clips: int) -> dict:
    summary: dict[str, Any] = {"actions": len(actions), "clips": clips}
    if split == "Chall":
        return summary
    off = np.zeros(4, dtype=int)
    act = np.zeros(8, dtype=int)
    for action in actions:
        if action.quirk in (None, "missing_clip"):
            fields = action.entry
            off[OFFENCE_SEVERITY_FIELDS.index((fields["Offence"], fields["Severity"]))] += 1
            act[ACTION_CLASSES.index(fields["Action class"])] += 1
    summary["offence_severity"] = off.tolist()
    summary["action"] = act.tolist()
    summary["quirks"] = {a.action_id: a.quirk for a in actions if a.quirk}
    return summary


# ----------------------------------------------------------------------------- pixels


def _write_action(
    folder: Path,
    action: _Action,
    rng: np.random.Generator,
    num_frames: int,
    event_frame: int,
    height: int,
    width: int,
    fps: int,
) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    # Shared by all views: the same event seen by different cameras.
    phase = rng.uniform(0, 2 * np.pi)
    written = 0
    for k in range(action.num_views):
        frames = render_view(
            action.offence_severity,
            action.action,
            rng,
            num_frames=num_frames,
            event_frame=event_frame,
            height=height,
            width=width,
            phase=phase,
        )
        if action.quirk == "missing_clip" and k == _MISSING_CLIP_INDEX:
            continue
        encode_mp4(folder / f"clip_{k}.mp4", frames, fps)
        written += 1
    return written


def render_view(
    offence_severity: int,
    action: int,
    rng: np.random.Generator,
    *,
    num_frames: int,
    event_frame: int,
    height: int,
    width: int,
    phase: float = 0.0,
) -> np.ndarray:
    """Render one camera view of an action.

    Args:
        offence_severity: Class 0..3, rendered as the temporal pattern ``MOTIONS[class]``.
        action: Class 0..7, rendered as the hue of the square.
        rng: Draws this view's camera: background, offset, scale, timing jitter, noise.
        num_frames: Number of frames.
        event_frame: Centre of the window where the pattern plays.
        height: Frame height.
        width: Frame width.
        phase: Oscillation phase, shared by the views of one action.

    Returns:
        uint8 array (num_frames, height, width, 3), RGB.
    """
    size = _SIZE * height * rng.uniform(0.8, 1.2)
    amplitude = _AMPLITUDE * size
    # Sample times within each frame's exposure: a moving square smears along its path, as
    # fast motion does on a real camera, so motion shows in single frames too.
    start = np.arange(num_frames) - event_frame - rng.integers(-2, 3)
    times = start[:, None] - np.linspace(0, _SHUTTER, _SHUTTER_SAMPLES)[None, :]
    motion = MOTIONS[offence_severity]
    dx, dy = _trajectory(motion, times, amplitude, phase)
    # Keep the whole motion inside the frame wherever the camera puts it.
    reach = size / 2 + amplitude + 1
    cx = _camera_offset(rng, reach, width) + dx
    cy = _camera_offset(rng, reach, height) + dy
    alpha = _blurred_square(cx, cy, size / 2, height, width)[..., None]
    colour = _object_colour(action, rng)
    background = _background(rng, height, width)
    frames = background * (255 * (1 - alpha)) + _brightness(motion, start, phase) * colour * alpha
    # Per-frame sensor noise and flicker: the background is never constant. Integer noise is
    # several times cheaper to draw than Gaussian noise, and rendering dominates the runtime.
    noise = rng.integers(-8, 9, size=frames.shape, dtype=np.int16)
    noise += rng.integers(-4, 5, size=(num_frames, 1, 1, 1), dtype=np.int16)
    return np.clip(frames.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _trajectory(
    motion: str, times: np.ndarray, amplitude: float, phase: float
) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (dx, dy) from the resting point at the given times relative to the event."""
    if "circle" not in motion:
        return np.zeros_like(times), np.zeros_like(times)
    angle = 2 * np.pi * times / _PERIOD + phase
    radius = amplitude * _envelope(times)
    return radius * np.sin(angle), radius * np.cos(angle)


def _brightness(motion: str, times: np.ndarray, phase: float) -> np.ndarray:
    """Object brightness per frame (T, 1, 1, 1), 0..255: "flash" dims it to 20% and back."""
    if "flash" not in motion:
        return np.full((len(times), 1, 1, 1), 255, dtype=np.float32)
    dim = 0.4 * (1 - np.cos(2 * np.pi * times / _PERIOD + phase)) * _envelope(times)
    return (255 * (1 - dim)).astype(np.float32)[:, None, None, None]


def _envelope(times: np.ndarray) -> np.ndarray:
    """1 within +-10 frames of the event, 0 beyond +-12: the pattern fades in and out."""
    return np.clip((_MOTION_HALF_WIDTH - np.abs(times)) / 2.0, 0.0, 1.0)


def _camera_offset(rng: np.random.Generator, reach: float, extent: int) -> float:
    return rng.uniform(reach, extent - reach) if extent > 2 * reach else extent / 2.0


def _blurred_square(
    cx: np.ndarray, cy: np.ndarray, half: float, height: int, width: int
) -> np.ndarray:
    """Coverage of a square averaged over each frame's sample times: (T, H, W) in [0, 1].

    Args:
        cx: Centre x per frame and sample time (T, S).
        cy: Centre y per frame and sample time (T, S).
        half: Half the side of the square.
        height: Frame height.
        width: Frame width.
    """
    # An anti-aliased square's coverage is the product of two 1D coverages: (T,S,H)x(T,S,W).
    xs = np.arange(width, dtype=np.float32) + 0.5
    ys = np.arange(height, dtype=np.float32) + 0.5
    cover_x = np.clip(half + 0.5 - np.abs(xs - cx[..., None].astype(np.float32)), 0, 1)
    cover_y = np.clip(half + 0.5 - np.abs(ys - cy[..., None].astype(np.float32)), 0, 1)
    return (cover_y[..., :, None] * cover_x[..., None, :]).mean(axis=1)


def _object_colour(action: int, rng: np.random.Generator) -> np.ndarray:
    # Hues 45 degrees apart; per-camera jitter stays far below half that spacing.
    hue = (action / 8 + rng.uniform(-0.02, 0.02)) % 1.0
    return np.array(colorsys.hsv_to_rgb(hue, 1.0, rng.uniform(0.85, 1.0)), dtype=np.float32)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A nearly grey pitch: random tint and brightness, mowing stripes and blotches."""
    base = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0, 0.25), rng.uniform(0.3, 0.7))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(12, 30)
    stripes = 0.05 * np.sign(np.sin(2 * np.pi * (xs * np.cos(angle) + ys * np.sin(angle)) / period))
    blotches = rng.normal(0, 0.06, size=(height // 8 + 1, width // 8 + 1))
    blotches = np.kron(blotches, np.ones((8, 8)))[:height, :width]
    shade = (stripes + blotches).astype(np.float32)[..., None]
    return np.clip(np.asarray(base, dtype=np.float32) + shade, 0, 1)


def encode_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int) -> None:
    """Encode RGB uint8 frames (T, H, W, 3) as h264 yuv420p mp4.

    Args:
        path: Output file.
        frames: RGB uint8 frames, even height and width.
        fps: Frame rate.
    """
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        # Bit-exact files: with macroblock-tree rate control x264 wrote different bytes for the
        # same input from one process to the next; threads could do the same.
        stream.options = {
            "crf": _CRF,
            "preset": "veryfast",
            "threads": "1",
            "x264-params": "mbtree=0",
        }
        for image in rgb_to_yuv420p(frames):
            frame = av.VideoFrame.from_ndarray(image, format="yuv420p")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def rgb_to_yuv420p(frames: np.ndarray) -> np.ndarray:
    """BT.601 limited-range conversion, the decoders' default for untagged h264.

    Done here rather than by swscale inside PyAV: swscale's SIMD paths are not bit-exact
    across CPUs, x264's are, so the same seed gives the same files on any machine.

    Args:
        frames: RGB uint8 frames (T, H, W, 3), even height and width.

    Returns:
        uint8 (T, H * 3 // 2, W): the Y plane, then the U and V planes, as PyAV lays out
        yuv420p frames.
    """
    rgb = frames.astype(np.int32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    # The standard's 8-bit fixed-point form: exact integer maths, the same on every machine.
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    t, h, w = y.shape
    # Chroma is linear in RGB, so sum each 2x2 block of RGB first and convert once per block.
    quad = rgb[:, 0::2, 0::2] + rgb[:, 1::2, 0::2] + rgb[:, 0::2, 1::2] + rgb[:, 1::2, 1::2]
    r, g, b = quad[..., 0], quad[..., 1], quad[..., 2]
    u = ((-38 * r - 74 * g + 112 * b + 512) >> 10) + 128
    v = ((112 * r - 94 * g - 18 * b + 512) >> 10) + 128
    planes = [y, u.reshape(t, h // 4, w), v.reshape(t, h // 4, w)]
    return np.concatenate(planes, axis=1).astype(np.uint8)


def _main() -> None:
    from jsonargparse import CLI

    # as_positional=False: the documented form is --root DIR.
    prog = "python -m mvcli.data.synthetic"  # not "synthetic.py"
    summary = CLI(write_synthetic_dataset, as_positional=False, prog=prog)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    _main()
