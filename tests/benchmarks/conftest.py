"""Fixtures shared by the benchmarks."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """torch on one intra-op thread, as in a DataLoader worker. On a shared 2-core machine two
    threads made steps slower and far noisier."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
