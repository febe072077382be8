"""The resumable-data protocol: what the engine calls on the data of a run to order and resume its epochs.

At the start of each epoch the engine tells the data which epoch it is (`set_epoch`, on the data or on its
sampler), so that a seeded order is a function of the epoch; a run resumed mid-epoch then starts at the
batch after the last one processed, by the cheapest means the data offers: `skip_batches(k)` on the data,
else `skip_samples(k * batch_size)` on its sampler, else by drawing and dropping k batches. Any iterable is
valid data; these methods are all optional and found by name (`ember.data`'s DeviceLoader and EpochSampler
have them, as has torch's DistributedSampler `set_epoch`). The engine calls nothing else on the data.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, cast


class EpochOrdered(Protocol):
    """Data or a sampler whose order depends on the epoch (torch's DistributedSampler, ember's loaders)."""

    def set_epoch(self, epoch: int) -> None:
        """Draw the order of `epoch` (counted from 0) on the next iteration."""


class BatchSkipping(Protocol):
    """Data that can start its next iteration at batch k without producing the first k (ember's DeviceLoader)."""

    def skip_batches(self, k: int) -> None:
        """Start the next iteration (only) at batch k."""


class SampleSkipping(Protocol):
    """A sampler that can start its next iteration after its first n samples (ember's EpochSampler)."""

    def skip_samples(self, n: int) -> None:
        """Start the next iteration (only) after the first n samples."""


class Batched(Protocol):
    """Data with a fixed number of samples per batch (a DataLoader), to turn batches to skip into samples."""

    batch_size: int


def sampler_of(data: Any) -> Any:
    """The sampler that orders `data`'s samples: its batch sampler's sampler, else its own sampler, else None."""
    batch_sampler = getattr(data, "batch_sampler", None)
    sampler = getattr(batch_sampler, "sampler", None)
    return sampler if sampler is not None else getattr(data, "sampler", None)


def start_epoch(data: Iterable, epoch: int, skip: int) -> int:
    """Set `data` (or its sampler) to `epoch` and have it skip its first `skip` batches where it can.

    Returns the number of batches the caller must still draw and drop: 0 when the data or its sampler skipped
    them, else `skip`.
    """
    sampler = sampler_of(data)
    if hasattr(data, "set_epoch"):
        cast(EpochOrdered, data).set_epoch(epoch)
    elif sampler is not None and hasattr(sampler, "set_epoch"):
        cast(EpochOrdered, sampler).set_epoch(epoch)
    if skip and hasattr(data, "skip_batches"):
        cast(BatchSkipping, data).skip_batches(skip)
        return 0
    if skip and sampler is not None and hasattr(sampler, "skip_samples") and getattr(data, "batch_size", 0):
        cast(SampleSkipping, sampler).skip_samples(skip * cast(Batched, data).batch_size)
        return 0
    return skip
