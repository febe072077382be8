"""What each recipe trains, as its seed program sets it up, and the data every loop reads.

The training and test sets are cut to `--limit-samples`; CIFAR-10 falls back to generated data of its shape
when the real files are absent. The seed's DataLoaders and ember's DeviceLoaders read the same samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import VisionDataset

from ember.data import DataNotFoundError, load_dataset, make_loader, torchvision_transform
from ember.recipes import RECIPES, cifar10_cnn, fashion_mnist_cnn, fashion_mnist_mlp


@dataclass(frozen=True)
class Config:
    """What a recipe trains, as its seed program sets it up."""

    recipe: str
    seed: str
    model: Callable[[], nn.Module]
    optimizer: Callable[[Any, float], torch.optim.Optimizer]
    loss_fn: Callable[[Any, Any], torch.Tensor]
    normalize: tuple | None
    num_workers: int
    cnn: bool


def sgd(params: Any, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr)


def adam(params: Any, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr)


CONFIGS = {
    "fashion-mnist-mlp": Config("fashion-mnist-mlp", "000", fashion_mnist_mlp.NeuralNetwork, sgd,
                                nn.CrossEntropyLoss(), None, 0, False),
    "fashion-mnist-cnn": Config("fashion-mnist-cnn", "004", fashion_mnist_cnn.Network, adam, F.cross_entropy,
                                None, 0, True),
    "cifar10-cnn": Config("cifar10-cnn", "001", cifar10_cnn.SimpleCNN, adam, nn.CrossEntropyLoss(),
                          cifar10_cnn.NORMALIZE, 2, True),
}


class GeneratedCIFAR10(VisionDataset):
    """Images of CIFAR-10's shape and format (uint8 N×32×32×3 `.data`, int `.targets`), read like CIFAR10.

    Each class has a fixed random template blended with per-image noise, so accuracy still moves.
    """

    def __init__(self, n: int, seed: int, transform: Any = None) -> None:
        super().__init__(root="", transform=transform)
        templates = np.random.default_rng(12345).integers(0, 256, size=(10, 32, 32, 3), dtype=np.uint16)
        rng = np.random.default_rng(seed)
        labels = rng.permutation(np.arange(n) % 10)
        self.data = np.empty((n, 32, 32, 3), dtype=np.uint8)
        for start in range(0, n, 5000):
            part = labels[start:start + 5000]
            noise = rng.integers(0, 256, size=(len(part), 32, 32, 3), dtype=np.uint16)
            self.data[start:start + 5000] = (7 * templates[part] + 3 * noise) // 10
        self.targets = labels.tolist()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        image = Image.fromarray(self.data[index])
        return (self.transform(image) if self.transform is not None else image), self.targets[index]


def load_splits(cfg: Config, data_root: str | None, limit: int | None) -> tuple[Any, Any, str]:
    """Raw (transform=None) train and test sets, cut to `limit` samples if given, and where they came from."""
    dataset = RECIPES[cfg.recipe].dataset
    try:
        train = load_dataset(dataset, True, root=data_root, download=False)
        test = load_dataset(dataset, False, root=data_root, download=False)
        origin = f"{dataset} files"
    except DataNotFoundError:
        if dataset != "cifar10":
            raise
        train, test = GeneratedCIFAR10(50_000, 0), GeneratedCIFAR10(10_000, 1)
        origin = "generated data of CIFAR-10's shape (the real CIFAR-10 files are absent)"
    if limit is not None:
        train = Subset(train, range(min(limit, len(train))))
        test = Subset(test, range(min(limit, len(test))))
    return train, test, origin


def with_transform(dataset: Any, transform: Any) -> Any:
    """The same samples read through `transform` (the seed's ToTensor pipeline)."""
    if isinstance(dataset, Subset):
        return Subset(with_transform(dataset.dataset, transform), dataset.indices)
    copy = object.__new__(type(dataset))
    copy.__dict__.update(dataset.__dict__)
    copy.transform = transform
    if hasattr(copy, "transforms") and hasattr(dataset, "target_transform"):
        from torchvision.datasets.vision import StandardTransform

        copy.transforms = StandardTransform(transform, dataset.target_transform)
    return copy


def make_loaders(cfg: Config, batch_size: int, shuffle: bool, train: Any, test: Any, device: torch.device,
                 num_workers: int) -> dict[str, dict[str, Any]]:
    """The seed's DataLoaders (for seed, ignite, lightning, ember-dataloader) and ember's DeviceLoaders."""
    transform = torchvision_transform(cfg.normalize)
    seed = {
        "train": DataLoader(with_transform(train, transform), batch_size=batch_size, shuffle=shuffle,
                            num_workers=num_workers),
        "test": DataLoader(with_transform(test, transform), batch_size=batch_size, num_workers=num_workers),
    }
    fast = {
        "train": make_loader(train, batch_size, shuffle=shuffle, device=device, normalize=cfg.normalize),
        "test": make_loader(test, batch_size, device=device, normalize=cfg.normalize),
    }
    return {"dataloader": seed, "fast": fast}
