"""EarlyStopping: ends training when a metric has not improved for `patience` checks."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

from ember.callbacks._monitor import Mode, Monitor, metric
from ember.callbacks.evaluate import register_eval_events
from ember.engine import Engine, Events
from ember.engine import order as order_levels
from ember.utils import checks

logger = logging.getLogger(__name__)


class EarlyStopping(Monitor):
    """Terminates the trainer once `monitor` has gone `patience` checks without improving by `min_delta`.

    Attached to the trainer it checks `trainer.state.metrics[monitor]` at each EPOCH_COMPLETED (after
    Evaluate and the handlers without a declared order, whatever the attach order) or on `event`, e.g.
    `EvalEvents.EVALUATED`. Attached to an
    evaluator with `trainer=` given, it checks the evaluator's metrics at the end of each of its runs and
    terminates `trainer`. A NaN value never counts as an improvement. The reason is printed and logged,
    and stored as `trainer.state.early_stopped`.
    """

    ember_order = order_levels.READ

    def __init__(
        self,
        monitor: str,
        *,
        mode: Mode = "min",
        patience: int = 5,
        min_delta: float = 0.0,
        trainer: Engine | None = None,
        event: Any | None = None,
        file: TextIO | None = None,
    ) -> None:
        checks.one_of("mode", mode, {"min": "lower is better", "max": "higher is better"})
        checks.positive_int("patience", patience)
        checks.non_negative("min_delta", min_delta, ">= 0 (the improvement needed)")
        super().__init__(mode, min_delta)
        self.monitor = monitor
        self.patience = patience
        self.trainer = trainer
        self.event = event
        self.file = file
        self.best_epoch = 0
        self.counter = 0

    def attach(self, engine: Engine) -> None:
        """Check on `event`, else on the evaluator's COMPLETED (when `trainer` is another engine) or EPOCH_COMPLETED."""
        if self.trainer is None:
            self.trainer = engine
        if self.event is not None:
            event = self.event
            register_eval_events(engine, event)
        else:
            event = Events.EPOCH_COMPLETED if self.trainer is engine else Events.COMPLETED
        engine.add_event_handler(event, self.check)

    def check(self, engine: Engine) -> None:
        """Compare the metric with the best so far; terminate the trainer when patience runs out."""
        value = metric(engine, self.monitor, "EarlyStopping", "check")
        trainer = self.trainer or engine
        if self.improved(value):
            self.best, self.best_epoch, self.counter = value, trainer.state.epoch, 0
            return
        self.counter += 1
        if self.counter < self.patience:
            return
        best = "none (every value was NaN)" if self.best is None else f"{self.best:.6g} at epoch {self.best_epoch}"
        message = (
            f"EarlyStopping: {self.monitor} did not improve (mode={self.mode}, min_delta={self.min_delta:g}) "
            f"for {self.counter} checks; best {best}; stopping at epoch {trainer.state.epoch}."
        )
        logger.info(message)
        print(message, file=self.file or sys.stdout)
        trainer.state.early_stopped = message
        trainer.terminate()

    def state_dict(self) -> dict[str, Any]:
        """Best value, its epoch and the checks without improvement, for checkpoints."""
        return {"best": self.best, "best_epoch": self.best_epoch, "counter": self.counter}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the progress saved by `state_dict`."""
        self.best = state_dict["best"]
        self.best_epoch = state_dict["best_epoch"]
        self.counter = state_dict["counter"]
