"""Small datasets written in the real on-disk formats, so tests go through torchvision's own loading code.

Images are learnable: each class has a fixed random template (the same for train and test) blended with
per-image noise, so a short training run beats chance by far. `offline` makes ember's data search see only
what a test writes.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from torchvision import datasets

from ember.data import datasets as data

IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte data, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned byte data, 1 dimension
CIFAR10_LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class FakeData:
    """Where a fake dataset was written and the arrays it holds (images as stored: N×H×W or N×H×W×C)."""

    folder: Path
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def make_images(n: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 images of the given shape and their labels 0..9: class template (70%) plus noise (30%)."""
    templates = np.random.default_rng(12345).integers(0, 256, size=(10, *shape))
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    noise = rng.integers(0, 256, size=(n, *shape))
    images = (0.7 * templates[labels] + 0.3 * noise).round().clip(0, 255).astype(np.uint8)
    return images, labels


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    """Write a uint8 array as an IDX file: big-endian magic 0x000008<ndim>, big-endian dims, then the bytes."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload, mtime=0))
    else:
        path.write_bytes(payload)
    return path


def _write_idx_dataset(
    root: Path, class_name: str, n_train: int, n_test: int, layout: str, gz: bool, seed: int
) -> FakeData:
    """The four MNIST-format files of class_name in Debian's flat layout or torchvision's <Class>/raw/."""
    if layout not in ("debian", "torchvision"):
        raise ValueError(f"layout must be 'debian' or 'torchvision', got {layout!r}")
    folder = Path(root) if layout == "debian" else Path(root) / class_name / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = make_images(n_train, (28, 28), seed)
    test_images, test_labels = make_images(n_test, (28, 28), seed + 1)
    for split, images, labels in (("train", train_images, train_labels), ("t10k", test_images, test_labels)):
        write_idx(folder / f"{split}-images-idx3-ubyte", images, gz)
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels, gz)
    return FakeData(folder, train_images, train_labels, test_images, test_labels)


def write_fashion_mnist(
    root: Path,
    n_train: int = 256,
    n_test: int = 128,
    layout: Literal["debian", "torchvision"] = "debian",
    gz: bool = True,
    seed: int = 0,
) -> FakeData:
    """A small FashionMNIST: flat in root (layout="debian") or in root/FashionMNIST/raw/ ("torchvision")."""
    return _write_idx_dataset(root, "FashionMNIST", n_train, n_test, layout, gz, seed)


def write_mnist(
    root: Path,
    n_train: int = 256,
    n_test: int = 128,
    layout: Literal["debian", "torchvision"] = "torchvision",
    gz: bool = False,
    seed: int = 0,
) -> FakeData:
    """A small MNIST: in root/MNIST/raw/ (layout="torchvision", as torchvision downloads it) or flat in root."""
    return _write_idx_dataset(root, "MNIST", n_train, n_test, layout, gz, seed)


def write_cifar10(root: Path, n_train: int = 250, n_test: int = 100, seed: int = 0) -> FakeData:
    """A small CIFAR-10 in root/cifar-10-batches-py/: five training batches, test_batch and batches.meta.

    Each batch is a pickled dict {"data": uint8 N×3072 (1024 red, 1024 green, 1024 blue, row-major),
    "labels": [int], "batch_label", "filenames"} as in the official python version; torchvision unpickles
    with encoding="latin1", which turns the official files' Python 2 str keys into these str keys
    (the b"data" spelling seen elsewhere comes from unpickling with encoding="bytes").
    """
    if n_train % 5:
        raise ValueError(f"n_train must split into 5 equal batches, got {n_train}")
    folder = Path(root) / datasets.CIFAR10.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = make_images(n_train, (32, 32, 3), seed)
    test_images, test_labels = make_images(n_test, (32, 32, 3), seed + 1)
    per_batch = n_train // 5
    for i in range(5):
        part = slice(i * per_batch, (i + 1) * per_batch)
        _write_cifar_batch(folder / f"data_batch_{i + 1}", f"training batch {i + 1} of 5", train_images[part],
                           train_labels[part])
    _write_cifar_batch(folder / "test_batch", "testing batch 1 of 1", test_images, test_labels)
    meta = {"num_cases_per_batch": per_batch, "label_names": CIFAR10_LABEL_NAMES, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return FakeData(folder, train_images, train_labels, test_images, test_labels)


def _write_cifar_batch(path: Path, batch_label: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Pickle one CIFAR-10 batch: HWC images stored channel-planar as N×3072."""
    entry = {
        "batch_label": batch_label,
        "labels": [int(v) for v in labels],
        "data": np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072)),
        "filenames": [f"fake_{i:05d}.png" for i in range(len(images))],
    }
    path.write_bytes(pickle.dumps(entry, protocol=2))


def md5(path: Path) -> str:
    """Hex md5 of a file, as torchvision computes it."""
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


@contextlib.contextmanager
def accept_fake_cifar10(folder: Path) -> Iterator[None]:
    """Make torchvision's CIFAR10 expect the md5s of the fake files in folder, for the duration.

    torchvision's CIFAR10 checks every batch file and batches.meta against the md5 of the official
    release even with download=False, so small files can never pass. Rather than loosen ember's loader,
    tests swap the expected checksums (class attributes train_list, test_list, meta) for those of the
    files they wrote; everything else, the check included, is torchvision's own code.
    """
    cls = datasets.CIFAR10
    saved = cls.train_list, cls.test_list, cls.meta
    folder = Path(folder)
    cls.train_list = [[name, md5(folder / name)] for name, _ in saved[0]]
    cls.test_list = [[name, md5(folder / name)] for name, _ in saved[1]]
    cls.meta = {**saved[2], "md5": md5(folder / saved[2]["filename"])}
    try:
        yield
    finally:
        cls.train_list, cls.test_list, cls.meta = saved


def offline(mp: pytest.MonkeyPatch, folder: Path) -> None:
    """Through `mp`, ember's data search finds only what a test writes: no downloads ($EMBER_OFFLINE), no
    $EMBER_DATA, the cache in folder/cache, and no Debian FashionMNIST (folder/no-debian stands for it)."""
    mp.setenv("EMBER_OFFLINE", "1")
    mp.delenv("EMBER_DATA", raising=False)
    mp.setenv("EMBER_CACHE", str(folder / "cache"))
    mp.setattr(data, "DEBIAN_FASHION_MNIST", folder / "no-debian")
