"""Promise 7: a handler that raises. EXCEPTION_RAISED fires, TensorBoard is flushed and closed, a checkpoint of
the last finished iteration is written (Checkpoint(save_on_exception=True)), and the original exception
reaches the caller. An exception inside the step itself leaves the last checkpoint as it was."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from fakedata import offline
from harness import (
    HandlerFault,
    assert_same,
    attach_hooks,
    checkpoint_files,
    error_lines,
    hooked_trainers,
    load_payload,
    run_cli,
    write_tiny_mnist,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.nn import functional as F

from ember.callbacks import Checkpoint, TensorBoardLogger
from ember.engine import Events
from ember.steps import create_trainer


def setup(tmp_path, first=None):
    """A trainer with TensorBoard and a Checkpoint(save_on_exception=True); `first` is attached before them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    trainer = create_trainer(model, optimizer, F.mse_loss)
    if first is not None:
        trainer.add_event_handler(*first)
    logger = trainer.add(TensorBoardLogger(tmp_path / "tb", log_every=1, flush_secs=3600))
    ckpt = trainer.add(Checkpoint({"model": model, "optimizer": optimizer}, tmp_path / "ckpt", every_epochs=1,
                                  save_on_exception=True))
    seen = []

    def record_and_reraise(engine, exc):
        seen.append(exc)
        raise exc  # in Ignite (and ember) a handler that returns would have handled the exception

    trainer.add_event_handler(Events.EXCEPTION_RAISED, record_and_reraise)
    data = [(torch.randn(3, 4), torch.randn(3, 2)) for _ in range(6)]
    return model, trainer, logger, ckpt, seen, data


def logged_steps(logdir) -> list[int]:
    events = EventAccumulator(str(logdir))
    events.Reload()
    return [e.step for e in events.Scalars("iteration/loss")]


@pytest.mark.parametrize(
    ("event", "error", "step"),
    [
        (Events.ITERATION_COMPLETED(once=9), HandlerFault("metric blew up"), 9),
        (Events.EPOCH_COMPLETED(once=2), ValueError("evaluation failed"), 12),
        (Events.ITERATION_COMPLETED(once=9), KeyboardInterrupt(), 9),
    ],
    ids=["iteration", "epoch", "keyboard-interrupt"],
)
def test_handler_fault_fires_exception_raised_closes_tensorboard_and_saves_the_last_iteration(
    tmp_path, event, error, step
):
    def faulty(engine):
        raise error

    # first: the epoch-end checkpoint must not have been written by the time the handler fails
    model, trainer, logger, ckpt, seen, data = setup(tmp_path, first=(event, faulty))
    with pytest.raises(type(error)) as caught:
        trainer.run(data, max_epochs=3)
    assert caught.value is error and seen == [error]
    assert trainer.state.iteration == step
    assert logger.writer.all_writers is None, "the SummaryWriter was not closed"
    # the failing handler ran before the logger's on its event: iteration 9's loss was never logged
    last_logged = step - 1 if event == Events.ITERATION_COMPLETED else step
    assert logged_steps(tmp_path / "tb") == list(range(1, last_logged + 1)), "every logged loss is on disk"
    saved = load_payload(tmp_path / "ckpt" / f"checkpoint_{step:09d}.pt")
    assert saved["step"] == step and saved["objects"]["trainer"]["iteration"] == step
    assert_same(model.state_dict(), saved["objects"]["model"], "model")


def test_an_exception_inside_the_step_keeps_the_last_checkpoint(tmp_path):
    model, trainer, logger, ckpt, seen, data = setup(tmp_path)
    attach_hooks(trainer, corrupt_at=9, corrupt=lambda batch: (torch.randn(3, 5), batch[1]))  # forward fails
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied") as caught, pytest.warns(
        RuntimeWarning, match="NOT saving after RuntimeError: it was raised in iteration 9 before its step finished"
    ):
        trainer.run(data, max_epochs=3)
    assert seen == [caught.value]
    assert "iteration 9" in caught.value.__notes__[0]
    assert checkpoint_files(tmp_path / "ckpt") == ["checkpoint_000000006.pt"]
    assert logger.writer.all_writers is None


def test_handler_fault_through_the_cli(tmp_path, monkeypatch):
    offline(monkeypatch, tmp_path)
    root = write_tiny_mnist(tmp_path / "mnist")
    argv = ["train", "mnist-lenet", "--data-root", str(root), "--epochs", "2", "--batch-size", "8",
            "--checkpoint-dir", str(tmp_path / "ckpt"), "--logdir", str(tmp_path / "tb"), "--no-progress"]
    with hooked_trainers(fail_at=8), warnings.catch_warnings():
        warnings.simplefilter("error")
        code, out, err = run_cli(argv)
    lines = error_lines(err)
    assert code == 1 and len(lines) == 1 and "handler fault injected after iteration 8" in lines[0], err
    assert checkpoint_files(tmp_path / "ckpt") == ["checkpoint_000000006.pt", "checkpoint_000000008.pt"]
    assert os.listdir(tmp_path / "tb")
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("epoch/time_s")] == [6], "epoch 1 (6 iterations of 8) was flushed"
