"""Bootstrap intervals: seeded, around the point estimate, narrower with more actions."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from mvcli.task.bootstrap import balanced_accuracies, bootstrap_intervals, interval_key

CLASSES = {"offence_severity": 4, "action": 8}
# The Test split's supports (251 actions).
SUPPORT = {"offence_severity": [21, 157, 68, 5], "action": [43, 107, 6, 28, 5, 11, 46, 5]}


def _split(repeat: int = 1, seed: int = 0, right: float = 0.6):
    rng = np.random.default_rng(seed)
    targets, correct = {}, {}
    for head, counts in SUPPORT.items():
        t = np.repeat(np.arange(len(counts)), np.asarray(counts) * repeat)
        targets[head] = rng.permutation(t)
        correct[head] = rng.random(len(t)) < right
    return targets, correct


def _point(targets, correct) -> dict[str, float]:
    point = {
        h: balanced_accuracies(targets[h][None], correct[h][None], n)[0] for h, n in CLASSES.items()
    }
    return point | {"leaderboard": float(np.mean(list(point.values())))}


def test_reproducible_with_the_seed():
    targets, correct = _split()
    first = bootstrap_intervals(targets, correct, CLASSES, seed=3)
    assert first == bootstrap_intervals(targets, correct, CLASSES, seed=3)
    assert first != bootstrap_intervals(targets, correct, CLASSES, seed=4)
    assert set(first) == {"offence_severity", "action", "leaderboard"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_intervals_contain_the_point_estimate(seed):
    targets, correct = _split(seed=seed)
    point = _point(targets, correct)
    for name, (low, high) in bootstrap_intervals(targets, correct, CLASSES, seed=seed).items():
        assert 0.0 <= low < point[name] < high <= 1.0, name


def test_intervals_narrow_as_the_split_grows():
    widths = []
    for repeat in (1, 4, 16):
        targets, correct = _split(repeat)
        found = bootstrap_intervals(targets, correct, CLASSES)
        widths.append(found["leaderboard"][1] - found["leaderboard"][0])
    assert widths[0] > 1.5 * widths[1] > 2.25 * widths[2]
    # A few hundred actions: several points wide, the leaderboard's noise.
    assert widths[0] > 0.05


def test_a_higher_level_gives_a_wider_interval():
    targets, correct = _split()
    narrow = bootstrap_intervals(targets, correct, CLASSES, level=0.5)["leaderboard"]
    wide = bootstrap_intervals(targets, correct, CLASSES, level=0.99)["leaderboard"]
    assert wide[0] < narrow[0] < narrow[1] < wide[1]
    assert (interval_key(0.95), interval_key(0.9), interval_key(0.975)) == (
        "ci95",
        "ci90",
        "ci97.5",
    )


def test_an_absent_class_is_left_out_as_sklearn_leaves_it_out():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 3, size=(50, 20))  # class 3 never a target
    predicted = rng.integers(0, 4, size=(50, 20))
    ours = balanced_accuracies(targets, targets == predicted, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        theirs = [balanced_accuracy_score(t, p) for t, p in zip(targets, predicted, strict=True)]
    np.testing.assert_allclose(ours, theirs)


def test_thousand_resamples_of_the_test_split_take_well_under_a_second():
    targets, correct = _split()
    start = time.perf_counter()
    bootstrap_intervals(targets, correct, CLASSES, resamples=1000)
    assert time.perf_counter() - start < 0.5


def test_no_actions_or_no_resamples_give_no_intervals():
    targets, correct = _split()
    assert bootstrap_intervals(targets, correct, CLASSES, resamples=0) == {}
    empty = {h: np.zeros(0, dtype=int) for h in CLASSES}
    assert bootstrap_intervals(empty, empty, CLASSES) == {}
