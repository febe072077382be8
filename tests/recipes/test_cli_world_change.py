"""--resume with another number of processes (docs/distributed.md): the batch per process may change when the
global batch (--batch-size times the processes, saved in the run's config) stays the same; otherwise refused."""

from __future__ import annotations

import pytest
import torch
from fakedata import offline, write_fashion_mnist

from ember.callbacks import Checkpoint
from ember.recipes import RECIPES
from ember.recipes.cli import main
from ember.recipes.flags import GLOBAL_BATCH, parse_flags
from ember.recipes.recipe import RecipeError

MLP = "fashion-mnist-mlp"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    write_fashion_mnist(tmp_path / "fashion", n_train=256, n_test=64)
    monkeypatch.chdir(tmp_path)
    offline(monkeypatch, tmp_path)


def test_a_run_resumes_in_another_world_with_the_same_global_batch(capsys, monkeypatch):
    flags = ["--data-root", "fashion", "--device", "cpu", "--no-tensorboard", "--checkpoint-dir", "ck"]
    assert main(["train", MLP, *flags, "--epochs", "1", "--batch-size", "32", "--max-iterations", "2"]) == 0
    saved = torch.load(Checkpoint.latest("ck"), weights_only=True)["objects"]["run"]["config"]
    assert saved[GLOBAL_BATCH] == 32
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun --nproc-per-node=2 would start it
    args, run = parse_flags(RECIPES[MLP], ["--resume", "ck", "--batch-size", "16"])
    assert args.batch_size == 16 and run.path == "ck"
    for given in (["--batch-size", "32"], []):  # a global batch of 64, given or taken from the run
        with pytest.raises(RecipeError, match="--batch-size 32 in 2 processes is a global batch of 64, but the run "
                                              r"being resumed \(ck\) has a global batch of 32; pass --batch-size 16"):
            parse_flags(RECIPES[MLP], ["--resume", "ck", *given])
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(RecipeError, match="--batch-size 16 in 1 process is a global batch of 16"):
        parse_flags(RECIPES[MLP], ["--resume", "ck", "--batch-size", "16"])
    capsys.readouterr()
    assert main(["train", MLP, *flags, "--resume", "ck", "--batch-size", "32", "--epochs", "1"]) == 0
    assert "Resumed from ck/checkpoint_000000002.pt" in capsys.readouterr().out
