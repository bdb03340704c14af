"""Class-balanced and progressive training samplers.

Each epoch draws ``num_samples`` indices with replacement from per-sample probabilities:

- natural: p_i = 1/N (what a plain shuffle gives in expectation);
- balanced: p_i = 1 / (G * n_{g(i)}), every present group (class of a head, or pair of
  classes for ``joint``) drawn equally often in expectation;
- progressive: p_i(e) = (1 - a(e)) / N + a(e) * balanced_i with a(e) = min(1, e / E): the
  expected label distribution moves in a straight line from the natural one at epoch 0 to the
  balanced one at epoch E = ``progressive_epochs``, then stays balanced.

The draw is a function of (seed, epoch) only, so every process of a distributed run draws the
same list; :class:`ShardedSampler` gives each process its disjoint shard of it (and, on a
mid-epoch resume, only the part of the shard not trained on yet).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch.utils.data import DistributedSampler, Sampler

from mvcli.data.taxonomy import HEADS, HeadName

SamplerName = Literal[
    "natural", "balanced_offence_severity", "balanced_action", "balanced_joint", "progressive"
]
BalanceTarget = Literal[HeadName, "joint"]
SAMPLERS: tuple[str, ...] = SamplerName.__args__


def group_ids(labels: dict[str, Sequence[int]], target: BalanceTarget) -> torch.Tensor:
    """Per-sample group to balance: a head's class, or the (offence_severity, action) pair."""
    if target == "joint":
        os_, action = (torch.as_tensor(labels[h]) for h in HEADS)
        return os_ * (int(action.max()) + 1) + action
    return torch.as_tensor(labels[target])


def balanced_probabilities(groups: torch.Tensor) -> torch.Tensor:
    """p_i = 1 / (G * n_{g(i)}) over the G groups present."""
    _, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    return 1.0 / (len(counts) * counts[inverse].double())


class ClassBalancedSampler(Sampler[int]):
    """Draws training indices with replacement, balanced on a group, optionally progressively.

    Args:
        groups: per-sample group id (class, or pair of classes) to balance.
        num_samples: indices drawn per epoch (default: the dataset size).
        progressive_epochs: None: balanced from the first epoch; E >= 0: the weights move
            linearly from natural (epoch 0) to balanced (epoch E and after).
        seed: base seed; each epoch draws with seed and epoch only.
    """

    def __init__(
        self,
        groups: Sequence[int] | torch.Tensor,
        num_samples: int | None = None,
        progressive_epochs: int | None = None,
        seed: int = 0,
    ) -> None:
        self.groups = torch.as_tensor(groups, dtype=torch.long)
        if self.groups.ndim != 1 or len(self.groups) == 0:
            raise ValueError("the sampler needs at least one labelled sample")
        if progressive_epochs is not None and progressive_epochs < 0:
            raise ValueError(f"progressive_epochs must be >= 0, got {progressive_epochs}")
        self.num_samples = len(self.groups) if num_samples is None else int(num_samples)
        self.progressive_epochs = progressive_epochs
        self.seed = int(seed)
        self.epoch = 0
        self._natural = torch.full((len(self.groups),), 1.0 / len(self.groups), dtype=torch.double)
        self._balanced = balanced_probabilities(self.groups)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def balance(self, epoch: int | None = None) -> float:
        """a(e): 0 = natural, 1 = balanced."""
        epoch = self.epoch if epoch is None else epoch
        if not self.progressive_epochs:  # None (balanced throughout) or 0
            return 1.0
        return min(1.0, max(0, epoch) / self.progressive_epochs)

    def probabilities(self, epoch: int | None = None) -> torch.Tensor:
        a = self.balance(epoch)
        return (1.0 - a) * self._natural + a * self._balanced

    def expected_group_distribution(self, epoch: int | None = None) -> dict[int, float]:
        """Expected share of each group among the drawn indices at an epoch."""
        p = self.probabilities(epoch)
        return {int(g): float(p[self.groups == g].sum()) for g in torch.unique(self.groups)}

    def __iter__(self):
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        draw = torch.multinomial(self.probabilities(), self.num_samples, True, generator=generator)
        return iter(draw.tolist())

    def __len__(self) -> int:
        return self.num_samples


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's draws: every training order and per-item seed derives from it,
    so a resumed run draws what the uninterrupted one would have."""
    return seed * 1_000_003 + epoch


def _world_size(trainer) -> int:
    return getattr(trainer, "world_size", 1) if trainer is not None else 1


def training_sampler(order: Sampler[int], seed: int, trainer) -> Sampler[tuple[int, int]]:
    """The training loader's ``(index, item_seed)`` sampler over an epoch ``order``: under
    DDP, this process's shard of it, resumable part-way (mvcli.callbacks.resume)."""
    sampler = SeededSampler(order, seed=seed)
    world = _world_size(trainer)
    return ShardedSampler(sampler, world, trainer.global_rank) if world > 1 else sampler


