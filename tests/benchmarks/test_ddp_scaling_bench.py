"""DDP scaling benchmark (``make bench``): ``mvcli fit`` on 1 vs 2 CPU processes."""

from __future__ import annotations

import pytest

from tests.benchmarks import ddp_scaling

pytestmark = pytest.mark.bench


def test_ddp_scaling_on_cpu():
    rows = ddp_scaling.main(["--processes", "1", "2"])
    assert [r["processes"] for r in rows] == [1, 2]
    assert all(r["samples_per_s"] > 0 and r["steps_timed"] > 0 for r in rows)
