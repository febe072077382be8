"""The monitored metric of EarlyStopping, LRScheduler (ReduceLROnPlateau) and Checkpoint, as in Keras: a name in
`engine.state.metrics`, a mode saying whether lower or higher is better, the improvement that counts
(`min_delta`) and the best value so far."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, Literal

from ember.callbacks._output import as_number
from ember.engine import Engine

Mode = Literal["min", "max"]


def metric(engine: Engine, name: str, owner: str, verb: str) -> float:
    """`engine.state.metrics[name]` as a float (one read of a device value); a LookupError that lists the
    metrics there and says how to get it in, for the handler `owner` that would `verb` on it."""
    metrics = engine.state.metrics
    if name not in metrics:
        raise LookupError(
            f"{owner}: metric {name!r} is not in engine.state.metrics (available: {sorted(metrics)}); attach "
            f"Evaluate (or the handler that computes it) to the same engine, {verb} on EvalEvents.EVALUATED, or "
            "set monitor= to one of the available names"
        )
    return float(as_number(metrics[name]))


class Monitor:
    """Compares values of one metric: `improved(value)` against the best so far, `rank` to order them.

    A NaN never improves; with `mode="min"` a value improves when below the best by more than `min_delta`,
    with `mode="max"` when above it by more.
    """

    def __init__(self, mode: Mode, min_delta: float = 0.0) -> None:
        self.mode = mode
        self.min_delta = min_delta
        self.best: float | None = None

    def rank(self, value: float) -> float:
        """`value` turned so that higher is better, to sort or compare values by."""
        return value if self.mode == "max" else -value

    def improved(self, value: float) -> bool:
        """True if `value` beats the best so far by more than `min_delta` (NaN never does)."""
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        return self.rank(value) > self.rank(self.best) + self.min_delta



class Score:
    """Checkpoint's score of the current weights: `monitor(engine)`, or the metric `monitor` names, as a float.

    A metric name missing after an evaluation, or never there during a run, is reported once: no best file
    can be kept without it.
    """

    def __init__(self, monitor: str | Callable[[Engine], Any] | None) -> None:
        self.monitor = monitor
        self.found = False
        self.warned = False

    def read(self, engine: Engine, *, evaluated: bool = False) -> float | None:
        """The score now, or None (no monitor, or its metric is not there; after an evaluation that warns)."""
        if self.monitor is None:
            return None
        if callable(self.monitor):
            value = self.monitor(engine)
        elif self.monitor in engine.state.metrics:
            self.found = True
            value = engine.state.metrics[self.monitor]
        else:
            if evaluated and not self.warned:
                self.warn(engine, "is not in engine.state.metrics after an evaluation", stacklevel=4)
            return None
        try:
            return float(value)
        except (TypeError, ValueError):
            raise TypeError(f"Checkpoint monitor must give a number, got {value!r}") from None

    def warn_if_never_found(self, engine: Engine) -> None:
        """At the end of a run: warn when the monitored metric never appeared (and no warning said so yet)."""
        if isinstance(self.monitor, str) and not self.found and not self.warned:
            self.warn(engine, "was never in engine.state.metrics during the run", stacklevel=5)

    def warn(self, engine: Engine, what: str, *, stacklevel: int) -> None:
        """Say, once, that the monitored metric `what` and that no best file was kept because of it."""
        self.warned = True
        warnings.warn(
            f"Checkpoint monitor {self.monitor!r} {what} (it has {sorted(engine.state.metrics)}), so no best "
            "checkpoint was kept; Evaluate copies its evaluator's metrics there as 'val/<name>', or pass "
            "monitor=a function of the engine",
            RuntimeWarning,
            stacklevel=stacklevel,
        )
