"""Where ember finds its datasets, and loading them through torchvision's own dataset classes.

Search order: the `root` argument (`--data-root`), else `$EMBER_DATA`, else the defaults: Debian's
`/usr/share/datasets/fashion-mnist/` (FashionMNIST only) and ember's cache (`$EMBER_CACHE`, else
`$XDG_CACHE_HOME/ember/data`, else `~/.cache/ember/data`). MNIST-style files may sit flat in a folder or in
torchvision's `<root>/<Class>/raw/`, gzipped or not; torchvision reads only the uncompressed files in
`<root>/<Class>/raw/`, so any other arrangement is prepared once into the cache (decompressed, or symlinked
when already plain, each file written atomically). Downloads are tried only when the files are nowhere,
with a short socket timeout, and never with `EMBER_OFFLINE=1`.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import os
import re
import shutil
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch.utils.data import Dataset

from ember.utils.atomic import remove_stale_temp_files, symlink_atomic, write_atomic

if TYPE_CHECKING:  # torchvision is imported where a dataset is loaded: it costs most of a second
    from torchvision import datasets

__all__ = [
    "CIFAR10_FILES",
    "DATASETS",
    "DEBIAN_FASHION_MNIST",
    "DataNotFoundError",
    "IDX_FILES",
    "cache_dir",
    "dataset_names",
    "load_cifar10",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist",
    "prepare_idx",
]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
DOWNLOAD_TIMEOUT_S = 5.0
_MANIFEST = ".ember-prepared.json"


class DataNotFoundError(Exception):
    """A dataset's files are missing or unreadable; the message (one line) says what, where, and how to fix it."""

    def __init__(
        self,
        dataset: str,
        files: Sequence[str],
        places: Sequence[str | os.PathLike[str]],
        *,
        problem: str = "not found",
        detail: str = "",
        hint: str = "",
    ) -> None:
        self.dataset = dataset
        self.files = list(files)
        self.places = [str(p) for p in places]
        message = (
            f"{dataset} data {problem}{f' ({detail})' if detail else ''}: looked for {', '.join(self.files)} "
            f"in {', '.join(self.places)}; pass --data-root DIR or set $EMBER_DATA to a folder holding them{hint}"
        )
        super().__init__(re.sub(r"\s*\n\s*", " ", message))


