"""Throughput scalars of a real fit, read back from its TensorBoard events."""

from __future__ import annotations


def test_throughput_scalars_per_epoch(events):
    speed = [e.value for e in events.Scalars("train/actions_per_s")]
    views = [e.value for e in events.Scalars("train/views_per_s")]
    wait = [e.value for e in events.Scalars("train/data_wait_fraction")]
    assert len(speed) == len(views) == len(wait) == 2
    assert all(s > 0 for s in speed) and all(v >= s for v, s in zip(views, speed, strict=True))
    assert all(0 < w < 1 for w in wait)
