"""Per-item seeding of a dataset's random choices (see ``mvcli.data.sampler.SeededSampler``)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch
from torch.utils.data import Dataset


def run_seed() -> int:
    """The run's seed: ``seed_everything``'s (``PL_GLOBAL_SEED``), the same on every process
    of a distributed run; 0 when nothing was seeded."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class SeededItems(Dataset):
    """Serves ``dataset[index]`` for ``(index, seed)`` items with torch, numpy and Python's RNGs
    seeded from ``seed``; the caller's RNG states are left as they were.

    So data loading never moves the main process's RNG (dropout, flips), and a view choice is
    the same whether the item is read in the main process or by any worker.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            try:
                return self.dataset[index]
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)
