"""Finding, preparing and loading datasets through torchvision's real classes, and the fake data writers."""

import gzip
import time

import numpy as np
import pytest
import torch
from fakedata import accept_fake_cifar10, write_cifar10, write_fashion_mnist, write_idx, write_mnist
from torchvision import datasets, transforms

from ember.data import (
    CIFAR10_FILES,
    DEBIAN_FASHION_MNIST,
    IDX_FILES,
    DataNotFoundError,
    load_cifar10,
    load_dataset,
    load_fashion_mnist,
    load_mnist,
)
from ember.data import datasets as data

pytestmark = pytest.mark.usefixtures("offline_data")  # no network, no user data, a private cache


@pytest.fixture
def refuse_network(monkeypatch):
    """Allow download attempts, but aim them at a closed local port so they fail at once."""
    monkeypatch.delenv("EMBER_OFFLINE")
    monkeypatch.setattr(datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    monkeypatch.setattr(datasets.FashionMNIST, "mirrors", ["http://127.0.0.1:9/"])
    monkeypatch.setattr(datasets.CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")


def test_idx_files_have_the_real_header(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = write_idx(tmp_path / "img", images, gz=False).read_bytes()
    assert raw[:16] == bytes.fromhex("00000803 00000002 00000003 00000004") and raw[16:] == images.tobytes()
    labels = gzip.decompress(write_idx(tmp_path / "lab", np.array([7, 1], np.uint8)).read_bytes())
    assert labels == bytes.fromhex("00000801 00000002 0701")


def test_fake_images_are_learnable_by_a_nearest_class_mean(tmp_path):
    fake = write_fashion_mnist(tmp_path, n_train=200, n_test=100)
    train = fake.train_images.reshape(200, -1).astype(float)
    means = np.stack([train[fake.train_labels == c].mean(0) for c in range(10)])
    test = fake.test_images.reshape(100, -1).astype(float)
    predicted = ((test[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (predicted == fake.test_labels).mean() > 0.9


def test_debian_layout_is_prepared_into_the_cache_once(tmp_path):
    fake = write_fashion_mnist(tmp_path / "deb", layout="debian", gz=True)
    cache = tmp_path / "c"
    train = load_fashion_mnist(train=True, root=tmp_path / "deb", cache=cache)
    test = load_fashion_mnist(train=False, root=tmp_path / "deb", cache=cache)
    assert isinstance(train, datasets.FashionMNIST) and train.root == str(cache)
    assert np.array_equal(train.data.numpy(), fake.train_images)
    assert np.array_equal(test.targets.numpy(), fake.test_labels)
    raw = cache / "FashionMNIST" / "raw"
    stamps = {name: (raw / name).stat().st_mtime_ns for name in IDX_FILES}
    time.sleep(0.01)
    load_fashion_mnist(root=tmp_path / "deb", cache=cache)
    assert {name: (raw / name).stat().st_mtime_ns for name in IDX_FILES} == stamps, "prepared twice"
    assert not [p for p in raw.iterdir() if p.name.startswith(".tmp-")]


def test_a_changed_source_is_prepared_again(tmp_path):
    write_fashion_mnist(tmp_path / "deb", n_train=64, seed=0)
    first = load_fashion_mnist(root=tmp_path / "deb", cache=tmp_path / "c")
    time.sleep(0.01)
    fake = write_fashion_mnist(tmp_path / "deb", n_train=80, seed=1)
    second = load_fashion_mnist(root=tmp_path / "deb", cache=tmp_path / "c")
    assert len(first) == 64 and len(second) == 80
    assert np.array_equal(second.data.numpy(), fake.train_images)


def test_plain_flat_files_are_symlinked_and_torchvision_layout_is_used_in_place(tmp_path):
    write_mnist(tmp_path / "flat", layout="debian", gz=False)
    flat = load_mnist(root=tmp_path / "flat", cache=tmp_path / "c")
    assert flat.root == str(tmp_path / "c")
    assert all((tmp_path / "c" / "MNIST" / "raw" / name).is_symlink() for name in IDX_FILES)
    fake = write_mnist(tmp_path / "tv", layout="torchvision", gz=False)
    in_place = load_mnist(train=False, root=tmp_path / "tv", cache=tmp_path / "c2")
    assert in_place.root == str(tmp_path / "tv") and not (tmp_path / "c2").exists()
    assert np.array_equal(in_place.data.numpy(), fake.test_images)


def test_gzipped_torchvision_layout_is_decompressed_into_the_cache(tmp_path):
    fake = write_mnist(tmp_path / "tv", layout="torchvision", gz=True)
    mnist = load_dataset("mnist", train=True, root=tmp_path / "tv")
    assert mnist.root == str(tmp_path / "cache")
    assert np.array_equal(mnist.targets.numpy(), fake.train_labels)


def test_env_var_points_at_data_and_the_argument_wins(tmp_path, monkeypatch):
    write_fashion_mnist(tmp_path / "env", n_train=32)
    write_fashion_mnist(tmp_path / "arg", n_train=48)
    monkeypatch.setenv("EMBER_DATA", str(tmp_path / "env"))
    assert len(load_dataset("fashion-mnist")) == 32
    assert len(load_dataset("FashionMNIST", root=tmp_path / "arg")) == 48
    assert (tmp_path / "cache" / "FashionMNIST" / "raw").is_dir(), "$EMBER_CACHE not used"


def test_debian_folder_is_the_default_source(tmp_path, monkeypatch):
    write_fashion_mnist(tmp_path / "usr-share", n_train=40)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "usr-share")
    assert len(load_fashion_mnist(transform=transforms.ToTensor())) == 40
    assert load_fashion_mnist(transform=transforms.ToTensor())[0][0].shape == (1, 28, 28)


def test_missing_data_error_is_one_line_naming_files_places_and_the_fix(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_fashion_mnist(root=tmp_path / "empty")
    message = str(info.value)
    assert "\n" not in message
    assert all(name in message for name in IDX_FILES)
    assert str(tmp_path / "empty") in message and str(tmp_path / "empty" / "FashionMNIST" / "raw") in message
    assert "--data-root" in message and "$EMBER_DATA" in message and "dataset-fashion-mnist" in message
    assert "EMBER_OFFLINE" in message
    with pytest.raises(DataNotFoundError) as info:
        load_fashion_mnist()
    assert str(tmp_path / "no-debian") in str(info.value) and str(tmp_path / "cache") in str(info.value)


def test_cifar10_error_names_every_batch_file_and_folder(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("cifar-10", root=tmp_path / "none")
    message = str(info.value)
    assert "\n" not in message and all(name in message for name in CIFAR10_FILES)
    assert str(tmp_path / "none" / "cifar-10-batches-py") in message and "--data-root" in message


def test_failed_downloads_fail_fast_and_leave_nothing_behind(tmp_path, refuse_network):
    start = time.monotonic()
    for load in (load_mnist, load_fashion_mnist, load_cifar10):
        with pytest.raises(DataNotFoundError, match="download failed"):
            load(root=tmp_path / "net")
    assert time.monotonic() - start < 10
    assert not (tmp_path / "net").exists()


def test_offline_skips_the_download(tmp_path):
    with pytest.raises(DataNotFoundError, match="download skipped"):
        load_mnist(root=tmp_path / "off")
    with pytest.raises(DataNotFoundError, match=r"data not found: looked for"):
        load_mnist(root=tmp_path / "off", download=False)
    assert not (tmp_path / "off").exists()


def test_corrupt_gzip_raises_and_leaves_no_partial_file(tmp_path):
    fake = write_fashion_mnist(tmp_path / "deb")
    broken = fake.folder / "train-images-idx3-ubyte.gz"
    broken.write_bytes(broken.read_bytes()[:5000])
    with pytest.raises(DataNotFoundError, match="unreadable.*cannot decompress"):
        load_fashion_mnist(root=tmp_path / "deb")
    raw = tmp_path / "cache" / "FashionMNIST" / "raw"
    assert not (raw / "train-images-idx3-ubyte").exists()
    assert not [p for p in raw.iterdir() if p.name.startswith(".train-images")]


def test_malformed_idx_file_is_reported_as_unreadable(tmp_path):
    fake = write_mnist(tmp_path / "tv", layout="torchvision")
    write_idx(fake.folder / "train-images-idx3-ubyte", np.zeros((4, 28), np.uint8), gz=False)
    with pytest.raises(DataNotFoundError, match="unreadable.*torchvision"):
        load_mnist(root=tmp_path / "tv")


def test_fake_cifar10_loads_through_torchvision_with_its_checksums(tmp_path):
    fake = write_cifar10(tmp_path, n_train=50, n_test=20)
    with accept_fake_cifar10(fake.folder):
        train = load_cifar10(train=True, root=tmp_path)
        test = load_dataset("cifar10", train=False, root=fake.folder)
    assert isinstance(train, datasets.CIFAR10) and train.classes[0] == "airplane"
    assert np.array_equal(train.data, fake.train_images) and train.targets == fake.train_labels.tolist()
    assert np.array_equal(test.data, fake.test_images) and len(test) == 20
    image, label = train[3]
    assert image.size == (32, 32) and label == fake.train_labels[3]


def test_non_official_cifar10_files_are_rejected_by_the_md5_check(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(DataNotFoundError, match="md5 check failed"):
        load_cifar10(root=tmp_path)
    assert datasets.CIFAR10.train_list[0][1] == "c99cafc152244af753f735de768cd75f", "checksums not restored"


def test_registry_names_aliases_and_custom_datasets(tmp_path, monkeypatch):
    assert data.dataset_names() == ["cifar10", "fashion-mnist", "mnist"]
    with pytest.raises(ValueError, match="cifar10, fashion-mnist, mnist"):
        load_dataset("imagenet")
    monkeypatch.setitem(data.DATASETS, "tiny", lambda train, root, transform, **kw: (train, root, kw))
    assert load_dataset("tiny", False, "r") == (False, "r", {"cache": None, "download": True})


@pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / f"{IDX_FILES[0]}.gz").is_file(),
    reason=f"Debian's dataset-fashion-mnist is not installed ({DEBIAN_FASHION_MNIST} is missing)",
)
def test_real_fashion_mnist_from_debian_loads_60000_and_10000(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", DEBIAN_FASHION_MNIST)
    train, test = load_fashion_mnist(train=True), load_fashion_mnist(train=False)
    assert (len(train), len(test)) == (60000, 10000)
    assert train.data.shape == (60000, 28, 28) and train.data.dtype == torch.uint8
    assert torch.equal(torch.bincount(test.targets), torch.full((10,), 1000))
    assert train.classes[9] == "Ankle boot"
