"""GracefulStop on its own, as a plain script uses it: `trainer.add(GracefulStop())` around a bare `trainer.run`."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from harness import load_payload, tiny_regression
from torch import nn
from torch.nn import functional as F

from ember.callbacks import Checkpoint, GracefulStop
from ember.callbacks import graceful_stop as module
from ember.engine import Events
from ember.steps import create_trainer


def tiny_trainer():
    model, _, trainer = tiny_regression(3, 2)
    data = [(torch.randn(4, 3), torch.randn(4, 2)) for _ in range(10)]
    return model, trainer, data


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1])
def test_attached_alone_it_stops_after_the_iteration_saves_and_restores_the_handlers(tmp_path, signum):
    model, trainer, data = tiny_trainer()
    trainer.add(Checkpoint({"model": model}, tmp_path))
    stop = trainer.add(GracefulStop())
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=4), lambda: os.kill(os.getpid(), signum))
    before = signal.getsignal(signum)
    trainer.run(data, max_epochs=2)
    assert trainer.state.iteration == 4 and trainer.state.stop_reason == signal.Signals(signum).name
    assert stop.exit_status == 128 + signum
    assert load_payload(Checkpoint.latest(tmp_path))["step"] == 4
    assert signal.getsignal(signum) is before, "the previous handler must be back once the run is over"

    trainer.run(data, max_epochs=2)  # the next run starts with no stop asked for, and runs to its end
    assert trainer.state.stop_reason is None and trainer.state.epoch == 2


def test_under_torchrun_the_ranks_agree_every_check_every_iterations(monkeypatch):
    """Only rank 1 is signalled (at iteration 5); both must stop at 20, with one all-reduce per 20 steps."""
    calls = []

    def all_reduce_sum(value):
        calls.append(value)
        return value + 1  # the other rank was signalled

    monkeypatch.setattr(module.dist, "world_size", lambda: 2)
    monkeypatch.setattr(module.dist, "all_reduce_sum", all_reduce_sum)
    monkeypatch.setattr(module.dist, "all_gather_object", lambda own: [own, signal.SIGUSR1])  # only once stopping
    _, trainer, data = tiny_trainer()
    stop = trainer.add(GracefulStop(check_every=20))
    trainer.run(data, max_epochs=5)
    assert trainer.state.iteration == 20 and calls == [0]
    # This rank got no signal itself: it stops as the signalled one does, with its name and exit status.
    assert trainer.state.stop_reason == "SIGUSR1" and stop.exit_status == 138


def test_bad_check_every_is_refused():
    with pytest.raises(ValueError, match="check_every must be a positive number of iterations"):
        GracefulStop(check_every=0)


def test_attached_alone_it_never_swallows_an_exception_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGTERM)
    trainer = create_trainer(nn.Linear(2, 1), torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1), F.mse_loss)
    trainer.add(GracefulStop())

    @trainer.on(Events.ITERATION_COMPLETED(once=2))
    def fail(engine):
        raise ValueError("boom")

    data = [(torch.randn(4, 2), torch.randn(4, 1)) for _ in range(3)]
    with pytest.raises(ValueError, match="boom"):
        trainer.run(data, max_epochs=1)
    assert signal.getsignal(signal.SIGTERM) is before
