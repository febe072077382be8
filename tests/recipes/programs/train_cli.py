"""`ember <argv>` with the fake CIFAR-10 of --cifar accepted (its md5s swapped in), for torchrun launches."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/: fakedata

from fakedata import accept_fake_cifar10  # noqa: E402

from ember.recipes.cli import main  # noqa: E402

if __name__ == "__main__":
    cifar, argv = sys.argv[1], sys.argv[2:]
    with accept_fake_cifar10(Path(cifar) / "cifar-10-batches-py"):
        sys.exit(main(argv))
