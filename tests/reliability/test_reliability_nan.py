"""Promise 4: a non-finite loss stops training and never reaches a checkpoint; non-finite scores are never best;
fp16 GradScaler skipped steps are not failures and the scaler's state is checkpointed and restored."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import pytest
import torch
from fakedata import offline
from harness import (
    assert_same,
    checkpoint_files,
    hooked_trainers,
    load_payload,
    nan_inputs,
    run_cli,
    write_tiny_mnist,
)
from torch import nn
from torch.nn import functional as F

from ember.callbacks import Checkpoint, TerminateOnNan
from ember.engine import Events
from ember.steps import create_trainer


def make_trainer(loss_fn=F.mse_loss, amp=None, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return model, optimizer, create_trainer(model, optimizer, loss_fn, amp=amp)


def make_data(n=12, bad_at=None, bad=math.nan):
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(4, 8, generator=g), torch.randn(4, 2, generator=g)) for _ in range(n)]
    if bad_at is not None:
        x, y = data[bad_at - 1]
        data[bad_at - 1] = (x, torch.full_like(y, bad))
    return data


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("check_every", [1, 50])
def test_non_finite_loss_stops_with_epoch_and_iteration_and_keeps_the_last_good_checkpoint(
    tmp_path, capsys, bad, check_every
):
    model, optimizer, trainer = make_trainer()
    trainer.add(TerminateOnNan(check_every=check_every))
    trainer.add(Checkpoint({"model": model, "optimizer": optimizer}, tmp_path, every_iterations=2, keep_last=1))
    with pytest.warns(RuntimeWarning, match=r"NOT saving the stopped run \(iteration \d+\): TerminateOnNan found a "
                                            r"non-finite value at epoch 1, iteration 9"):
        trainer.run(make_data(12, bad_at=9, bad=bad), max_epochs=2)
    assert trainer.state.terminated_on_nan == (1, 9)
    assert f"non-finite loss ({bad}) at epoch 1, iteration 9" in capsys.readouterr().err
    assert checkpoint_files(tmp_path) == ["checkpoint_000000008.pt"]
    saved = load_payload(tmp_path / "checkpoint_000000008.pt")
    assert all_finite(saved["objects"]["model"])


def test_non_finite_loss_with_finite_weights_is_not_saved_after_the_stop(tmp_path):
    """An Inf loss whose gradients stay finite: only TerminateOnNan knows; COMPLETED must not save."""
    step = {"n": 0}

    def loss_fn(y_pred, y):
        step["n"] += 1
        return F.mse_loss(y_pred, y) + (math.inf if step["n"] == 5 else 0.0)

    model, optimizer, trainer = make_trainer(loss_fn)
    trainer.add(TerminateOnNan(check_every=1))
    trainer.add(Checkpoint({"model": model}, tmp_path, every_iterations=4, keep_last=None))
    with pytest.warns(RuntimeWarning, match="NOT saving the stopped run .*TerminateOnNan found"):
        trainer.run(make_data(12), max_epochs=1)
    assert trainer.state.iteration == 5 and all_finite(model.state_dict())
    assert checkpoint_files(tmp_path) == ["checkpoint_000000004.pt"]


def test_nan_through_the_cli_exits_non_zero_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    offline(monkeypatch, tmp_path)
    root = write_tiny_mnist(tmp_path / "mnist")
    folder = tmp_path / "ckpt"
    argv = ["train", "mnist-lenet", "--data-root", str(root), "--epochs", "2", "--batch-size", "8",
            "--checkpoint-dir", str(folder), "--checkpoint-every", "2", "--no-tensorboard", "--no-progress"]
    with hooked_trainers(corrupt_at=5, corrupt=nan_inputs), pytest.warns(RuntimeWarning, match="NOT saving"):
        code, out, err = run_cli(argv)
    assert code == 1, out + err
    assert "TerminateOnNan: non-finite loss (nan) at epoch 1, iteration 5" in err
    assert checkpoint_files(folder) == ["checkpoint_000000002.pt", "checkpoint_000000004.pt"]
    assert all_finite(load_payload(Checkpoint.latest(folder))["objects"]["model"])


def test_non_finite_scores_never_become_best_nor_evict_a_finite_one(tmp_path):
    scores = [0.5, math.nan, math.inf, 0.7, -math.inf, math.nan, 0.6, math.inf]
    model, optimizer, trainer = make_trainer()
    trainer.add(Checkpoint({"model": model}, tmp_path, every_iterations=1, keep_last=1, keep_best=2,
                           monitor=lambda e: scores[e.state.iteration - 1]))
    trainer.run(make_data(len(scores)), max_epochs=1)
    assert checkpoint_files(tmp_path) == [
        "best_checkpoint_000000004_score=0.7.pt",
        "best_checkpoint_000000007_score=0.6.pt",
        "checkpoint_000000008.pt",
    ]


def test_fp16_skipped_steps_are_not_failures_and_the_scaler_state_is_checkpointed(tmp_path):
    """CPU autocast in float16 works with torch 2.x: an oversized initial scale makes the first steps overflow."""

    model, optimizer, trainer = make_trainer(amp="fp16")
    assert isinstance(trainer.scaler, torch.amp.GradScaler)
    trainer.scaler.load_state_dict({"scale": 2.0**22, "growth_factor": 2.0, "backoff_factor": 0.5,
                                    "growth_interval": 3, "_growth_tracker": 0})
    trainer.add(TerminateOnNan(check_every=1))
    moved = []
    before = {}
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda: before.update(w=model[0].weight.detach().clone()))
    trainer.add_event_handler(Events.ITERATION_COMPLETED,
                              lambda: moved.append(not torch.equal(before["w"], model[0].weight)))
    ckpt = trainer.add(Checkpoint({"model": model, "optimizer": optimizer}, tmp_path, every_iterations=6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no refused save: skipped steps leave finite weights
        trainer.run(make_data(12), max_epochs=1)
    assert trainer.state.terminated_on_nan is None and trainer.state.iteration == 12
    assert not all(moved) and any(moved), f"expected skipped and taken steps, got {moved}"
    saved = load_payload(tmp_path / "checkpoint_000000012.pt")
    assert saved["objects"]["scaler"]["scale"] == trainer.scaler.get_scale() < 2.0**22
    assert ckpt.objects["scaler"] is trainer.scaler

    model2, optimizer2, trainer2 = make_trainer(amp="fp16", seed=5)
    Checkpoint.load(tmp_path / "checkpoint_000000012.pt", {"model": model2, "optimizer": optimizer2,
                                                          "trainer": trainer2})
    assert trainer2.scaler.state_dict() == trainer.scaler.state_dict()
    # both continue the same way: the restored scaler makes the same skip/step decisions
    for t in (trainer, trainer2):
        t.run(make_data(12), max_epochs=2)
    assert_same(model.state_dict(), model2.state_dict())
    assert_same(trainer.scaler.state_dict(), trainer2.scaler.state_dict())


def test_fp16_resume_through_cli_keeps_the_scaler(tmp_path, monkeypatch):
    offline(monkeypatch, tmp_path)
    root: Path = write_tiny_mnist(tmp_path / "mnist")
    base = ["train", "mnist-lenet", "--data-root", str(root), "--epochs", "2", "--batch-size", "8", "--amp",
            "fp16", "--no-tensorboard", "--no-progress", "--device", "cpu"]
    code, out, err = run_cli([*base, "--checkpoint-dir", str(tmp_path / "straight")])
    assert code == 0, err
    code, out, err = run_cli([*base, "--checkpoint-dir", str(tmp_path / "split"), "--max-iterations", "5"])
    assert code == 0, err
    assert "scaler" in load_payload(Checkpoint.latest(tmp_path / "split"))["objects"]
    code, out, err = run_cli([*base, "--checkpoint-dir", str(tmp_path / "split"), "--resume"])
    assert code == 0, err
    straight = load_payload(Checkpoint.latest(tmp_path / "straight"))["objects"]
    resumed = load_payload(Checkpoint.latest(tmp_path / "split"))["objects"]
    for part in ("model", "optimizer", "scaler"):
        assert_same(straight[part], resumed[part], part)


@pytest.mark.parametrize("order", ["guard-first", "checkpoint-first"])
@pytest.mark.parametrize("poison", ["inf-loss", "nan-weights"])
def test_a_checkpoint_every_iteration_saves_no_non_finite_step_and_warns_once(tmp_path, order, poison):
    """TerminateOnNan looks every 50 steps, the checkpoint every step: the save makes it look first, so neither
    an Inf loss with finite weights nor NaN weights is saved, and the refusal is reported once."""
    step = {"n": 0}

    def loss_fn(y_pred, y):
        step["n"] += 1
        return F.mse_loss(y_pred, y) + (math.inf if poison == "inf-loss" and step["n"] >= 3 else 0.0)

    model, optimizer, trainer = make_trainer(loss_fn)
    guard = TerminateOnNan(check_every=50)
    ckpt = Checkpoint({"model": model, "optimizer": optimizer}, tmp_path, every_iterations=1, keep_last=None)
    for handler in (guard, ckpt) if order == "guard-first" else (ckpt, guard):
        trainer.add(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.run(make_data(12, bad_at=3 if poison == "nan-weights" else None), max_epochs=3)
    refused = [w for w in caught if "NOT saving" in str(w.message)]
    assert len(refused) == 1, [str(w.message) for w in caught]
    assert trainer.state.terminated_on_nan == (1, 3)
    # the guard's order runs it before the checkpoint whatever the attach order: it stops at step 3 in both
    assert trainer.state.iteration == 3
    assert checkpoint_files(tmp_path) == ["checkpoint_000000001.pt", "checkpoint_000000002.pt"]


def test_the_nan_message_is_printed_once_without_logging_configured(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(logging.root, "handlers", [])  # as in a plain script: logging would print it again
    model, optimizer, trainer = make_trainer()
    trainer.add(TerminateOnNan(check_every=4))
    trainer.run(make_data(12, bad_at=6), max_epochs=1)
    err = capsys.readouterr().err
    assert err.count("TerminateOnNan: non-finite loss (nan) at epoch 1, iteration 6") == 1, err


def test_cli_checkpoint_every_1_with_nan_warns_once_and_prints_the_stop_once(tmp_path, monkeypatch):
    offline(monkeypatch, tmp_path)
    monkeypatch.setattr(logging.root, "handlers", [])
    root = write_tiny_mnist(tmp_path / "mnist")
    folder = tmp_path / "ckpt"
    argv = ["train", "mnist-lenet", "--data-root", str(root), "--epochs", "2", "--batch-size", "8", "--keep-last",
            "10", "--checkpoint-dir", str(folder), "--checkpoint-every", "1", "--no-tensorboard", "--no-progress"]
    with hooked_trainers(corrupt_at=3, corrupt=nan_inputs), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, out, err = run_cli(argv)
    assert code == 1, out + err
    assert err.count("TerminateOnNan: non-finite loss (nan) at epoch 1, iteration 3") == 1, err
    assert len([w for w in caught if "NOT saving" in str(w.message)]) == 1
    assert checkpoint_files(folder) == ["checkpoint_000000001.pt", "checkpoint_000000002.pt"]
