"""The seeded epoch order shared by both data paths, and `EpochSampler`, the DataLoader path's sampler.

The order of an epoch is a pure function of (seed, epoch), so a run resumes without any saved RNG state and
`DeviceLoader` and `DataLoader(sampler=EpochSampler(...))` yield the same batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Sampler


def epoch_indices(
    n: int, *, seed: int, epoch: int, shuffle: bool, num_replicas: int = 1, rank: int = 0
) -> Tensor:
    """Sample order of one epoch for one rank: a pure function of its arguments, so resuming needs no RNG state.

    The shuffled order is `torch.randperm(n)` from a CPU generator seeded with seed + epoch; with several
    replicas it is padded by wrapping around to a multiple of num_replicas and rank takes every
    num_replicas-th index, exactly as torch's DistributedSampler(drop_last=False) does.

    Args:
        n: number of samples.
        seed: the run's data seed.
        epoch: the epoch, counted from 0.
        shuffle: shuffle, else the samples in order.
        num_replicas: number of ranks sharing the data.
        rank: this rank, in 0..num_replicas-1.
    """
    check_shard(num_replicas, rank)
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    else:
        order = torch.arange(n)
    if num_replicas == 1:
        return order
    total = math.ceil(n / num_replicas) * num_replicas
    if total > n:
        order = torch.cat([order, order.repeat(math.ceil((total - n) / n))[: total - n]])
    return order[rank:total:num_replicas]


def check_shard(num_replicas: int, rank: int) -> None:
    """Reject shard settings that would silently give a rank no data or the wrong data."""
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas=} {rank=}")


class EpochSampler(Sampler[int]):
    """Sampler for the DataLoader path with DeviceLoader's order: `epoch_indices(seed, epoch)`, sharded by rank.

    With shuffle=False it yields 0..n-1. Iterating to the end advances the epoch by one; `set_epoch` sets it.
    It has the resumable-data protocol's `set_epoch` and `skip_samples` (`ember.engine.resumable`).

    Args:
        data_source: the dataset, or its number of samples.
        shuffle: shuffle each epoch, else the samples in order.
        seed: the run's data seed; the order of epoch e is `epoch_indices(seed=seed, epoch=e)`.
        num_replicas: number of ranks sharing the data.
        rank: this rank, in 0..num_replicas-1.
    """

    def __init__(
        self, data_source: Any, *, shuffle: bool = True, seed: int = 0, num_replicas: int = 1, rank: int = 0
    ) -> None:
        super().__init__()
        check_shard(num_replicas, rank)
        self.n = data_source if isinstance(data_source, int) else len(data_source)
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._skip = 0

    def __len__(self) -> int:
        """Samples per epoch for this rank."""
        return math.ceil(self.n / self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration draws."""
        self.epoch = epoch

    def skip_samples(self, n: int) -> None:
        """Start the next iteration (only) after its first n samples, to resume an epoch mid-way."""
        self._skip = n

    def state_dict(self) -> dict[str, int]:
        """Epoch and seed as plain ints."""
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore epoch and seed saved by `state_dict`."""
        self.epoch = int(state["epoch"])
        self.seed = int(state["seed"])

    def __iter__(self) -> Iterator[int]:
        """Yield this epoch's indices, from the skipped-to sample on."""
        epoch, skip = self.epoch, self._skip
        self._skip = 0
        order = epoch_indices(
            self.n, seed=self.seed, epoch=epoch, shuffle=self.shuffle, num_replicas=self.num_replicas, rank=self.rank
        )
        yield from order[skip:].tolist()
        self.epoch = epoch + 1
