"""`DeviceLoader`: in-memory datasets batched on the training device, from a uint8 copy of their images.

Its per-epoch order is `epoch_indices(seed, epoch)`, the same as `EpochSampler`'s on the DataLoader path, so
both paths yield the same batches and a run resumes without any saved RNG state.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Subset

from ember.data.sampler import check_shard, epoch_indices
from ember.utils import checks

Device = torch.device | str | None
Stats = float | Sequence[float]
Normalization = tuple[Stats, Stats]
Size = int | Sequence[int]


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
    from PIL import Image  # here, with torchvision: both are imported only by the runs that resize
    from torchvision.transforms import functional as TF

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
    loops reshuffle; the engine sets it explicitly through `set_epoch` and resumes through `skip_batches`
    (the resumable-data protocol, `ember.engine.resumable`).

    Args:
        dataset: a torchvision dataset with `.data`/`.targets` (loaded with transform=None), a Subset of one,
            or a pair (uint8 images N×C×H×W, targets); see `dataset_tensors`.
        batch_size: samples per batch.
        shuffle: shuffle each epoch (`epoch_indices`), else the samples in order.
        seed: the run's data seed.
        drop_last: drop the last, smaller batch.
        device: where the images live and the batches are made (default CPU).
        normalize: (mean, std) as torchvision's Normalize takes them, or None.
        resize: resize the images once, as torchvision's Resize(resize) would, or None.
        num_replicas: number of ranks sharing the data.
        rank: this rank, in 0..num_replicas-1.
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
        checks.positive_int("batch_size", batch_size, ">= 1")
        check_shard(num_replicas, rank)
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
