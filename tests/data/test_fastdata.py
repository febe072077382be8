"""The fast data path: exact equality with torchvision's transforms, seeded order, resume, sharding."""

import gc
import io
import multiprocessing

import pytest
import torch
from fakedata import accept_fake_cifar10, write_cifar10, write_fashion_mnist, write_mnist
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, DistributedSampler, Subset
from torchvision import datasets, transforms

from ember.data import (
    DEBIAN_FASHION_MNIST,
    IDX_FILES,
    DeviceLoader,
    EpochSampler,
    dataset_tensors,
    epoch_indices,
    make_loader,
    release_workers,
    torchvision_transform,
)
from ember.engine import Engine, Events

CIFAR_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


@pytest.fixture
def fashion(tmp_path):
    """A fake FashionMNIST read by torchvision's class, straight from its torchvision layout."""
    write_fashion_mnist(tmp_path, n_train=200, n_test=50, layout="torchvision", gz=False)
    return datasets.FashionMNIST(tmp_path, train=True)


@pytest.fixture
def cifar(tmp_path):
    """A fake CIFAR-10 training set read by torchvision's CIFAR10 class."""
    fake = write_cifar10(tmp_path, n_train=100, n_test=20)
    with accept_fake_cifar10(fake.folder):
        yield datasets.CIFAR10(tmp_path, train=True)


def numbered(n: int, channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose targets are their own index, to see which samples a loader yields."""
    return torch.randint(0, 256, (n, channels, 4, 4), dtype=torch.uint8), torch.arange(n)


def reference(dataset, transform, indices=None):
    """Batch a dataset sample by sample through torchvision's transforms."""
    dataset.transform = transform
    try:
        pairs = [dataset[i] for i in (indices if indices is not None else range(len(dataset)))]
    finally:
        dataset.transform = None
    return torch.stack([x for x, _ in pairs]), torch.tensor([y for _, y in pairs])


def one_batch(loader) -> tuple[torch.Tensor, torch.Tensor]:
    """All of a loader's batches concatenated."""
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("normalize", [None, ((0.2860,), (0.3530,)), ((0.5,), (0.5,))])
def test_device_loader_equals_totensor_and_normalize_exactly(fashion, normalize):
    x, y = one_batch(DeviceLoader(fashion, 64, normalize=normalize))
    ref_x, ref_y = reference(fashion, torchvision_transform(normalize))
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape == (200, 1, 28, 28)
    assert torch.equal(x, ref_x) and torch.equal(y, ref_y)


@pytest.mark.parametrize("normalize", [None, ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), CIFAR_STATS])
def test_cifar_hwc_numpy_becomes_nchw_and_matches_torchvision(cifar, normalize):
    assert cifar.data.shape == (100, 32, 32, 3)
    x, y = one_batch(DeviceLoader(cifar, 32, normalize=normalize))
    ref_x, ref_y = reference(cifar, torchvision_transform(normalize))
    assert x.shape == (100, 3, 32, 32)
    assert torch.equal(x, ref_x) and torch.equal(y, ref_y)


def test_mnist_resize_to_32_matches_resize_then_totensor_exactly(tmp_path):
    write_mnist(tmp_path, n_train=120, n_test=10)
    mnist = datasets.MNIST(tmp_path, train=True)
    x, _ = one_batch(DeviceLoader(mnist, 50, resize=32, normalize=((0.1307,), (0.3081,))))
    ref_x, _ = reference(mnist, torchvision_transform(((0.1307,), (0.3081,)), resize=32))
    assert x.shape == (120, 1, 32, 32)
    assert torch.equal(x, ref_x)


def test_rgb_resize_to_non_square_size_matches_torchvision(cifar):
    x, _ = one_batch(DeviceLoader(Subset(cifar, range(30)), 16, resize=(20, 44)))
    ref_x, _ = reference(cifar, torchvision_transform(resize=(20, 44)), range(30))
    assert x.shape == (30, 3, 20, 44)
    assert torch.equal(x, ref_x)


@pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / f"{IDX_FILES[0]}.gz").is_file(),
    reason=f"Debian's dataset-fashion-mnist is not installed ({DEBIAN_FASHION_MNIST} is missing)",
)
def test_real_fashion_mnist_subset_matches_torchvision_with_and_without_resize(tmp_path):
    from ember.data import load_fashion_mnist

    real = load_fashion_mnist(train=False, cache=tmp_path)
    indices = list(range(0, 10000, 7))
    subset = Subset(real, indices)
    x, y = one_batch(DeviceLoader(subset, 100, normalize=((0.2860,), (0.3530,))))
    ref_x, ref_y = reference(real, torchvision_transform(((0.2860,), (0.3530,))), indices)
    assert torch.equal(x, ref_x) and torch.equal(y, ref_y)
    x, _ = one_batch(DeviceLoader(subset, 100, resize=32))
    ref_x, _ = reference(real, torchvision_transform(resize=32), indices)
    assert torch.equal(x, ref_x)


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    a = epoch_indices(1000, seed=3, epoch=2, shuffle=True)
    assert torch.equal(a, epoch_indices(1000, seed=3, epoch=2, shuffle=True))
    assert not torch.equal(a, epoch_indices(1000, seed=3, epoch=3, shuffle=True))
    assert not torch.equal(a, epoch_indices(1000, seed=4, epoch=2, shuffle=True))
    assert torch.equal(a.sort().values, torch.arange(1000))
    assert torch.equal(epoch_indices(10, seed=3, epoch=2, shuffle=False), torch.arange(10))


@pytest.mark.parametrize("n", [10, 12, 2])
@pytest.mark.parametrize("shuffle", [True, False])
def test_sharding_follows_distributed_sampler_exactly(n, shuffle):
    for rank in range(4):
        reference_sampler = DistributedSampler(range(n), num_replicas=4, rank=rank, shuffle=shuffle, seed=5)
        reference_sampler.set_epoch(3)
        sampler = EpochSampler(n, shuffle=shuffle, seed=5, num_replicas=4, rank=rank)
        sampler.set_epoch(3)
        assert list(sampler) == list(reference_sampler)
        assert len(sampler) == len(reference_sampler)


def test_shards_are_equal_and_cover_every_sample_with_deviceloader():
    data = numbered(10)
    seen = []
    for rank in range(3):
        loader = DeviceLoader(data, 2, shuffle=True, seed=1, num_replicas=3, rank=rank)
        ys = [y for _, y in loader]
        assert len(ys) == len(loader) == 2
        seen.append(torch.cat(ys))
    assert [len(s) for s in seen] == [4, 4, 4]
    assert set(torch.cat(seen).tolist()) == set(range(10))


def test_both_paths_give_the_same_batches_in_the_same_order(fashion):
    kwargs = dict(shuffle=True, seed=7, normalize=((0.2860,), (0.3530,)), drop_last=True)
    fast = make_loader(fashion, 32, path="fast", **kwargs)
    slow = make_loader(fashion, 32, path="dataloader", **kwargs)
    assert isinstance(fast, DeviceLoader) and isinstance(slow, DataLoader)
    assert isinstance(slow.sampler, EpochSampler)
    assert fashion.transform is None, "make_loader must not change the caller's dataset"
    for epoch in (0, 1):
        fast.set_epoch(epoch)
        slow.sampler.set_epoch(epoch)
        fast_batches, slow_batches = list(fast), list(slow)
        assert len(fast_batches) == len(slow_batches) == len(fast) == len(slow) == 6
        for (fx, fy), (sx, sy) in zip(fast_batches, slow_batches):
            assert torch.equal(fx, sx) and torch.equal(fy, sy)
    fast.set_epoch(0)
    assert not torch.equal(next(iter(fast))[1], fast_batches[0][1]), "epochs 0 and 1 should differ"


