"""Evaluate: runs an evaluator during training, copies its metrics into the trainer and fires an event."""

from __future__ import annotations

import numbers
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from ember.callbacks._output import as_number
from ember.engine import CallableEventWithFilter, Engine, EventEnum, Events
from ember.engine import order as order_levels
from ember.utils import checks


class EvalEvents(EventEnum):
    """Events `Evaluate` fires on the trainer; filters work on them (`EvalEvents.EVALUATED(every=2)`)."""

    EVALUATED = "evaluated"


def register_eval_events(engine: Engine, event: Any) -> None:
    """Register `event` on `engine` when it is an EvalEvents member, so handlers may attach before Evaluate."""
    if not isinstance(event, CallableEventWithFilter) or engine.has_registered_events(event):
        return
    for member in EvalEvents:
        if member == event:  # a filtered event equals its base event
            engine.register_events(member)


class Evaluate:
    """Runs `evaluator` on `loader` every n epochs (or iterations) of the trainer it is attached to.

    The evaluator's metrics are copied into `trainer.state.metrics` as `prefix + name` (`val/accuracy`),
    then `event_name` (default `EvalEvents.EVALUATED`) fires on the trainer so that handlers attached to it
    (LRScheduler, EarlyStopping, loggers) run right after each evaluation. With `fmt`, a line is printed:
    its fields are the metric names, `<name>_pct` (the metric times 100) for numeric metrics, and the
    trainer's epoch, max_epochs and iteration. Every evaluation is kept in `history` (trainer epoch and
    iteration, metrics); saved in checkpoints, it brings the last validation metrics back into a resumed
    trainer's `state.metrics` before its first new evaluation.
    """

    ember_order = order_levels.EVALUATE

    def __init__(
        self,
        evaluator: Engine,
        loader: Iterable,
        *,
        every_epochs: int | None = None,
        every_iterations: int | None = None,
        prefix: str = "val/",
        fmt: str | None = None,
        file: TextIO | None = None,
        event_name: str | EventEnum = EvalEvents.EVALUATED,
    ) -> None:
        if every_epochs is not None and every_iterations is not None:
            raise ValueError("give every_epochs or every_iterations, not both")
        checks.positive_int("every_epochs", every_epochs, optional=True)
        checks.positive_int("every_iterations", every_iterations, optional=True)
        self.evaluator = evaluator
        self.loader = loader
        self.every_epochs = every_epochs
        self.every_iterations = every_iterations
        self.prefix = prefix
        self.fmt = fmt
        self.file = file
        self.event_name = event_name
        self.metrics: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self._trainer: Engine | None = None

    def attach(self, engine: Engine) -> None:
        """Evaluate on `engine`'s EPOCH_COMPLETED (or ITERATION_COMPLETED) and register the custom event."""
        if not engine.has_registered_events(self.event_name):
            engine.register_events(self.event_name)
        self._trainer = engine
        if self.every_iterations is not None:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every_iterations), self.evaluate)
        else:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.every_epochs or 1), self.evaluate)

    def evaluate(self, trainer: Engine) -> dict[str, Any]:
        """Run the evaluator now, store and print its metrics, fire the event; returns the metrics."""
        state = self.evaluator.run(self.loader)
        self.metrics = dict(state.metrics)
        self.history.append({"epoch": trainer.state.epoch, "iteration": trainer.state.iteration,
                             "metrics": self.metrics})
        for name, value in self.metrics.items():
            trainer.state.metrics[self.prefix + name] = value
        if self.fmt is not None:
            print(self.fmt.format(**self._fields(trainer)), file=self.file or sys.stdout)
        trainer.fire_event(self.event_name)
        return self.metrics

    def state_dict(self) -> dict[str, Any]:
        """Every evaluation so far, metrics as Python numbers (one read of each: a checkpoint syncs anyway)."""
        return {"history": [{**h, "metrics": {k: as_number(v) for k, v in h["metrics"].items()}}
                            for h in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the history; the last evaluation's metrics go back into the trainer's `state.metrics`."""
        self.history = [dict(h) for h in state_dict["history"]]
        self.metrics = dict(self.history[-1]["metrics"]) if self.history else {}
        if self._trainer is not None:
            for name, value in self.metrics.items():
                self._trainer.state.metrics[self.prefix + name] = value

    def _fields(self, trainer: Engine) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "epoch": trainer.state.epoch,
            "max_epochs": trainer.state.max_epochs,
            "iteration": trainer.state.iteration,
        }
        for name, value in self.metrics.items():
            value = as_number(value)
            fields[name] = value
            if isinstance(value, numbers.Real):
                fields[f"{name}_pct"] = 100 * value
        return fields
