"""EarlyStopping: ends training when a metric has not improved for `patience` checks."""

from __future__ import annotations

import logging
import math
import sys
from typing import Any, TextIO

from ember.callbacks.evaluate import register_eval_events
from ember.callbacks.loss_printer import as_number
from ember.engine import Engine, Events
from ember.engine import order as order_levels

logger = logging.getLogger(__name__)


class EarlyStopping:
    """Terminates the trainer once `monitor` has gone `patience` checks without improving by `min_delta`.

    Attached to the trainer it checks `trainer.state.metrics[monitor]` at each EPOCH_COMPLETED (after
    Evaluate and the handlers without a declared order, whatever the attach order) or on `event`, e.g.
    `EvalEvents.EVALUATED`. Attached to an
    evaluator with `trainer=` given, it checks the evaluator's metrics at the end of each of its runs and
    terminates `trainer`. A NaN value never counts as an improvement. The reason is printed and logged,
    and stored as `trainer.state.early_stopped`.
    """

    order = order_levels.READ

    def __init__(
        self,
        monitor: str,
        *,
        mode: str = "min",
        patience: int = 5,
        min_delta: float = 0.0,
        trainer: Engine | None = None,
        event: Any | None = None,
        file: TextIO | None = None,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' (lower is better) or 'max' (higher is better), got {mode!r}")
        if not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be a positive integer, got {patience!r}")
        if min_delta < 0:
            raise ValueError(f"min_delta must be >= 0 (the improvement needed), got {min_delta!r}")
        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.min_delta = min_delta
        self.trainer = trainer
        self.event = event
        self.file = file
        self.best: float | None = None
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

    def improved(self, value: float) -> bool:
        """True if `value` beats the best so far by more than `min_delta` (NaN never does)."""
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def check(self, engine: Engine) -> None:
        """Compare the metric with the best so far; terminate the trainer when patience runs out."""
        metrics = engine.state.metrics
        if self.monitor not in metrics:
            raise LookupError(
                f"EarlyStopping: metric {self.monitor!r} is not in engine.state.metrics (available: "
                f"{sorted(metrics)}); attach Evaluate (or the handler that computes it) to the same engine, "
                "check on EvalEvents.EVALUATED, or set monitor= to one of the available names"
            )
        value = float(as_number(metrics[self.monitor]))
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
        trainer.state.early_stopped = message  # type: ignore[attr-defined]
        trainer.terminate()

    def state_dict(self) -> dict[str, Any]:
        """Best value, its epoch and the checks without improvement, for checkpoints."""
        return {"best": self.best, "best_epoch": self.best_epoch, "counter": self.counter}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the progress saved by `state_dict`."""
        self.best = state_dict["best"]
        self.best_epoch = state_dict["best_epoch"]
        self.counter = state_dict["counter"]
