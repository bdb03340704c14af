"""Training samplers: label histograms over epochs, determinism, DDP shards, the fit loop."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, DistributedSampler

from mvcli.cli import main
from mvcli.data.sampler import ClassBalancedSampler, SeededSampler, ShardedSampler, group_ids
from mvcli.utils.compat import set_sampler_epoch
from tests.conftest import CONF, CONFIGS, tiny_args

# An imbalanced head: 600 / 300 / 90 / 10 samples.
COUNTS = [600, 300, 90, 10]
LABELS = torch.repeat_interleave(torch.arange(4), torch.tensor(COUNTS))
N = sum(COUNTS)


def _shares(indices, labels=LABELS, k=4) -> list[float]:
    hist = torch.bincount(labels[torch.as_tensor(list(indices))], minlength=k).double()
    return (hist / hist.sum()).tolist()


def _draw(sampler: ClassBalancedSampler, epoch: int, repeats: int = 10) -> list[int]:
    """Indices of one epoch, drawn ``repeats`` times with different seeds (less noise)."""
    out = []
    for seed in range(repeats):
        sampler.seed = seed
        sampler.set_epoch(epoch)
        out += list(sampler)
    return out


def test_natural_probabilities_follow_the_data():
    sampler = ClassBalancedSampler(LABELS, progressive_epochs=10)
    assert sampler.balance(0) == 0.0
    expected = [c / N for c in COUNTS]
    assert _shares(_draw(sampler, 0)) == pytest.approx(expected, abs=0.015)


def test_balanced_sampler_draws_every_class_equally():
    sampler = ClassBalancedSampler(LABELS)
    assert len(sampler) == N and len(list(sampler)) == N
    for epoch in (0, 5):
        assert _shares(_draw(sampler, epoch)) == pytest.approx([0.25] * 4, abs=0.015)


def test_progressive_moves_linearly_from_natural_to_balanced():
    epochs = 4
    sampler = ClassBalancedSampler(LABELS, progressive_epochs=epochs)
    natural = torch.tensor(COUNTS, dtype=torch.double) / N
    observed = []
    for epoch in range(epochs + 2):
        a = min(1.0, epoch / epochs)
        expected = ((1 - a) * natural + a * 0.25).tolist()
        assert list(sampler.expected_group_distribution(epoch).values()) == pytest.approx(expected)
        shares = _shares(_draw(sampler, epoch))
        assert shares == pytest.approx(expected, abs=0.015)
        observed.append(shares)
    rare = [s[3] for s in observed]
    assert rare[0] < rare[1] < rare[2] < rare[3] < rare[4]
    assert rare[4] == pytest.approx(rare[5], abs=0.015)  # balanced from epoch 4 on


def test_draws_depend_on_seed_and_epoch_only():
    a, b = ClassBalancedSampler(LABELS, seed=3), ClassBalancedSampler(LABELS, seed=3)
    a.set_epoch(2), b.set_epoch(2)
    assert list(a) == list(b) == list(a)
    b.set_epoch(3)
    assert list(a) != list(b)
    assert list(ClassBalancedSampler(LABELS, seed=4)) != list(ClassBalancedSampler(LABELS, seed=3))


def test_joint_balances_pairs_and_absent_pairs_stay_absent():
    labels = {
        "offence_severity": [0, 0, 0, 0, 0, 0, 1, 1, 2],
        "action": [0, 0, 0, 0, 1, 1, 1, 3, 3],
    }
    groups = group_ids(labels, "joint")
    present = set(zip(labels["offence_severity"], labels["action"], strict=True))
    sampler = ClassBalancedSampler(groups, num_samples=40_000)
    drawn = Counter(
        (labels["offence_severity"][i], labels["action"][i]) for i in sampler
    )  # fmt: skip
    assert set(drawn) == present
    for pair in present:
        assert drawn[pair] / 40_000 == pytest.approx(1 / len(present), abs=0.01)


def test_distributed_shards_are_disjoint_and_follow_the_epoch():
    """Each process's ShardedSampler takes its share of the same epoch list (a DistributedSampler,
    so Lightning uses it as is); the fit loop's set_epoch reaches the balanced draw."""
    shards = {}
    for epoch in (0, 3):
        for rank in (0, 1):
            order = ClassBalancedSampler(LABELS, progressive_epochs=4, seed=7)
            sharded = ShardedSampler(SeededSampler(order, seed=7), num_replicas=2, rank=rank)
            assert isinstance(sharded, DistributedSampler)
            loader = DataLoader(list(range(N)), sampler=sharded, batch_size=4)
            set_sampler_epoch(loader, epoch)  # what the fit loop calls every epoch
            assert order.epoch == epoch  # forwarded to the draw
            shards[epoch, rank] = list(sharded)
        # The two ranks split one epoch's draw: disjoint positions, together the whole list.
        assert len(shards[epoch, 0]) == len(shards[epoch, 1]) == N // 2
        whole = SeededSampler(ClassBalancedSampler(LABELS, progressive_epochs=4, seed=7), seed=7)
        whole.set_epoch(epoch)
        assert sorted(shards[epoch, 0] + shards[epoch, 1]) == sorted(whole)  # seeds kept too
    assert shards[0, 0] != shards[3, 0]
    rare = [_shares([i for i, _ in shards[e, 0] + shards[e, 1]])[3] for e in (0, 3)]
    assert rare[0] < rare[1]  # the progressive schedule reaches every rank


@pytest.mark.parametrize("size", [7, 1])
def test_uneven_shards_are_padded_and_a_resume_skips_the_trained_part(size):
    shards = [ShardedSampler(SeededSampler(range(size)), 3, rank) for rank in range(3)]
    items = [list(s) for s in shards]
    assert [len(i) for i in items] == [len(s) for s in shards] == [-(-size // 3)] * 3
    assert {i for shard in items for i, _ in shard} == set(range(size))  # padded by repeats
    shards[1].skip = 1  # one item of this shard already trained on (mid-epoch resume)
    assert list(shards[1]) == items[1][1:]
    assert list(shards[1]) == items[1]  # the skip applies once


class _DrawnIds(Callback):
    def __init__(self):
        self.ids: list[list[str]] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.ids.append([])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.ids[-1] += list(batch["action_id"])


def test_fit_loop_sets_the_epoch(synthetic_root, tmp_path):
    """In a real fit, each epoch's batches are exactly the sampler's draw for that epoch."""
    args = ["--config", str(CONFIGS / "demo.yaml"), "--config", str(CONF / "quick_val.yaml"),
            *tiny_args(synthetic_root, tmp_path), "--trainer.logger", "false",
            "--data.sampler", "progressive", "--data.progressive_epochs", "2",
            "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "2"]  # fmt: skip
    cli = main(args, run=False)
    drawn = _DrawnIds()
    cli.trainer.callbacks.append(drawn)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    sampler = cli.trainer.train_dataloader.sampler.sampler  # inside SeededSampler
    assert isinstance(sampler, ClassBalancedSampler)
    records = cli.datamodule.datasets["train"].records
    for epoch, ids in enumerate(drawn.ids):
        sampler.set_epoch(epoch)
        assert ids == [records[i].action_id for i in sampler][: len(ids)]
    assert drawn.ids[0] != drawn.ids[1]
