"""Data: finding and loading datasets, and batching them resumably (the fast on-device path or a DataLoader).

Both batching paths draw the same per-epoch order, a pure function of (seed, epoch), and implement the
resumable-data protocol the engine calls (`ember.engine.resumable`), so a run resumes mid-epoch exactly.
"""

from ember.data.datasets import (
    CIFAR10_FILES,
    DATASETS,
    DEBIAN_FASHION_MNIST,
    IDX_FILES,
    DataNotFoundError,
    cache_dir,
    dataset_names,
    load_cifar10,
    load_dataset,
    load_fashion_mnist,
    load_mnist,
    prepare_idx,
)
from ember.data.device_loader import DeviceLoader, dataset_tensors, resize_images
from ember.data.loader import ignore_stop_signals, make_loader, release_workers, torchvision_transform
from ember.data.sampler import EpochSampler, epoch_indices

__all__ = [
    "CIFAR10_FILES",
    "DATASETS",
    "DEBIAN_FASHION_MNIST",
    "IDX_FILES",
    "DataNotFoundError",
    "DeviceLoader",
    "EpochSampler",
    "cache_dir",
    "dataset_names",
    "dataset_tensors",
    "epoch_indices",
    "ignore_stop_signals",
    "load_cifar10",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist",
    "make_loader",
    "prepare_idx",
    "release_workers",
    "resize_images",
    "torchvision_transform",
]
