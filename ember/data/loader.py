"""`make_loader`, the recipes' one way to batch a dataset: a DeviceLoader, or a DataLoader with an EpochSampler.

Both give the same batches in the same order; the DataLoader path runs torchvision's own transforms, and its
workers ignore the stop signals a terminal or scheduler sends to the whole process group.
"""

from __future__ import annotations

import copy
import signal
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ember.data.device_loader import Device, DeviceLoader, Normalization, Size
from ember.data.sampler import EpochSampler

DataPath = Literal["fast", "dataloader"]
"""How `make_loader` batches: "fast" (a DeviceLoader on the device) or "dataloader" (torch's DataLoader)."""


def torchvision_transform(normalize: Normalization | None = None, resize: Size | None = None) -> Any:
    """The torchvision pipeline DeviceLoader reproduces: [Resize(resize)] + ToTensor() + [Normalize(mean, std)]."""
    from torchvision import transforms  # here: importing torchvision costs most of a second

    steps: list[Any] = [transforms.Resize(resize)] if resize is not None else []
    steps.append(transforms.ToTensor())
    if normalize is not None:
        steps.append(transforms.Normalize(*normalize))
    return transforms.Compose(steps)


def _with_transform(dataset: Dataset, transform: Any) -> Dataset:
    """A shallow copy of a torchvision dataset (or Subset of one) reading through transform."""
    if isinstance(dataset, Subset):
        return Subset(_with_transform(dataset.dataset, transform), dataset.indices)
    if getattr(dataset, "transform", None) is not None:
        raise ValueError("make_loader builds the transforms itself; load the dataset with transform=None")
    dataset = copy.copy(dataset)
    dataset.transform = transform  # type: ignore[attr-defined]
    if hasattr(dataset, "transforms"):
        from torchvision.datasets.vision import StandardTransform

        target_transform = getattr(dataset, "target_transform", None)
        dataset.transforms = StandardTransform(transform, target_transform)  # type: ignore[attr-defined]
    return dataset


def make_loader(
    dataset: Any,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    device: Device = None,
    path: DataPath = "fast",
    normalize: Normalization | None = None,
    resize: Size | None = None,
    drop_last: bool = False,
    num_workers: int = 0,
    num_replicas: int = 1,
    rank: int = 0,
    pin_memory: bool | None = None,
) -> DeviceLoader | DataLoader:
    """The recipes' one way to batch a dataset: a DeviceLoader ("fast") or a DataLoader ("dataloader").

    Both give the same batches in the same order; the DataLoader path runs torchvision's own transforms
    (`torchvision_transform(normalize, resize)`) with an `EpochSampler` and yields CPU tensors.

    Args:
        dataset: a torchvision dataset loaded with transform=None (or a Subset of one).
        batch_size: samples per batch.
        shuffle: shuffle each epoch, else the samples in order.
        seed: the run's data seed (the order, and the DataLoader workers' base seeds).
        device: the fast path's device; on the DataLoader path it decides `pin_memory` when that is None.
        path: "fast" (DeviceLoader) or "dataloader" (DataLoader).
        normalize: (mean, std) as torchvision's Normalize takes them, or None.
        resize: torchvision's Resize size, or None.
        drop_last: drop the last, smaller batch.
        num_workers: DataLoader worker processes (DataLoader path only).
        num_replicas: number of ranks sharing the data.
        rank: this rank, in 0..num_replicas-1.
        pin_memory: DataLoader's pin_memory; None pins when `device` is a CUDA device.
    """
    if path == "fast":
        return DeviceLoader(
            dataset,
            batch_size,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            device=device,
            normalize=normalize,
            resize=resize,
            num_replicas=num_replicas,
            rank=rank,
        )
    if path != "dataloader":
        raise ValueError(f"unknown data path {path!r}: use 'fast' or 'dataloader'")
    data = _with_transform(dataset, torchvision_transform(normalize, resize))
    if pin_memory is None:
        pin_memory = device is not None and torch.device(device).type == "cuda"
    sampler = EpochSampler(len(data), shuffle=shuffle, seed=seed, num_replicas=num_replicas, rank=rank)
    return DataLoader(
        data,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        # Each iter() draws the workers' base seed from this generator: from the global one, a resumed run
        # (which starts a new iterator mid-epoch) would shift every later Dropout mask and random draw.
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=ignore_stop_signals if num_workers > 0 else None,
    )


def release_workers(loader: Any) -> None:
    """End the worker processes a DataLoader with persistent workers (as `make_loader` makes them) keeps
    between epochs, now rather than whenever Python's garbage collector reaches the loader: a run that holds
    the loader in a reference cycle would otherwise leave its workers alive, each with its memory, after the
    run is over. Anything else is left as it is; the loader starts new workers if it is iterated again."""
    iterator = getattr(loader, "_iterator", None) if isinstance(loader, DataLoader) else None
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
        loader._iterator = None


# Sent by a terminal or a scheduler to the whole process group. SIGTERM is left alone: torch's own shutdown
# ends workers with it, and a worker that ignored it would hang the interpreter's exit.
_WORKER_IGNORED = tuple(getattr(signal, n) for n in ("SIGINT", "SIGHUP", "SIGUSR1") if hasattr(signal, n))


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader `worker_init_fn`: workers ignore SIGINT, SIGHUP and SIGUSR1, so that Ctrl-C in a terminal, a
    closed ssh session or SLURM's warning, sent to the whole process group, stops only the main process, which
    then finishes its iteration and shuts its workers down itself. (A process-group SIGTERM still ends the
    workers; `ember.fit` treats their deaths as part of that stop.)"""
    for s in _WORKER_IGNORED:
        signal.signal(s, signal.SIG_IGN)