def test_both_paths_agree_when_sharded_resized_and_not_shuffled(tmp_path):
    write_mnist(tmp_path, n_train=50, n_test=10)
    mnist = datasets.MNIST(tmp_path, train=True)
    kwargs = dict(shuffle=False, resize=32, num_replicas=2, rank=1)
    fast = one_batch(make_loader(mnist, 8, path="fast", **kwargs))
    slow = one_batch(make_loader(mnist, 8, path="dataloader", **kwargs))
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])
    assert torch.equal(fast[1], mnist.targets[1:50:2])


def test_skip_batches_resumes_exactly_the_remaining_batches_once():
    loader = DeviceLoader(numbered(50), 8, shuffle=True, seed=2)
    loader.set_epoch(4)
    full = [y for _, y in loader]
    loader.set_epoch(4)
    loader.skip_batches(3)
    rest = [y for _, y in loader]
    assert len(rest) == len(full) - 3
    assert all(torch.equal(a, b) for a, b in zip(rest, full[3:]))
    loader.set_epoch(4)
    assert len(list(loader)) == len(full), "skip applies to the next iteration only"


def test_release_workers_ends_a_loaders_persistent_workers_at_once(fashion):
    before = set(multiprocessing.active_children())
    loader = make_loader(fashion, 50, path="dataloader", num_workers=2)
    gc.disable()  # the loader's workers must end without the cyclic collector's help
    try:
        first = [y for _, y in loader]
        assert len(set(multiprocessing.active_children()) - before) == 2, "make_loader's workers persist"
        release_workers(loader)
        assert set(multiprocessing.active_children()) - before == set()
        assert all(torch.equal(a, b) for a, b in zip([y for _, y in loader], first)), "new workers start on demand"
        release_workers(loader)
        release_workers(make_loader(fashion, 50, path="fast"))  # nothing to end: a no-op
    finally:
        gc.enable()
    assert set(multiprocessing.active_children()) - before == set()


def test_skip_samples_resumes_the_dataloader_path_exactly(fashion):
    loader = make_loader(fashion, 16, shuffle=True, seed=2, path="dataloader")
    loader.sampler.set_epoch(1)
    full = [y for _, y in loader]
    loader.sampler.set_epoch(1)
    loader.sampler.skip_samples(5 * 16)
    rest = [y for _, y in loader]
    assert len(rest) == len(full) - 5
    assert all(torch.equal(a, b) for a, b in zip(rest, full[5:]))
    loader.sampler.set_epoch(1)
    assert len(list(loader.sampler)) == 200


@pytest.mark.parametrize("path", ["fast", "dataloader"])
def test_engine_resumed_mid_epoch_sees_the_same_batches_as_an_uninterrupted_run(fashion, path):
    fashion.targets = torch.arange(len(fashion))

    def record(seen, stop_at=None):
        engine = Engine(lambda e, batch: seen.append(batch[1].tolist()))
        if stop_at is not None:
            engine.add_event_handler(Events.ITERATION_COMPLETED(once=stop_at), lambda e: e.terminate())
        return engine

    full: list = []
    record(full).run(make_loader(fashion, 32, shuffle=True, seed=9, path=path), max_epochs=3)
    first: list = []
    stopped = record(first, stop_at=11)
    stopped.run(make_loader(fashion, 32, shuffle=True, seed=9, path=path), max_epochs=3)
    rest: list = []
    resumed = record(rest)
    resumed.load_state_dict(stopped.state_dict())
    resumed.run(make_loader(fashion, 32, shuffle=True, seed=9, path=path))
    assert len(full) == 21 and first + rest == full


def test_plain_loops_reshuffle_and_state_dict_round_trips_with_weights_only():
    loader = DeviceLoader(numbered(40), 40, shuffle=True, seed=0)
    first, second = next(iter(loader))[1], None
    list(loader)
    assert loader.epoch == 1
    second = next(iter(loader))[1]
    assert not torch.equal(first, second)
    buffer = io.BytesIO()
    torch.save(loader.state_dict(), buffer)
    buffer.seek(0)
    other = DeviceLoader(numbered(40), 40, shuffle=True, seed=123)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert (other.epoch, other.seed) == (1, 0)
    assert torch.equal(next(iter(other))[1], second)


