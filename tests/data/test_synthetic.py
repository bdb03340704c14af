"""The synthetic writer: real MVFoul layout, decodable clips, and labels carried by pixels only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
from av.video.reformatter import VideoReformatter

from mvcli.data import synthetic
from mvcli.data.synthetic import (
    REAL_ACTION_P,
    REAL_OFFENCE_SEVERITY_P,
    REAL_TEST_ACTION,
    REAL_TEST_OFFENCE_SEVERITY,
    draw_labels,
    real_test_labels,
    scaled_counts,
    write_synthetic_dataset,
)
from mvcli.data.taxonomy import (
    ACTION_CLASSES,
    OFFENCE_SEVERITY_FIELDS,
    SkipAction,
    labels_from_annotation,
    submission_entry,
)
from tests.conftest import REPO
from tests.evaluator import official_evaluate

SPLITS = {"Train": "train", "Valid": "valid", "Test": "test", "Chall": "challenge"}
LABEL_KEYS = {"Offence", "Severity", "Action class"}
# Key order of the real annotations.json files.
ENTRY_KEYS = [
    "UrlLocal",
    "Offence",
    "Contact",
    "Bodypart",
    "Upper body part",
    "Action class",
    "Severity",
    "Multiple fouls",
    "Try to play",
    "Touch ball",
    "Handball",
    "Handball offence",
    "Clips",
]
CLIP_KEYS = ["Url", "Camera type", "Timestamp", "Replay speed"]
# Small but with the default timing, so frames well before the event exist.
GEOMETRY = {"num_frames": 40, "event_frame": 20, "height": 32, "width": 56}
SMALL = {"train": 10, "valid": 4, "test": 4, "chall": 3, **GEOMETRY}


def read(root: Path, split: str) -> dict:
    return json.loads((root / split / "annotations.json").read_text())


def labels(entry: dict) -> tuple[int, int]:
    return (
        OFFENCE_SEVERITY_FIELDS.index((entry["Offence"], entry["Severity"])),
        ACTION_CLASSES.index(entry["Action class"]),
    )


def clean_labels(root: Path, split: str) -> dict[str, tuple[int, int]]:
    actions = read(root, split)["Actions"]
    return {k: labels(e) for k, e in actions.items() if _is_clean(e)}


def _is_clean(entry: dict) -> bool:
    pair = (entry.get("Offence"), entry.get("Severity"))
    return pair in OFFENCE_SEVERITY_FIELDS and entry.get("Action class") in ACTION_CLASSES


def decode(path: Path, stop: int) -> np.ndarray:
    """RGB frames [0, stop). One reformatter per clip: frame.to_ndarray(format=...) builds a
    new swscale context per frame, 20x slower."""
    scaler = VideoReformatter()
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(scaler.reformat(frame, format="rgb24").to_ndarray())
            if len(frames) == stop:
                break
    return np.stack(frames)


@pytest.fixture(scope="module")
def quirky(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("quirky")
    return root, write_synthetic_dataset(root, quirks=True, seed=3, **SMALL)


# ----------------------------------------------------------------------------- layout


def test_expected_keys_are_those_of_the_real_sample(sample_root):
    sample = json.loads((sample_root / "Test/annotations.json").read_text())
    assert list(sample) == ["Set", "Number of actions", "Actions"]
    for entry in sample["Actions"].values():
        assert list(entry) == ENTRY_KEYS
        assert all(list(clip) == CLIP_KEYS for clip in entry["Clips"])


def test_layout_and_annotation_format(quirky):
    root, summary = quirky
    for split, set_name in SPLITS.items():
        data = read(root, split)
        assert list(data) == ["Set", "Number of actions", "Actions"]
        assert data["Set"] == set_name
        assert (
            data["Number of actions"] == len(data["Actions"]) == summary["splits"][split]["actions"]
        )
        assert not (root / split / "annotations.json.tmp").exists()
        for action_id, entry in data["Actions"].items():
            # Same keys in the same order as the real files; Chall without any label key.
            assert list(entry) == (["UrlLocal", "Clips"] if split == "Chall" else ENTRY_KEYS)
            assert all(list(clip) == CLIP_KEYS for clip in entry["Clips"])
            urls = [c["Url"] for c in entry["Clips"]]
            assert urls == [
                f"Dataset/{split}/action_{action_id}/clip_{k}" for k in range(len(urls))
            ]
            assert entry["Clips"][0]["Camera type"] == "Main camera center"
            assert entry["Clips"][0]["Replay speed"] == 1.0
            assert (root / split / f"action_{action_id}").is_dir()
    assert summary["splits"]["Train"]["actions"] == 10 + len(synthetic.QUIRKS)
    assert summary["splits"]["Chall"] == {"actions": 3, "clips": _count_clips(root, "Chall")}


def _count_clips(root: Path, split: str) -> int:
    return len(list((root / split).glob("action_*/clip_*.mp4")))


def test_views_per_action_within_bounds(tmp_path):
    write_synthetic_dataset(tmp_path, min_views=3, max_views=3, **SMALL)
    for split in SPLITS:
        for action_id, entry in read(tmp_path, split)["Actions"].items():
            assert len(entry["Clips"]) == 3
            assert len(list((tmp_path / split / f"action_{action_id}").glob("*.mp4"))) == 3


def test_every_clip_decodes_to_the_requested_geometry(quirky):
    root, summary = quirky
    paths = sorted(root.glob("*/action_*/clip_*.mp4"))
    assert len(paths) == sum(s["clips"] for s in summary["splits"].values())
    for path in paths:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            assert stream.codec_context.pix_fmt == "yuv420p"
            assert stream.average_rate == 25
            frames = list(container.decode(stream))
        assert len(frames) == GEOMETRY["num_frames"]
        assert (frames[0].height, frames[0].width) == (GEOMETRY["height"], GEOMETRY["width"])


def test_quirks_exercise_the_official_skip_rules(quirky):
    root, summary = quirky
    for split in ("Train", "Valid", "Test"):
        actions = read(root, split)["Actions"]
        quirks = summary["splits"][split]["quirks"]
        assert sorted(quirks.values()) == sorted(synthetic.QUIRKS)
        by_name = {name: actions[action_id] for action_id, name in quirks.items()}
        assert by_name["action_dont_know"]["Action class"] == "Dont know"
        assert by_name["action_empty"]["Action class"] == ""
        assert by_name["offence_between"]["Offence"] == "Between"
        assert {by_name[n]["Severity"] for n in ("severity_2", "severity_4")} == {"2.0", "4.0"}
        for action_id, name in quirks.items():
            if name == "missing_clip":
                labels_from_annotation(actions[action_id])  # kept, valid labels
            else:
                with pytest.raises(SkipAction):
                    labels_from_annotation(actions[action_id])
        # Like the real action_4: clip_0..clip_3 listed, clip_2 not on disk.
        missing_id = next(k for k, v in quirks.items() if v == "missing_clip")
        listed = [c["Url"].rsplit("/", 1)[1] for c in actions[missing_id]["Clips"]]
        on_disk = sorted(p.stem for p in (root / split / f"action_{missing_id}").glob("*.mp4"))
        assert listed == ["clip_0", "clip_1", "clip_2", "clip_3"]
        assert on_disk == ["clip_0", "clip_1", "clip_3"]
    assert "quirks" not in summary["splits"]["Chall"]


def test_no_quirks_by_default_and_chall_without_labels(tmp_path):
    summary = write_synthetic_dataset(tmp_path, **SMALL)
    for split in ("Train", "Valid", "Test"):
        assert summary["splits"][split]["quirks"] == {}
        assert all(_is_clean(e) for e in read(tmp_path, split)["Actions"].values())
    assert all(not LABEL_KEYS & set(e) for e in read(tmp_path, "Chall")["Actions"].values())


# ----------------------------------------------------------------------------- labels


def test_same_seed_same_dataset_other_seed_differs(tmp_path):
    kwargs = {**SMALL, "train": 4, "valid": 2, "test": 2, "chall": 1}
    write_synthetic_dataset(tmp_path / "a", seed=5, **kwargs)
    write_synthetic_dataset(tmp_path / "b", seed=5, **kwargs)
    write_synthetic_dataset(tmp_path / "c", seed=6, **kwargs)
    for split in SPLITS:
        assert read(tmp_path / "a", split) == read(tmp_path / "b", split)
        assert read(tmp_path / "a", split) != read(tmp_path / "c", split)
    for path in sorted((tmp_path / "a").glob("*/action_*/clip_*.mp4")):
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes()


def test_shuffle_labels_breaks_pairing_keeps_videos_and_histograms(tmp_path):
    kwargs = {**SMALL, "train": 24, "valid": 0, "test": 0, "chall": 0}
    true = write_synthetic_dataset(tmp_path / "true", seed=2, **kwargs)
    shuffled = write_synthetic_dataset(tmp_path / "shuffled", seed=2, shuffle_labels=True, **kwargs)
    assert (
        true["splits"]["Train"]["offence_severity"]
        == shuffled["splits"]["Train"]["offence_severity"]
    )
    assert true["splits"]["Train"]["action"] == shuffled["splits"]["Train"]["action"]
    a, b = clean_labels(tmp_path / "true", "Train"), clean_labels(tmp_path / "shuffled", "Train")
    assert Counter(a.values()) == Counter(b.values())
    assert sum(a[k] != b[k] for k in a) >= len(a) // 2
    # Videos come from the true labels either way.
    for path in sorted((tmp_path / "true").glob("Train/action_*/clip_*.mp4")):
        assert (
            path.read_bytes()
            == (tmp_path / "shuffled" / path.relative_to(tmp_path / "true")).read_bytes()
        )


def test_balanced_labels_cycle_through_classes():
    off, act = draw_labels(40, "none", np.random.default_rng(0))
    assert np.bincount(off).tolist() == [10] * 4
    assert np.bincount(act).tolist() == [5] * 8


def test_real_imbalance_matches_the_real_distribution(tmp_path):
    off, act = draw_labels(4000, "real", np.random.default_rng(0))
    np.testing.assert_allclose(
        np.bincount(off, minlength=4) / 4000, REAL_OFFENCE_SEVERITY_P, atol=0.03
    )
    np.testing.assert_allclose(np.bincount(act, minlength=8) / 4000, REAL_ACTION_P, atol=0.03)
    summary = write_synthetic_dataset(tmp_path, imbalance="real", **{**SMALL, "train": 12})
    train = summary["splits"]["Train"]
    assert min(train["offence_severity"]) >= 1 and min(train["action"]) >= 1  # every class
    assert max(train["action"]) == train["action"][ACTION_CLASSES.index("Standing tackling")]


def test_real_imbalance_test_split_holds_every_class_in_the_real_test_proportions(tmp_path):
    # As `make demo-hard` writes it (48 Test actions, quirks), in tiny clips: the 49 actions
    # the evaluator counts (missing_clip's too) hold the real Test split's 21/157/68/5 and
    # 43/107/6/28/5/11/46/5, scaled, at least 3 of each class.
    tiny = {"num_frames": 8, "event_frame": 4, "height": 16, "width": 16}
    sizes = {"train": 0, "valid": 0, "test": 48, "chall": 0, "min_views": 1, "max_views": 1}
    write_synthetic_dataset(tmp_path, imbalance="real", quirks=True, **sizes, **tiny)
    counted = {}
    for action_id, entry in read(tmp_path, "Test")["Actions"].items():
        try:
            counted[action_id] = labels_from_annotation(entry)
        except SkipAction:
            continue
    off = np.bincount([c.offence_severity for c in counted.values()], minlength=4).tolist()
    act = np.bincount([c.action for c in counted.values()], minlength=8).tolist()
    assert len(counted) == 49
    assert off == [4, 29, 13, 3]
    assert act == [7, 18, 3, 5, 3, 3, 7, 3]
    # The classes above the minimum keep the real proportions to within one action.
    for got, real in ((off, REAL_TEST_OFFENCE_SEVERITY), (act, REAL_TEST_ACTION)):
        big = [i for i, n in enumerate(got) if n > 3]
        scale = sum(got[i] for i in big) / sum(real[i] for i in big)
        assert all(abs(got[i] - scale * real[i]) < 1 for i in big)

    # The official evaluator scores a prediction file of it without NaN (every class present).
    rng = np.random.default_rng(0)
    guesses = {k: submission_entry(int(rng.integers(4)), int(rng.integers(8))) for k in counted}
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps({"Actions": guesses}))
    official = official_evaluate(tmp_path / "Test/annotations.json", predictions)
    assert not any(np.isnan(v) for v in official.values()), official


def test_scaled_counts_keep_the_minimum_and_sum_to_n():
    assert scaled_counts(251, REAL_TEST_ACTION, 3).tolist() == REAL_TEST_ACTION
    assert scaled_counts(192, REAL_TEST_OFFENCE_SEVERITY, 3).tolist() == [16, 120, 52, 4]
    for n in range(0, 120):
        counts = scaled_counts(n, REAL_TEST_ACTION, 3)
        assert counts.sum() == n and counts.min() >= min(3, n // 8)
    for seed in range(5):  # exact histograms, Dives without a card, seeded
        off, act = real_test_labels(49, np.random.default_rng(seed))
        assert np.bincount(off).tolist() == [4, 29, 13, 3]
        assert np.bincount(act).tolist() == [7, 18, 3, 5, 3, 3, 7, 3]
        assert (off[act == ACTION_CLASSES.index("Dive")] <= 1).all()
    first, again = (
        real_test_labels(49, np.random.default_rng(0)),
        real_test_labels(49, np.random.default_rng(0)),
    )
    assert all((a == b).all() for a, b in zip(first, again, strict=True))


# ----------------------------------------------------------------------------- safety


def test_refuses_to_overwrite_an_existing_dataset(tmp_path):
    kwargs = {**SMALL, "train": 1, "valid": 1, "test": 1, "chall": 1}
    write_synthetic_dataset(tmp_path, **kwargs)
    with pytest.raises(FileExistsError, match="already holds a dataset"):
        write_synthetic_dataset(tmp_path, **kwargs)
    (tmp_path / "keep.txt").write_text("not ours")
    write_synthetic_dataset(tmp_path, overwrite=True, **{**kwargs, "train": 2})
    assert read(tmp_path, "Train")["Number of actions"] == 2
    assert (tmp_path / "keep.txt").exists()


def test_interrupted_run_leaves_no_annotations(tmp_path, monkeypatch):
    calls = []

    def failing_encode(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "encode_mp4", failing_encode)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_dataset(tmp_path, **SMALL)
    assert not list(tmp_path.glob("*/annotations.json"))
    with pytest.raises(FileExistsError):
        write_synthetic_dataset(tmp_path, **SMALL)


def test_rejects_odd_frame_sizes(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_synthetic_dataset(tmp_path, **{**SMALL, "height": 33})


def test_command_line(tmp_path):
    args = ["--root", str(tmp_path / "d"), "--train", "2", "--valid", "1", "--test", "1"]
    args += ["--chall", "1", "--num_frames", "8", "--event_frame", "4", "--height", "16"]
    args += ["--width", "16", "--imbalance", "real"]
    cmd = [sys.executable, "-m", "mvcli.data.synthetic", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # mvcli importable from the temporary cwd
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    assert json.loads(out)["splits"]["Train"]["actions"] == 2
    assert (tmp_path / "d/Chall/annotations.json").exists()


# ----------------------------------------------------------------------------- learnability


def hand_features(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Colour of the only saturated thing, and (motion, flash) of it over the frames."""
    rgb = frames.astype(np.float32)
    saturation = rgb.max(-1) - rgb.min(-1)
    peak = np.percentile(saturation, 99.5, axis=(1, 2))  # the square's saturation per frame
    mask = saturation > 0.5 * peak[:, None, None]
    colour = rgb[saturation > 0.5 * peak.max()].mean(0)  # bright frames only
    area = mask.sum((1, 2)) + 1e-6
    ys, xs = np.mgrid[: frames.shape[1], : frames.shape[2]]
    cx, cy = (mask * xs).sum((1, 2)) / area, (mask * ys).sum((1, 2)) / area
    motion = np.hypot(cx.std(), cy.std()) / np.sqrt(area.mean())
    flash = 1 - peak.min() / peak.max()
    return colour / colour.sum(), np.array([motion, flash])


