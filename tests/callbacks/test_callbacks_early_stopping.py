"""EarlyStopping stops at the right epoch, says why, treats NaN as no improvement, and checkpoints."""

import io
import math

import pytest
import torch

from ember.callbacks.early_stopping import EarlyStopping
from ember.callbacks.evaluate import EvalEvents, Evaluate
from ember.engine import Engine, Events


def trainer_with(values, name="val/loss"):
    """A trainer whose metric `name` takes the next of `values` at each EPOCH_COMPLETED."""
    trainer = Engine(lambda e, b: torch.tensor(0.0))
    feed = iter(values)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.__setitem__(name, next(feed)))
    return trainer


def test_stops_after_patience_epochs_without_improvement():
    trainer = trainer_with([1.0, 0.8, 0.9, 0.85, 0.95, 0.7, 0.6])
    out = io.StringIO()
    stopper = trainer.add(EarlyStopping("val/loss", patience=3, file=out))
    completed = []
    trainer.add_event_handler(Events.COMPLETED, lambda e: completed.append(e.state.epoch))
    trainer.run([0, 1], max_epochs=7)
    assert trainer.state.epoch == 5 and completed == [5]
    assert (stopper.best, stopper.best_epoch, stopper.counter) == (0.8, 2, 3)
    message = (
        "EarlyStopping: val/loss did not improve (mode=min, min_delta=0) for 3 checks; "
        "best 0.8 at epoch 2; stopping at epoch 5."
    )
    assert out.getvalue() == message + "\n"
    assert trainer.state.early_stopped == message


def test_max_mode_and_min_delta():
    trainer = trainer_with([0.50, 0.60, 0.605, 0.609, 0.70, 0.71, 0.72], name="val/accuracy")
    stopper = trainer.add(EarlyStopping("val/accuracy", mode="max", patience=2, min_delta=0.01, file=io.StringIO()))
    trainer.run([0], max_epochs=7)
    # 0.605 and 0.609 are within min_delta of 0.60: stop at epoch 4
    assert trainer.state.epoch == 4
    assert stopper.best == 0.60


def test_nan_is_never_an_improvement():
    trainer = trainer_with([1.0, math.nan, math.nan, 0.5])
    out = io.StringIO()
    trainer.add(EarlyStopping("val/loss", patience=2, file=out))
    trainer.run([0], max_epochs=4)
    assert trainer.state.epoch == 3
    assert "best 1 at epoch 1" in out.getvalue()

    trainer = trainer_with([math.nan, math.nan])
    out = io.StringIO()
    trainer.add(EarlyStopping("val/loss", patience=2, file=out))
    trainer.run([0], max_epochs=5)
    assert trainer.state.epoch == 2
    assert "best none (every value was NaN)" in out.getvalue()


def test_attached_to_an_evaluator_stops_the_trainer():
    trainer = Engine(lambda e, b: None)
    scores = iter([0.5, 0.4, 0.3, 0.2, 0.1])
    evaluator = Engine(lambda e, b: None)
    evaluator.add_event_handler(Events.COMPLETED, lambda e: e.state.metrics.__setitem__("accuracy", next(scores)))
    evaluator.add(EarlyStopping("accuracy", mode="max", patience=2, trainer=trainer, file=io.StringIO()))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run([0]))
    trainer.run([0], max_epochs=5)
    assert trainer.state.epoch == 3


def test_on_the_evaluated_event_with_evaluate():
    evaluator = Engine(lambda e, b: None)
    losses = iter([3.0, 2.0, 2.5, 2.6, 1.0])
    evaluator.add_event_handler(Events.COMPLETED, lambda e: e.state.metrics.__setitem__("loss", next(losses)))
    trainer = Engine(lambda e, b: None)
    trainer.add(EarlyStopping("val/loss", patience=2, event=EvalEvents.EVALUATED, file=io.StringIO()))
    trainer.add(Evaluate(evaluator, [0]))  # attached after EarlyStopping: the event makes the order irrelevant
    trainer.run([0], max_epochs=5)
    assert trainer.state.epoch == 4


def test_missing_metric_and_bad_arguments():
    trainer = trainer_with([1.0], name="val/acc")
    trainer.add(EarlyStopping("val/loss"))
    with pytest.raises(LookupError, match=r"'val/loss'.*\['val/acc'\]"):
        trainer.run([0])
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping("x", mode="lower")
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping("x", patience=0)
    with pytest.raises(ValueError, match="min_delta"):
        EarlyStopping("x", min_delta=-1)


def test_state_dict_resumes_the_count():
    trainer = trainer_with([1.0, 1.1])
    stopper = trainer.add(EarlyStopping("val/loss", patience=3, file=io.StringIO()))
    trainer.run([0], max_epochs=2)
    saved = stopper.state_dict()
    assert saved == {"best": 1.0, "best_epoch": 1, "counter": 1}

    trainer = trainer_with([1.2, 1.3, 1.4])
    resumed = EarlyStopping("val/loss", patience=3, file=io.StringIO())
    resumed.load_state_dict(saved)
    trainer.add(resumed)
    trainer.run([0], max_epochs=3)
    assert trainer.state.epoch == 2
