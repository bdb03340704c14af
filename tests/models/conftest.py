from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Run model tests on one intra-op thread, restored afterwards.

    These tests use tiny tensors, where a second thread buys nothing, and building the large
    backbones (random init of tens of millions of parameters) slows down ten-fold when two
    threads fight other processes for two cores.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