@pytest.mark.parametrize("drop_last, sizes", [(False, [8, 8, 8, 2]), (True, [8, 8, 8])])
def test_drop_last_and_len(drop_last, sizes):
    for shuffle in (False, True):
        loader = DeviceLoader(numbered(26), 8, shuffle=shuffle, drop_last=drop_last)
        assert [len(y) for _, y in loader] == sizes
        assert len(loader) == len(sizes)


def test_unshuffled_batches_are_copies_not_views_of_the_stored_data():
    loader = DeviceLoader(numbered(16), 8)
    x, y = next(iter(loader))
    x.zero_()
    y.zero_()
    assert torch.equal(next(iter(loader))[1], torch.arange(8))
    assert loader.images.float().sum() > 0


def test_dataset_tensors_reads_subsets_and_rejects_other_inputs(fashion):
    images, targets = dataset_tensors(Subset(fashion, [5, 1]))
    assert images.shape == (2, 1, 28, 28) and torch.equal(images[:, 0], fashion.data[[5, 1]])
    assert torch.equal(targets, fashion.targets[[5, 1]])
    with pytest.raises(TypeError, match="torchvision dataset with .data"):
        dataset_tensors([1, 2, 3])
    with pytest.raises(TypeError, match="uint8"):
        dataset_tensors((torch.zeros(2, 1, 4, 4), torch.zeros(2)))


def test_helpful_errors_for_wrong_arguments(fashion):
    fashion.transform = transforms.ToTensor()
    with pytest.raises(ValueError, match="transform=None"):
        DeviceLoader(fashion, 8)
    with pytest.raises(ValueError, match="transform=None"):
        make_loader(fashion, 8, path="dataloader")
    fashion.transform = None
    with pytest.raises(ValueError, match="rank"):
        DeviceLoader(fashion, 8, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="'fast' or 'dataloader'"):
        make_loader(fashion, 8, path="gpu")
    with pytest.raises(ValueError, match="std"):
        DeviceLoader(fashion, 8, normalize=((0.5,), (0.0,)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_loader_batches_on_the_gpu_equal_the_cpu_ones(fashion):
    gpu = one_batch(DeviceLoader(fashion, 64, shuffle=True, device="cuda", normalize=((0.2860,), (0.3530,))))
    cpu = one_batch(DeviceLoader(fashion, 64, shuffle=True, normalize=((0.2860,), (0.3530,))))
    assert gpu[0].device.type == "cuda"
    assert torch.equal(gpu[0].cpu(), cpu[0]) and torch.equal(gpu[1].cpu(), cpu[1])


class _NewTensors(TorchDispatchMode):
    """Records each aten op run and whether it allocated: an output whose storage none of its inputs has."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, bool]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
        new = isinstance(out, torch.Tensor) and out.untyped_storage().data_ptr() not in inputs
        self.ops.append((func.__name__, new))
        return out


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_batch_allocates_only_the_gathered_images_their_float_copy_and_the_targets(shuffle):
    """Per batch: a gather of the stored uint8 images (a view when unshuffled), their conversion to float,
    the targets, and nothing else: the permutation is sliced, normalisation happens in place."""
    images, targets = numbered(64)
    loader = DeviceLoader((images, targets), batch_size=16, shuffle=shuffle, normalize=((0.5,), (0.25,)))
    batches = iter(loader)
    next(batches)  # the epoch's permutation is drawn once, before the first batch
    with _NewTensors() as mode:
        x, y = next(batches)
    allocating = sorted(name for name, new in mode.ops if new)
    if shuffle:
        assert allocating == ["_to_copy.default", "index_select.default", "index_select.default"]
    else:
        assert allocating == ["_to_copy.default", "clone.default"]
    in_place = [name for name, new in mode.ops if not new and name.endswith("_.Tensor")]
    assert in_place == ["div_.Tensor", "sub_.Tensor", "div_.Tensor"]  # /255, then Normalize's -mean, /std
    assert x.dtype == torch.float32 and x.shape == (16, 1, 4, 4) and y.shape == (16,)
