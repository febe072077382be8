"""TerminateOnNan stops at the first non-finite loss or output, names its epoch and iteration, and says why."""

import io
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ember.callbacks.terminate_on_nan import TerminateOnNan
from ember.engine import Engine, Events
from ember.steps import create_trainer


def engine_bad_at(iteration: int, value: float = math.nan, make=lambda v: torch.tensor(v)) -> Engine:
    """An engine whose output is 1.0, except `value` at `iteration`."""
    return Engine(lambda e, b: make(value if e.state.iteration == iteration else 1.0))


def test_stops_at_the_next_check_and_names_the_first_bad_iteration():
    engine = engine_bad_at(37)
    out = io.StringIO()
    handler = engine.add(TerminateOnNan(check_every=10, file=out))
    engine.run([0] * 20, max_epochs=5)
    # iteration 37 is step 17 of epoch 2; the flags are read at iteration 40 (every 10 steps)
    assert engine.state.iteration == 40
    assert engine.state.terminated_on_nan == (2, 37)
    message = ("TerminateOnNan: non-finite loss (nan) at epoch 2, iteration 37 (found at iteration 40, checked every "
               "10); training stopped.")
    assert out.getvalue() == message + "\n"
    assert handler.message == message


def test_later_bad_steps_do_not_hide_the_first():
    engine = Engine(lambda e, b: torch.tensor(math.inf if e.state.iteration in (4, 6, 7) else 0.5))
    out = io.StringIO()
    engine.add(TerminateOnNan(check_every=8, file=out))
    engine.run([0] * 10)
    assert engine.state.terminated_on_nan == (1, 4)
    assert engine.state.iteration == 8
    assert "non-finite loss (inf) at epoch 1, iteration 4" in out.getvalue()


def test_checked_at_the_last_step_before_epoch_completed_handlers():
    engine = engine_bad_at(18, -math.inf)
    epochs_completed = []
    engine.add(TerminateOnNan(check_every=50, file=io.StringIO()))
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epochs_completed.append(e.state.epoch))
    engine.run([0] * 20, max_epochs=3)
    assert engine.state.iteration == 20
    assert engine.state.terminated_on_nan == (1, 18)
    assert epochs_completed == []  # e.g. a checkpoint at EPOCH_COMPLETED never sees the bad weights


def test_any_tensor_in_the_output_and_python_floats():
    def step(engine, batch):
        second = torch.tensor([1.0, math.nan]) if engine.state.iteration == 3 else torch.ones(2)
        return {"a": torch.ones(3), "b": [second, torch.arange(3)]}

    engine = Engine(step)
    out = io.StringIO()
    engine.add(TerminateOnNan(check_every=2, file=out))
    engine.run([0] * 6)
    assert engine.state.terminated_on_nan == (1, 3)
    assert engine.state.iteration == 4
    assert out.getvalue() == ("TerminateOnNan: non-finite output at epoch 1, iteration 3 (found at iteration 4, "
                              "checked every 2); training stopped.\n")

    engine = engine_bad_at(2, make=float)  # a Python float is checked at once, with no device to wait for
    out = io.StringIO()
    engine.add(TerminateOnNan(check_every=100, file=out))
    engine.run([0] * 6)
    assert engine.state.iteration == 2
    assert "non-finite loss (nan) at epoch 1, iteration 2" in out.getvalue()


def test_real_trainer_with_a_nan_in_the_data_and_a_clean_run():
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    x[45] = math.nan  # batch index 5 of 8 (batch size 8): iteration 6
    model = nn.Linear(4, 2)
    trainer = create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss())
    trainer.add(TerminateOnNan(check_every=3, file=io.StringIO()))
    trainer.run(DataLoader(TensorDataset(x, y), batch_size=8), max_epochs=2)
    assert trainer.state.terminated_on_nan == (1, 6)
    assert trainer.state.iteration == 6

    x[45] = 0.0
    model = nn.Linear(4, 2)
    trainer = create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss())
    handler = trainer.add(TerminateOnNan(file=io.StringIO()))
    trainer.run(DataLoader(TensorDataset(x, y), batch_size=8), max_epochs=2)
    assert trainer.state.terminated_on_nan is None
    assert trainer.state.iteration == 16
    assert handler.check(trainer) is False


def test_bad_arguments():
    with pytest.raises(ValueError, match="check_every"):
        TerminateOnNan(check_every=0)
