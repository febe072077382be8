"""The FashionMNIST speed-run recipe: one short epoch on small fake data prints its lines and checkpoints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from fakedata import offline, write_fashion_mnist

from ember.callbacks import EvalEvents
from ember.engine import Engine
from ember.recipes import RECIPES
from ember.recipes.cli import main
from ember.recipes.fashion_mnist_speedrun import SpeedNet, TimeToTarget, native_bf16

EPOCH_LINE = r"Epoch 1/1: test accuracy \d+\.\d\d%, \d+\.\d s since start"
VERDICT = (r"(Reached 92% test accuracy in \d+\.\d s \(epoch 1\)"
           r"|Did not reach 92% in 1 epoch\(s\) \(best \d+\.\d\d%\); train longer with --epochs)")


@pytest.fixture
def fashion(tmp_path, monkeypatch) -> Path:
    """A small FashionMNIST, offline, in the test's own folder and cache."""
    monkeypatch.chdir(tmp_path)
    offline(monkeypatch, tmp_path)
    write_fashion_mnist(tmp_path / "fashion", n_train=512, n_test=256)
    return tmp_path / "fashion"


@pytest.mark.parametrize("precision", ["default", "--fp32"])
def test_speedrun_prints_accuracy_time_and_verdict(precision, fashion, capsys):
    flags = ["--epochs", "1", "--batch-size", "64", "--device", "cpu", "--no-tensorboard",
             "--checkpoint-dir", "ckpt"]
    if precision != "default":
        flags.append(precision)
    rc = main(["train", "fashion-mnist-speedrun", "--data-root", str(fashion), *flags])
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = out.splitlines()
    dtype = "bf16" if precision == "default" and native_bf16(torch.device("cpu")) else "float32"
    assert lines[0] == (f"fashion-mnist-speedrun: cpu, {dtype}, channels-last, batch 64, 1 epoch(s), "
                        "target 92% test accuracy")
    assert re.fullmatch(EPOCH_LINE, lines[1]), lines[1]
    assert re.fullmatch(VERDICT, lines[2]), lines[2]
    assert len(lines) == 3, out
    assert list(Path("ckpt").glob("*.pt")), "the epoch's checkpoint was not written"


def test_speedrun_is_registered_with_its_defaults():
    recipe = RECIPES["fashion-mnist-speedrun"]
    assert (recipe.dataset, recipe.epochs, recipe.batch_size) == ("fashion-mnist", 3, 128)
    assert recipe.shuffle


def test_speednet_maps_images_to_ten_logits():
    assert SpeedNet()(torch.rand(5, 1, 28, 28)).shape == (5, 10)


def test_time_to_target_reports_the_first_epoch_at_or_above_the_target(capsys):
    engine = Engine(lambda e, b: None)
    reporter = TimeToTarget(start=0.0, target=0.9)
    engine.register_events(EvalEvents.EVALUATED)
    reporter.attach(engine)
    engine.state.max_epochs = 3
    for epoch, accuracy in enumerate([0.85, 0.91, 0.95], start=1):
        engine.state.epoch = epoch
        engine.state.metrics["val/accuracy"] = accuracy
        engine.fire_event(EvalEvents.EVALUATED)
    lines = capsys.readouterr().out.splitlines()
    epochs = [line.split(":")[0] for line in lines if line.startswith("Epoch")]
    assert epochs == ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]
    reached = [line for line in lines if line.startswith("Reached")]
    assert len(reached) == 1 and reached[0].endswith("(epoch 2)")
    assert reporter.reached_s is not None and reporter.best == 0.95


def test_a_run_stopped_before_any_evaluation_gives_no_verdict_and_one_line_for_no_earlier_run(fashion, capsys):
    rc = main(["train", "fashion-mnist-speedrun", "--data-root", str(fashion), "--resume", "--max-iterations", "2",
               "--batch-size", "64", "--device", "cpu", "--no-tensorboard", "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "Did not reach" not in out and "best 0.00%" not in out, out  # it never evaluated
    said = [line for line in (out + err).splitlines() if "starting" in line]
    assert said == ["No earlier run of fashion-mnist-speedrun in checkpoints/fashion-mnist-speedrun: starting a new "
                    "run."], said
    assert "Stopped after iteration 2 (max_iterations 2)" in out + err
