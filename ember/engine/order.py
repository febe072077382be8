"""Where a handler runs among the handlers of one event: lower order first, ties in attachment order.

A handler declares its place with an `ember_order` attribute (on the function, on the object of a bound method,
or on its class), which `@ordered(level)` sets on a function or class and `engine.add(callback, order=...)` sets
on a callback object for every handler it attaches. The name is ember's own so that an attribute a handler has
for its own reasons (a polynomial's `order`, a scheduler's) never moves it. Handlers without one, Ignite's
included, have order DEFAULT (0) and keep Ignite's attachment-order semantics among themselves. ember's own
handlers take the levels below, so that the ones that compute run before the ones that read what was computed,
and the checkpoint runs after every handler whose state it saves. Only handlers that read nothing another
handler computes run before DEFAULT, so a program that attached its handlers in a working order keeps working.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

ATTRIBUTE = "ember_order"
"""The attribute that holds a handler's declared order."""

FIRST = -1000
"""Restores state before anything else runs (HandlerStates at STARTED)."""
GUARD = -300
"""Stops a run that went wrong before other handlers act on it (TerminateOnNan)."""
PROGRESS = -250
"""Shows the step's progress and closes an epoch's bar before evaluation prints its lines (ProgressBar)."""
EVALUATE = -200
"""Computes validation metrics (Evaluate)."""
COMPUTE = -100
"""Measures the step without reading other handlers' results (Timer, ThroughputMonitor)."""
DEFAULT = 0
"""Handlers that declare nothing (user functions, Ignite's handlers) and LRScheduler, which may read a metric
that a user's handler attached before it computes."""
READ = 100
"""Reads what was computed: printers, loggers, progress bars, early stopping."""
CHECKPOINT = 200
"""Saves the run, after every handler whose state it holds (Checkpoint)."""
LAST = 1000
"""Runs after everything (graceful stop, which ends the run)."""


def closure_of(fn: Any) -> dict[str, Any]:
    """A function's closure variables by name ({} for what is not a plain function)."""
    code, cells = getattr(fn, "__code__", None), getattr(fn, "__closure__", None) or ()
    return dict(zip(code.co_freevars, (c.cell_contents for c in cells))) if code is not None else {}


def unwrap(func: Callable) -> tuple[Callable, Callable | None]:
    """The handler a registered callable runs and its event filter (None when it has none): the one place
    that knows how handlers attached to a filtered event are wrapped.

    ember's wrapper records the pair as `_ember_filtered`; Ignite's holds a weak reference to the handler
    (`_parent`, a private attribute of ignite.engine.Engine._handler_wrapper) and the filter in its closure.
    """
    filtered = getattr(func, "_ember_filtered", None)
    if filtered is not None:
        return filtered[0], filtered[1]
    parent = getattr(func, "_parent", None)
    if callable(parent):
        return parent(), closure_of(func).get("event_filter")
    return func, None


_T = TypeVar("_T")


def ordered(level: int) -> Callable[[_T], _T]:
    """Decorator: declare the order of a handler function, or of every handler of a callback class.

    `@ordered(order.READ)` on a function or class sets its `ember_order` attribute to `level`.
    """
    if not isinstance(level, int) or isinstance(level, bool):
        raise TypeError(f"ordered(level): level must be an int (e.g. ember.engine.order.READ), got {level!r}")

    def declare(target: _T) -> _T:
        setattr(target, ATTRIBUTE, level)
        return target

    return declare


def order_of(handler: Any) -> int:
    """The declared order of a handler callable (unwrapped): its own `ember_order`, its bound object's, else
    DEFAULT."""
    handler = unwrap(handler)[0]
    for holder in (handler, getattr(handler, "__self__", None), getattr(handler, "func", None)):
        value = getattr(holder, ATTRIBUTE, None) if holder is not None else None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return DEFAULT
