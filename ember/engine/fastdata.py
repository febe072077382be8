"""The fast data path: in-memory datasets batched on the training device, and a seeded epoch sampler.

Both paths draw the same per-epoch order, a pure function of (seed, epoch), so a run resumes without any
saved RNG state and `DeviceLoader` and `DataLoader(sampler=EpochSampler(...))` yield the same batches.
"""

from __future__ import annotations

import copy
import math
import signal
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torchvision import transforms
from torchvision.datasets.vision import StandardTransform
from torchvision.transforms import functional as TF

__all__ = [
    "DeviceLoader",
    "EpochSampler",
    "dataset_tensors",
    "epoch_indices",
    "make_loader",
    "resize_images",
    "torchvision_transform",
]

Device = torch.device | str | None
Stats = float | Sequence[float]
Normalization = tuple[Stats, Stats]
Size = int | Sequence[int]


def epoch_indices(
    n: int, *, seed: int, epoch: int, shuffle: bool, num_replicas: int = 1, rank: int = 0
) -> Tensor:
    """Sample order of one epoch for one rank: a pure function of its arguments, so resuming needs no RNG state.

    The shuffled order is `torch.randperm(n)` from a CPU generator seeded with seed + epoch; with several
    replicas it is padded by wrapping around to a multiple of num_replicas and rank takes every
    num_replicas-th index, exactly as torch's DistributedSampler(drop_last=False) does.
    """
    _check_shard(num_replicas, rank)
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


def _check_shard(num_replicas: int, rank: int) -> None:
    """Reject shard settings that would silently give a rank no data or the wrong data."""
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas=} {rank=}")


def dataset_tensors(dataset: Any) -> tuple[Tensor, Tensor]:
    """Raw uint8 images (N, C, H, W) and int64 targets of an in-memory dataset, sharing memory where possible.

    Accepts a torchvision dataset with `.data` / `.targets` (MNIST-style uint8 tensor N×H×W, or a numpy
    array N×H×W×C such as CIFAR's, or N×C×H×W), a `Subset` of one, or a pair (uint8 images N×C×H×W, targets).
    """
    if isinstance(dataset, Subset):
        images, targets = dataset_tensors(dataset.dataset)
        index = torch.as_tensor(dataset.indices, dtype=torch.long)
        return images.index_select(0, index), targets.index_select(0, index)
    if isinstance(dataset, tuple):
        images, targets = dataset
    elif hasattr(dataset, "data") and hasattr(dataset, "targets"):
        images, targets = _images_nchw(dataset.data), dataset.targets
    else:
        raise TypeError(
            f"cannot read images from {type(dataset).__name__}: pass a torchvision dataset with .data and "
            ".targets (MNIST, FashionMNIST, CIFAR10, ...), a Subset of one, or a pair (uint8 images, targets)"
        )
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise TypeError(f"images must be a uint8 tensor N×C×H×W, got {images.dtype} of shape {tuple(images.shape)}")
    targets = torch.as_tensor(targets, dtype=torch.long)
    if targets.shape != (len(images),):
        raise ValueError(f"targets must have shape ({len(images)},), got {tuple(targets.shape)}")
    return images, targets


def _images_nchw(data: Any) -> Tensor:
    """View a dataset's `.data` as N×C×H×W: N×H×W gains a channel axis, numpy N×H×W×C is transposed."""
    if isinstance(data, np.ndarray):
        if data.ndim == 4 and data.shape[-1] in (1, 3, 4) and data.shape[1] not in (1, 3, 4):
            return torch.from_numpy(np.ascontiguousarray(data.transpose(0, 3, 1, 2)))
        data = torch.from_numpy(data)
    return data.unsqueeze(1) if data.ndim == 3 else data


def resize_images(images: Tensor, size: Size) -> Tensor:
    """Resize uint8 N×C×H×W images once, pixel for pixel as `transforms.Resize(size)` does on the PIL image.

    Each image goes through PIL's own bilinear resampling (torch's tensor resize differs from PIL by one grey
    level on about a tenth of the pixels), so the result equals Resize + ToTensor exactly.
    """
    if images.shape[1] not in (1, 3):
        raise ValueError(f"resize needs 1 or 3 channels, got {images.shape[1]}")
    hwc = images.permute(0, 2, 3, 1).numpy()
    if images.shape[1] == 1:
        hwc = hwc[..., 0]
    width, height = TF.resize(Image.fromarray(hwc[0]), size).size
    out = np.empty((len(hwc), height, width) + hwc.shape[3:], dtype=np.uint8)
    for i, image in enumerate(hwc):
        out[i] = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
    resized = torch.from_numpy(out)
    return resized.unsqueeze(1) if resized.ndim == 3 else resized.permute(0, 3, 1, 2).contiguous()


