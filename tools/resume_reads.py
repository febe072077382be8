"""How often `ember train fashion-mnist-mlp --resume` reads its newest checkpoint before training restarts.

Trains 6 iterations of fashion-mnist-mlp on small fake FashionMNIST files in a temp folder (`--checkpoint-dir
ck`, files at iterations 4 and 6), then resumes it, counting every `torch.load` by file name and every listing
(`os.listdir`, `os.scandir`) of the run folder until `Engine.run` starts. Prints the two counts.
Run from the repository root: PYTHONPATH=.:tests python tools/resume_reads.py
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import tempfile
from typing import Any

import torch
from fakedata import write_fashion_mnist

import ember.engine
from ember.recipes.cli import main


def count() -> tuple[dict[str, int], int]:
    """(torch.load opens by file name, listings of the run folder) before the resumed run's training starts."""
    os.chdir(tempfile.mkdtemp())
    write_fashion_mnist("fashion", n_train=256, n_test=64)
    argv = ["train", "fashion-mnist-mlp", "--data-root", "fashion", "--device", "cpu", "--no-tensorboard",
            "--no-progress", "--epochs", "2", "--checkpoint-dir", "ck"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main([*argv, "--max-iterations", "6"]) == 0
    loads: collections.Counter = collections.Counter()
    listings: collections.Counter = collections.Counter()
    real_load, real_listdir, real_scandir, real_run = torch.load, os.listdir, os.scandir, ember.engine.Engine.run
    seen: dict[str, Any] = {}

    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        loads[os.path.basename(str(f))] += 1
        return real_load(f, *args, **kwargs)

    def listdir(path: Any = ".") -> Any:
        listings[os.path.normpath(str(path))] += 1
        return real_listdir(path)

    def scandir(path: Any = ".") -> Any:
        listings[os.path.normpath(str(path))] += 1
        return real_scandir(path)

    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.setdefault("counts", (dict(loads), listings["ck"]))
        return real_run(self, *args, **kwargs)

    torch.load, os.listdir, os.scandir, ember.engine.Engine.run = load, listdir, scandir, run
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert main([*argv, "--resume"]) == 0
    finally:
        torch.load, os.listdir, os.scandir, ember.engine.Engine.run = real_load, real_listdir, real_scandir, real_run
    return seen["counts"]


if __name__ == "__main__":
    opened, listed = count()
    print(f"torch.load opens before training restarts: {opened}")
    print(f"listings of the run folder before training restarts: {listed}")