def evaluation_sampler(dataset, trainer) -> Sampler[int] | None:
    """Each process's share of an evaluation set, every action exactly once (None: 1 process).

    Lightning's default DistributedSampler pads the last shard with repeated actions so every
    process gets as many batches; here process r takes actions r, r + W, r + 2W... with no
    repeat, the shards differ by at most one action, and the metrics (torchmetrics states,
    batch-size-weighted losses) are summed over the processes at the epoch's end.
    """
    world = _world_size(trainer)
    if world <= 1:
        return None
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    if len(dataset) < world:
        # A process without a batch would skip the first forward's buffer sync of DDP.
        raise ValueError(
            f"{len(dataset)} action(s) to evaluate on {world} processes: each process needs at "
            "least one; evaluate on fewer processes (--trainer.devices/--trainer.num_nodes)"
        )
    return UnrepeatedDistributedSampler(
        dataset, num_replicas=world, rank=trainer.global_rank, shuffle=False
    )


class EpochShuffleSampler(Sampler[int]):
    """A plain shuffle drawn from (seed, epoch) only, so a resumed run draws the same order.

    (torch's RandomSampler draws from the global RNG, whose state depends on what ran before.)
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = int(size)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class SeededSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, item_seed)``: each item's random choices are seeded from (seed, epoch,
    position), so they do not depend on which worker draws the item or on that worker's past.

    With persistent workers a worker's RNG stream runs on across epochs; a resumed run starts
    new workers, so anything drawn from it would differ from the uninterrupted run.

    Args:
        sampler: the index order (with ``set_epoch``).
        seed: base seed of the items' random choices.
    """

    def __init__(self, sampler: Sampler[int], seed: int = 0) -> None:
        self.sampler = sampler
        self.seed = int(seed)
        self.epoch = 0
        self.skip = 0  # items of this epoch already trained on (mid-epoch resume), used once

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        skip, self.skip = self.skip, 0
        base = epoch_seed(self.seed, self.epoch) * 1_000_003
        for position, index in enumerate(self.sampler):
            if position >= skip:
                yield index, (base + position) % (2**63)

    def __len__(self) -> int:
        return len(self.sampler)


class ShardedSampler(DistributedSampler):
    """One process's shard of a :class:`SeededSampler`'s epoch, for distributed training.

    Process r of W takes positions r, r + W, r + 2W... of the epoch's list (padded with its
    first items to a multiple of W, as DistributedSampler pads, so every process runs as many
    steps); each item keeps the seed of its position in the whole list. ``skip`` drops the
    first items of this shard once (a mid-epoch resume: every process trained on as many).

    Being a DistributedSampler, Lightning uses it as it is instead of wrapping the sampler
    in a DistributedSamplerWrapper, whose shard cannot be resumed part-way.

    Args:
        sampler: the whole epoch's ``(index, item_seed)`` list, the same on every process.
        num_replicas: processes (the world size).
        rank: this process's global rank.
    """

    def __init__(self, sampler: SeededSampler, num_replicas: int, rank: int) -> None:
        super().__init__(range(len(sampler)), num_replicas=num_replicas, rank=rank, shuffle=False)
        self.sampler = sampler
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        skip, self.skip = self.skip, 0
        items = list(self.sampler)
        if items:
            repeats = math.ceil(self.total_size / len(items))
            items = (items * repeats)[: self.total_size]
        yield from items[self.rank : self.total_size : self.num_replicas][skip:]

    def __len__(self) -> int:
        return self.num_samples