def cache_dir(cache: str | os.PathLike[str] | None = None) -> Path:
    """Folder for prepared and downloaded data: the argument, else $EMBER_CACHE, else ~/.cache/ember/data."""
    if cache is not None:
        return Path(cache).expanduser()
    if os.environ.get("EMBER_CACHE"):
        return Path(os.environ["EMBER_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ember" / "data"


def _user_root(root: str | os.PathLike[str] | None) -> Path | None:
    """The folder the user pointed at (argument, else $EMBER_DATA), or None to use the defaults."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get("EMBER_DATA"):
        return Path(os.environ["EMBER_DATA"]).expanduser()
    return None


def _find_idx(place: Path, class_name: str) -> dict[str, Path] | None:
    """The four IDX files, plain preferred over .gz, in `place/<class_name>/raw/` or flat in `place`."""
    for folder in (place / class_name / "raw", place):
        found = {}
        for name in IDX_FILES:
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    found[name] = candidate
                    break
        if len(found) == len(IDX_FILES):
            return found
    return None


def _stamp(path: Path) -> list[Any]:
    """What identifies a source file's version: resolved path, size, modification time."""
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def prepare_idx(class_name: str, files: dict[str, Path], cache: Path) -> Path:
    """Lay the IDX files out as torchvision reads them, `<cache>/<class_name>/raw/<name>`, once; returns cache.

    .gz sources are decompressed, plain ones symlinked; each file is written under a temporary name and
    renamed, so a killed prepare never leaves a half file. A manifest of the sources' path, size and mtime
    makes repeated calls no-ops until a source changes.
    """
    raw = cache / class_name / "raw"
    manifest = raw / _MANIFEST
    remove_stale_temp_files(raw)  # what preparations killed half-way (kill -9) left
    wanted = {name: _stamp(src) for name, src in files.items()}
    with contextlib.suppress(OSError, ValueError):
        if json.loads(manifest.read_text()) == wanted and all((raw / name).is_file() for name in files):
            return cache
    raw.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        if src.suffix == ".gz":
            try:
                with gzip.open(src, "rb") as stream:
                    write_atomic(str(raw / name), lambda out, s=stream: shutil.copyfileobj(s, out, 1 << 20))
            except (OSError, EOFError) as err:
                raise DataNotFoundError(
                    class_name, [src.name], [src.parent], problem="unreadable", detail=f"cannot decompress: {err}"
                ) from err
        else:
            symlink_atomic(str(src.resolve()), str(raw / name))
    write_atomic(str(manifest), lambda out: out.write(json.dumps(wanted).encode()))
    return cache


def _offline() -> bool:
    """Whether $EMBER_OFFLINE forbids download attempts."""
    return os.environ.get("EMBER_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


@contextlib.contextmanager
def _short_network_timeout() -> Iterator[None]:
    """Bound each socket operation of a download attempt so that no network means a quick failure, not a hang."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _try_download(make: Callable[[], Dataset], folder: Path) -> tuple[Dataset | None, str]:
    """Build a dataset with download=True; on failure remove what the attempt left in folder and say why."""
    if _offline():
        return None, "download skipped: EMBER_OFFLINE is set"
    existed = folder.exists()
    before = set(folder.rglob("*")) if existed else set()
    try:
        with _short_network_timeout():
            return make(), ""
    except Exception as err:  # torchvision raises RuntimeError, URLError, OSError, timeouts...
        if not existed:
            shutil.rmtree(folder, ignore_errors=True)
        for path in sorted(set(folder.rglob("*")) - before, reverse=True):
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
        return None, f"download failed: {type(err).__name__}: {err}"[:300]


def _load_idx(
    cls: type[datasets.MNIST],
    train: bool,
    root: str | os.PathLike[str] | None,
    transform: Callable[[Any], Any] | None,
    cache: str | os.PathLike[str] | None,
    download: bool,
    defaults: Sequence[Path],
    hint: str = "",
) -> Dataset:
    """Load an MNIST-format dataset with torchvision's class `cls`, preparing or downloading its files first."""
    name, cache_path = cls.__name__, cache_dir(cache)
    user = _user_root(root)
    places = [user] if user is not None else [*defaults, cache_path]
    for place in places:
        found = _find_idx(place, name)
        if found is None:
            continue
        in_layout = all(p.parent == place / name / "raw" and p.suffix != ".gz" for p in found.values())
        tv_root = place if in_layout else prepare_idx(name, found, cache_path)
        make = functools.partial(cls, root=str(tv_root), train=train, transform=transform, download=False)
        return _read(make, name, found)
    searched = [str(p) for place in places for p in (place, place / name / "raw")]
    files = [f"{f}[.gz]" for f in IDX_FILES]
    detail = ""
    if download:
        target = places[0]
        dataset, detail = _try_download(
            lambda: cls(root=str(target), train=train, transform=transform, download=True), target
        )
        if dataset is not None:
            return dataset
    raise DataNotFoundError(name, files, searched, detail=detail, hint=hint)


def _read(make: Callable[[], Dataset], name: str, files: dict[str, Path]) -> Dataset:
    """Run torchvision's reader, turning its complaints about malformed files into DataNotFoundError."""
    try:
        return make()
    except (AssertionError, RuntimeError, TypeError, ValueError, OSError) as err:
        folders = sorted({str(p.parent) for p in files.values()})
        raise DataNotFoundError(
            name, [p.name for p in files.values()], folders, problem="unreadable", detail=f"torchvision: {err}"
        ) from err


def load_fashion_mnist(
    train: bool = True,
    root: str | os.PathLike[str] | None = None,
    transform: Callable[[Any], Any] | None = None,
    *,
    cache: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> Dataset:
    """FashionMNIST as `torchvision.datasets.FashionMNIST`; Debian's dataset-fashion-mnist is the default source."""
    from torchvision import datasets

    return _load_idx(
        datasets.FashionMNIST,
        train,
        root,
        transform,
        cache,
        download,
        defaults=[DEBIAN_FASHION_MNIST],
        hint=" (or install Debian's package dataset-fashion-mnist)",
    )


def load_mnist(
    train: bool = True,
    root: str | os.PathLike[str] | None = None,
    transform: Callable[[Any], Any] | None = None,
    *,
    cache: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> Dataset:
    """MNIST as `torchvision.datasets.MNIST`, downloaded into the root (or cache) when absent and online."""
    from torchvision import datasets

    return _load_idx(datasets.MNIST, train, root, transform, cache, download, defaults=[])


def load_cifar10(
    train: bool = True,
    root: str | os.PathLike[str] | None = None,
    transform: Callable[[Any], Any] | None = None,
    *,
    cache: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> Dataset:
    """CIFAR-10 as `torchvision.datasets.CIFAR10` from `<root>/cifar-10-batches-py/`, downloaded when absent.

    torchvision checks every batch file against the md5 of the official release, so only the official
    python-version files load; anything else raises DataNotFoundError saying the check failed.
    """
    from torchvision import datasets

    user = _user_root(root)
    place = user if user is not None else cache_dir(cache)
    if place.name == datasets.CIFAR10.base_folder and (place / CIFAR10_FILES[0]).is_file():
        place = place.parent
    folder = place / datasets.CIFAR10.base_folder
    if all((folder / f).is_file() for f in CIFAR10_FILES):
        try:
            return datasets.CIFAR10(root=str(place), train=train, transform=transform, download=False)
        except RuntimeError as err:
            raise DataNotFoundError(
                "CIFAR10",
                CIFAR10_FILES,
                [folder],
                problem="rejected",
                detail="torchvision's md5 check failed: these are not the official cifar-10-python files",
            ) from err
    detail = ""
    if download:
        dataset, detail = _try_download(
            lambda: datasets.CIFAR10(root=str(place), train=train, transform=transform, download=True), place
        )
        if dataset is not None:
            return dataset
    raise DataNotFoundError("CIFAR10", CIFAR10_FILES, [folder], detail=detail)


DatasetLoader = Callable[..., Dataset]
DATASETS: dict[str, DatasetLoader] = {
    "fashion-mnist": load_fashion_mnist,
    "mnist": load_mnist,
    "cifar10": load_cifar10,
}
_ALIASES = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10"}


def dataset_names() -> list[str]:
    """Names `load_dataset` accepts."""
    return sorted(DATASETS)


def load_dataset(
    name: str,
    train: bool = True,
    root: str | os.PathLike[str] | None = None,
    transform: Callable[[Any], Any] | None = None,
    *,
    cache: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> Dataset:
    """Load a dataset by name ("fashion-mnist", "mnist", "cifar10") as torchvision's dataset."""
    key = name.lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(dataset_names())}")
    return DATASETS[key](train, root, transform, cache=cache, download=download)