class DeviceLoader:
    """Batches an in-memory dataset straight from a uint8 copy on the training device: no workers, no collate.

    Each batch is `(x, y)`: x float equal to torchvision's ToTensor() (then Normalize(mean, std) when
    normalize is given, after Resize(resize) when resize is given), y int64. The per-epoch order comes from
    `epoch_indices`, the same as `EpochSampler`'s. Iterating to the end advances the epoch by one, so plain
    loops reshuffle; the engine sets it explicitly through `set_epoch`.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        device: Device = None,
        normalize: Normalization | None = None,
        resize: Size | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if getattr(dataset, "transform", None) is not None:
            raise ValueError(
                "DeviceLoader reads the raw images and applies only ToTensor, normalize= and resize=; "
                "load the dataset with transform=None"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        _check_shard(num_replicas, rank)
        self.dataset = dataset
        images, targets = dataset_tensors(dataset)
        if resize is not None:
            images = resize_images(images, resize)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.images = images.to(self.device).contiguous()
        self.targets = targets.to(self.device)
        self.dtype = torch.get_default_dtype()
        self.mean, self.std = _stats(normalize, self.dtype, self.device)
        # A tensor on the device, not the number: CUDA divides by a Python scalar as a multiplication by its
        # reciprocal, one bit away from ToTensor's true division on the CPU.
        self.scale = torch.tensor(255, dtype=self.dtype, device=self.device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._skip = 0

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (padded up to an equal share when sharded)."""
        return math.ceil(len(self.images) / self.num_replicas)

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration draws."""
        self.epoch = epoch

    def skip_batches(self, k: int) -> None:
        """Start the next iteration (only) at batch k, to resume an epoch mid-way."""
        self._skip = k

    def state_dict(self) -> dict[str, int]:
        """Epoch and seed: all that fixes the order, as plain ints (loads with weights_only=True)."""
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore epoch and seed saved by `state_dict`."""
        self.epoch = int(state["epoch"])
        self.seed = int(state["seed"])

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield this epoch's batches, from the skipped-to batch on."""
        epoch, skip, b = self.epoch, self._skip, self.batch_size
        self._skip = 0
        order = None
        if self.shuffle or self.num_replicas > 1:
            order = epoch_indices(
                len(self.images),
                seed=self.seed,
                epoch=epoch,
                shuffle=self.shuffle,
                num_replicas=self.num_replicas,
                rank=self.rank,
            ).to(self.device, non_blocking=True)
        stop = len(self) * b if self.drop_last else self.num_samples
        for start in range(skip * b, stop, b):
            if order is None:
                x, y = self.images[start : start + b], self.targets[start : start + b].clone()
            else:
                index = order[start : start + b]
                x, y = self.images.index_select(0, index), self.targets.index_select(0, index)
            yield self._to_float(x), y
        self.epoch = epoch + 1

    def _to_float(self, x: Tensor) -> Tensor:
        """ToTensor's `x.to(float).div(255)` then Normalize's `sub_(mean).div_(std)`, the same float ops."""
        x = x.to(self.dtype).div_(self.scale)
        if self.mean is not None:
            x.sub_(self.mean).div_(self.std)
        return x

    def __repr__(self) -> str:
        return (
            f"DeviceLoader(samples={len(self.images)}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"seed={self.seed}, device={self.device}, rank={self.rank}/{self.num_replicas})"
        )


def _stats(normalize: Normalization | None, dtype: torch.dtype, device: torch.device) -> tuple[Any, Any]:
    """Mean and std shaped as torchvision's Normalize shapes them, or (None, None) without normalisation."""
    if normalize is None:
        return None, None
    mean, std = (torch.as_tensor(v, dtype=dtype, device=device) for v in normalize)
    if (std == 0).any():
        raise ValueError(f"normalize std must be non-zero, got {normalize[1]}")
    return (mean.view(-1, 1, 1) if mean.ndim == 1 else mean), (std.view(-1, 1, 1) if std.ndim == 1 else std)


class EpochSampler(Sampler[int]):
    """Sampler for the DataLoader path with DeviceLoader's order: `epoch_indices(seed, epoch)`, sharded by rank.

    With shuffle=False it yields 0..n-1. Iterating to the end advances the epoch by one; `set_epoch` sets it.
    """

    def __init__(
        self, data_source: Any, *, shuffle: bool = True, seed: int = 0, num_replicas: int = 1, rank: int = 0
    ) -> None:
        super().__init__()
        _check_shard(num_replicas, rank)
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


def torchvision_transform(normalize: Normalization | None = None, resize: Size | None = None) -> Any:
    """The torchvision pipeline DeviceLoader reproduces: [Resize(resize)] + ToTensor() + [Normalize(mean, std)]."""
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
    path: Literal["fast", "dataloader"] = "fast",
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
