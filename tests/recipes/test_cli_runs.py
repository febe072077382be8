"""`ember train` runs and their identity: a folder per run paired with its TensorBoard run, the whole
configuration in each checkpoint, --resume that continues the run with its own flags (applying or refusing a
differing one), fewer --epochs than done, Ctrl-C and its resume, and errors in terms of flags."""

from __future__ import annotations

import gc
import multiprocessing
import os
import re
import signal
from pathlib import Path

import pytest
import torch
from fakedata import offline, write_fashion_mnist
from torch import nn

from ember.callbacks import Checkpoint
from ember.engine import Events
from ember.recipes.cli import main
from ember.recipes.common import RunContext
from ember.steps import create_trainer

MLP = "fashion-mnist-mlp"  # 256 training images at batch 64: 4 iterations an epoch


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    write_fashion_mnist(tmp_path / "fashion", n_train=256, n_test=64)
    monkeypatch.chdir(tmp_path)
    offline(monkeypatch, tmp_path)


def train(capsys, *flags: str, recipe: str = MLP) -> tuple[int, str, str]:
    rc = main(["train", recipe, "--data-root", "fashion", "--device", "cpu", *flags])
    out, err = capsys.readouterr()
    return rc, out, err


def run_folders(recipe: str = MLP) -> list[Path]:
    return sorted(Path("checkpoints", recipe).iterdir())


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def saved_config(folder: Path) -> dict:
    return torch.load(Checkpoint.latest(folder), weights_only=True)["objects"]["run"]["config"]


def test_each_run_gets_its_own_folders_and_says_where_they_are(capsys):
    rc, _, err = train(capsys, "--epochs", "1", "--max-iterations", "2")
    assert rc == 0, err
    rc, _, err2 = train(capsys, "--epochs", "1", "--max-iterations", "2", "--no-tensorboard")
    assert rc == 0, err2
    first, second = run_folders()
    lines = [f"ember: run {first.name}: checkpoints go to {first}",
             f"ember: TensorBoard logs go to runs/{MLP}/{first.name} (view them: ember board runs/{MLP})"]
    assert "\n".join(lines) in err, err
    assert all(len(line) <= 120 for line in lines)  # not one line of about 190 characters
    assert list(Path("runs", MLP, first.name).glob("events.out.tfevents.*"))
    assert f"ember: run {second.name}: checkpoints go to {second}, no TensorBoard logs" in err2
    assert saved_config(first)["lr"] == 1e-3 and saved_config(first)["max_iterations"] == 2


def test_resume_continues_the_newest_run_with_its_flags_and_refuses_a_differing_one(capsys):
    assert train(capsys, "--epochs", "1", "--lr", "0.05", "--no-tensorboard")[0] == 0
    (folder,) = run_folders()
    before = files(folder)
    for flags, shown in [(["--lr", "0.001"], "--lr 0.001 differs from the run being resumed ({}), which has --lr "
                                             "0.05; drop --lr to keep the run's value"),
                         (["--batch-size", "32"], "--batch-size 32 in 1 process is a global batch of 32, but the run "
                                                  "being resumed ({}) has a global batch of 64")]:
        rc, out, err = train(capsys, "--resume", *flags)
        assert rc == 1 and out == "" and err.count("\n") == 1, err
        assert shown.format(folder) in err, err
    assert files(folder) == before

    rc, out, err = train(capsys, "--resume", "--epochs", "2")  # more epochs: applied; --lr 0.05 taken from the run
    assert rc == 0, err
    assert re.search(rf"^Resumed from {folder}/checkpoint_000000004\.pt at epoch 1, iteration 4\.$", out, re.M), out
    assert "Epoch 2\n" in out and "Epoch 1\n" not in out
    assert saved_config(folder)["lr"] == 0.05 and saved_config(folder)["epochs"] == 2

    before = files(folder)
    rc, out, err = train(capsys, "--resume", "--epochs", "1")  # fewer than done: nothing touched
    assert rc == 0 and "Nothing to do" in out and "already finished 2 epochs (iteration 8)" in out, out + err
    assert files(folder) == before and run_folders() == [folder]


def test_a_fresh_run_into_a_folder_of_another_run_is_refused(capsys):
    assert train(capsys, "--epochs", "1", "--max-iterations", "1", "--no-tensorboard", "--checkpoint-dir", "ck")[0] == 0
    before = files(Path("ck"))
    rc, out, err = train(capsys, "--epochs", "1", "--no-tensorboard", "--checkpoint-dir", "ck")
    assert rc == 1 and err.count("\n") == 1 and "ck holds the checkpoints of another run (run ck)" in err, err
    assert "--resume to continue that one" in err and files(Path("ck")) == before


def test_ctrl_c_stops_without_done_and_the_resume_names_the_same_epoch(capsys, monkeypatch):
    fit = RunContext.fit

    def interrupted_fit(self, trainer, *args, **kwargs):
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=6), lambda: os.kill(os.getpid(), signal.SIGINT))
        return fit(self, trainer, *args, **kwargs)

    monkeypatch.setattr(RunContext, "fit", interrupted_fit)
    rc, out, err = train(capsys, "--epochs", "2", "--no-tensorboard")
    assert rc == 130, err
    assert "Done!" not in out and "Stopped by SIGINT at epoch 2, iteration 6;" in out, out
    monkeypatch.setattr(RunContext, "fit", fit)
    rc, out, err = train(capsys, "--resume", "--no-tensorboard")
    assert rc == 0, err
    assert re.search(r"^Resumed from \S+ at epoch 2, iteration 6\.$", out, re.M) and out.endswith("Done!\n"), out


def test_a_run_on_dataloader_workers_ends_them_when_it_returns(capsys):
    before = set(multiprocessing.active_children())
    gc.disable()  # the run's loaders sit in reference cycles: their workers must end without the collector
    try:
        rc, out, err = train(capsys, "--data-path", "dataloader", "--num-workers", "2", "--max-iterations", "6",
                             "--no-tensorboard", "--no-progress")  # stopped mid-epoch: its iterator not run out
        assert rc == 0, err
        assert set(multiprocessing.active_children()) - before == set(), "workers outlived the run"
    finally:
        gc.enable()


def test_cli_errors_speak_in_flags(capsys):
    rc, out, err = train(capsys, "--cuda-graph", "--no-tensorboard")
    assert rc == 1 and err.count("\n") == 1 and "--cuda-graph" in err and "cuda_graph" not in err, err

    other = nn.Linear(3, 2)  # another model's checkpoint where the run's should be
    trainer = create_trainer(other, torch.optim.SGD(other.parameters(), lr=0.1), nn.functional.mse_loss)
    trainer.run([(torch.randn(2, 3), torch.randn(2, 2))])
    Checkpoint({"model": other}, "wrong").save(trainer)
    rc, out, err = train(capsys, "--checkpoint-dir", "wrong", "--resume", "--no-tensorboard")
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "strict=False" not in err and "--resume" in err, err


def test_resume_of_another_recipes_run_is_refused(capsys):
    rc, _, err = train(capsys, "--max-iterations", "1", "--no-tensorboard", recipe="fashion-mnist-cnn")
    assert rc == 0, err
    (folder,) = run_folders("fashion-mnist-cnn")
    rc, out, err = train(capsys, "--resume", str(folder))
    assert rc == 1 and f"{folder} holds a run of fashion-mnist-cnn, not of {MLP}" in err, err
