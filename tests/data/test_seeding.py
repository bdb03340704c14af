"""SeededItems: an item's random choices depend on (index, seed) only, in any process, and
leave the caller's random states alone."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mvcli.data.seeding import SeededItems


class _Draws(Dataset):
    """One draw from each of torch's, numpy's and Python's global generators per item."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict:
        return {
            "index": index,
            "torch": torch.rand(2).tolist(),
            "numpy": float(np.random.rand()),
            "python": random.random(),
        }


def test_draws_are_a_function_of_the_seed():
    items = SeededItems(_Draws())
    assert len(items) == 4
    assert items[1, 7] == items[1, 7]
    first, other = items[1, 7], items[1, 8]
    for source in ("torch", "numpy", "python"):
        assert first[source] != other[source], source
    assert {**items[2, 7], "index": 1} == first  # the index picks the item, not the draw


def test_the_callers_random_states_are_left_as_they_were():
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    before = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    SeededItems(_Draws())[0, 3]
    assert torch.equal(torch.get_rng_state(), before[0])
    assert (np.random.get_state()[1] == before[1]).all()
    assert random.getstate() == before[2]


def test_workers_draw_what_the_main_process_draws():
    items = SeededItems(_Draws())
    keys = [(i, 100 + i) for i in range(4)]
    # Each worker process starts from its own seeds (DataLoader's base seed + worker id).
    loader = DataLoader(items, sampler=keys, batch_size=None, num_workers=2)
    assert list(loader) == [items[key] for key in keys]
