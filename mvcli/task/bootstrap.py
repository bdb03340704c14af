"""Bootstrap intervals of the leaderboard's numbers: how far they move with the actions drawn.

A split of a few hundred actions scores a class of five actions (Red card, Dive) on each of
them, so one action more or less right moves a balanced accuracy by several points. The
percentile bootstrap here resamples the actions with replacement (the same actions for both
heads, so the leaderboard's interval keeps their correlation) and recomputes every number on
each resample.

A class absent from a resample's targets is left out of that resample's balanced accuracy:
the mean recall is over the classes present in its targets, as sklearn's
``balanced_accuracy_score`` and :class:`mvcli.task.metrics.BalancedAccuracy` compute it (the
official evaluator would give NaN there, as it does for a split without the class).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# Resampled indices per chunk (int64): about 32 MiB however many actions and resamples.
_CHUNK_ITEMS = 4_000_000


def interval_key(level: float) -> str:
    """The name of an interval of coverage ``level``: ``ci95`` for 0.95, ``ci90``, ``ci97.5``."""
    return f"ci{round(level * 100, 6):g}"


def balanced_accuracies(targets: np.ndarray, correct: np.ndarray, num_classes: int) -> np.ndarray:
    """Balanced accuracy (0..1) of each row of ``targets``/``correct`` (shape (R, n)): mean
    recall over the classes present in the row's targets (NaN for an empty row)."""
    rows = targets.shape[0]
    flat = (targets + num_classes * np.arange(rows)[:, None]).ravel()
    size = rows * num_classes
    support = np.bincount(flat, minlength=size).reshape(rows, num_classes)
    hits = np.bincount(flat, weights=correct.ravel(), minlength=size).reshape(rows, num_classes)
    present = support > 0
    recall = np.divide(hits, support, out=np.zeros(hits.shape), where=present)
    with np.errstate(invalid="ignore", divide="ignore"):
        return recall.sum(axis=1) / present.sum(axis=1)


def bootstrap_intervals(
    targets: Mapping[str, np.ndarray],
    correct: Mapping[str, np.ndarray],
    num_classes: Mapping[str, int],
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of each head's balanced accuracy and of the leaderboard
    (their mean), as fractions (0..1).

    Args:
        targets: per head, each action's true class (the same actions, in the same order, for
            every head).
        correct: per head, whether each action is predicted right (as the evaluator counts
            it: an action without a prediction is wrong).
        num_classes: per head, the number of classes.
        resamples: how many resamples of the actions (with replacement).
        seed: the resampling's seed: the same seed and inputs give the same intervals.
        level: the interval's coverage, e.g. 0.95: the (1-level)/2 and (1+level)/2 quantiles.

    Returns:
        ``{head: (low, high), ..., "leaderboard": (low, high)}``; empty when there are no
        actions or no resamples.
    """
    heads = list(targets)
    n = len(targets[heads[0]]) if heads else 0
    if n == 0 or resamples <= 0:
        return {}
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    arrays = {
        h: (np.asarray(targets[h], dtype=np.int64), np.asarray(correct[h], bool)) for h in heads
    }
    rng = np.random.default_rng(seed)
    values: dict[str, list[np.ndarray]] = {h: [] for h in heads}
    chunk = max(1, _CHUNK_ITEMS // n)
    for start in range(0, resamples, chunk):
        index = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        for head, (t, c) in arrays.items():
            values[head].append(balanced_accuracies(t[index], c[index], num_classes[head]))
    joined = {h: np.concatenate(v) for h, v in values.items()}
    joined["leaderboard"] = np.mean([joined[h] for h in heads], axis=0)
    tail = (1.0 - level) / 2
    return {
        name: (float(np.nanquantile(v, tail)), float(np.nanquantile(v, 1.0 - tail)))
        for name, v in joined.items()
    }