def split_features(root: Path, split: str, windows: dict[str, tuple[int, int]]) -> dict:
    """Per window: action-averaged colour and temporal features, and both labels."""
    rows: dict[str, list] = {name: [] for name in windows}
    for action_id, (off, act) in clean_labels(root, split).items():
        clips = sorted((root / split / f"action_{action_id}").glob("clip_*.mp4"))
        videos = [decode(p, max(stop for _, stop in windows.values())) for p in clips]
        for name, (start, stop) in windows.items():
            feats = [hand_features(v[start:stop]) for v in videos]
            colour, temporal = (np.mean([f[i] for f in feats], 0) for i in range(2))
            rows[name].append((colour, temporal, off, act))
    return {name: [np.array(c) for c in zip(*r, strict=True)] for name, r in rows.items()}


def nearest_centroid_accuracy(x_train, y_train, x_test, y_test) -> float:
    classes = np.unique(y_train)
    centroids = np.stack([x_train[y_train == c].mean(0) for c in classes])
    predicted = classes[((x_test[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)]
    return float((predicted == y_test).mean())


@pytest.fixture(scope="module")
def separability(tmp_path_factory):
    """Nearest-centroid accuracy of hand features, true and shuffled labels, in/out of window."""
    kwargs = {**GEOMETRY, "train": 32, "valid": 32, "test": 0, "chall": 0, "seed": 11}
    windows = {"event": (12, 28), "before": (0, 6)}  # event_frame 20 +- 8; far before it
    result = {}
    for shuffle in (False, True):
        root = tmp_path_factory.mktemp("shuffled" if shuffle else "true")
        write_synthetic_dataset(root, shuffle_labels=shuffle, **kwargs)
        train, valid = (
            split_features(root, "Train", windows),
            split_features(root, "Valid", windows),
        )
        for name in windows:
            tr_colour, tr_temporal, tr_off, tr_act = train[name]
            va_colour, va_temporal, va_off, va_act = valid[name]
            result[shuffle, name] = {
                "action": nearest_centroid_accuracy(tr_colour, tr_act, va_colour, va_act),
                "offence_severity": nearest_centroid_accuracy(
                    tr_temporal, tr_off, va_temporal, va_off
                ),
            }
    return result


def test_labels_are_separable_from_pixels(separability):
    assert separability[False, "event"]["action"] >= 0.9
    assert separability[False, "event"]["offence_severity"] >= 0.9


def test_shuffled_labels_are_not_separable(separability):
    assert separability[True, "event"]["action"] <= 0.6
    assert separability[True, "event"]["offence_severity"] <= 0.6


def test_severity_needs_the_event_window(separability):
    # Far before the event every class is a still, steady square; the hue still shows.
    assert separability[False, "before"]["offence_severity"] <= 0.6
    assert separability[False, "before"]["action"] >= 0.9


@pytest.mark.parametrize("imbalance", ["none", "real"])
def test_dives_never_carry_a_card(imbalance):
    # The official evaluator compares a Dive's severity as "1.0": a carded Dive could never
    # be predicted right.
    dive = ACTION_CLASSES.index("Dive")
    for seed in range(20):
        off, act = draw_labels(64, imbalance, np.random.default_rng(seed), ensure_all=True)
        assert (off[act == dive] <= 1).all()


def test_the_dive_fix_keeps_the_severity_histogram():
    # The fix swaps severities between actions, it does not relabel: balanced stays balanced.
    for seed in range(20):
        off, _ = draw_labels(64, "none", np.random.default_rng(seed), ensure_all=True)
        assert np.bincount(off).tolist() == [16] * 4
