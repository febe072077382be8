"""Every recipe trains under `torchrun --nproc-per-node=2 ... --strategy fsdp` (gloo on the CPU) and writes a
sharded checkpoint folder (the first recipe with --async-checkpoint). Marked `multiprocess_long` (`make test-long`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fakedata import write_cifar10, write_fashion_mnist, write_mnist

from ember.recipes import RECIPES

PROGRAM = Path(__file__).parent / "programs" / "train_cli.py"
REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.multiprocess_long
ASYNC = next(iter(RECIPES))  # this one saves in the background (--async-checkpoint)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str, Path]]:
    root = tmp_path_factory.mktemp("fsdp_recipes")
    write_fashion_mnist(root / "fashion", n_train=256, n_test=32)  # the speed run's OneCycleLR needs > 4 steps
    write_mnist(root / "mnist", n_train=128, n_test=32)
    write_cifar10(root / "cifar", n_train=250, n_test=50)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "EMBER_DATA")}
    env.update(OMP_NUM_THREADS="1", EMBER_OFFLINE="1", EMBER_CACHE=str(root / "cache"),
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p))
    results: dict[str, tuple[int, str, Path]] = {}
    names = list(RECIPES)
    for start in range(0, len(names), 3):  # three jobs of two processes at a time
        procs = {}
        for name in names[start:start + 3]:
            data = {"fashion-mnist": "fashion", "mnist": "mnist", "cifar10": "cifar"}[RECIPES[name].dataset]
            folder = root / f"ck-{name}"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(PROGRAM),
                   str(root / "cifar"), "train", name, "--strategy", "fsdp", "--device", "cpu", "--data-root",
                   str(root / data), "--epochs", "1", "--batch-size", "16", "--max-iterations", "2",
                   "--no-tensorboard", "--no-progress", "--checkpoint-dir", str(folder),
                   *(["--async-checkpoint"] if name == ASYNC else [])]
            procs[name] = (subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            text=True), folder)
        for name, (proc, folder) in procs.items():
            try:
                out, _ = proc.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                proc.kill()
                out = proc.communicate()[0] + "\n[killed after 300 s]"
            results[name] = (proc.returncode, out, folder)
    return results


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_trains_under_fsdp_with_sharded_checkpoints(runs: dict, name: str) -> None:
    rc, out, folder = runs[name]
    assert rc == 0, out[-5000:]
    assert "Distributed: 2 processes, global batch 32" in out
    assert ("asynchronous saves hold a snapshot" in out) == (name == ASYNC)
    assert (folder / "checkpoint_000000002.dcp" / "manifest.pt").exists(), sorted(os.listdir(folder))
