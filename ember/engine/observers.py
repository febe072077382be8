"""Exception observers: `EXCEPTION_RAISED` handlers that save or close things and never handle the exception."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ignite.engine.events import Events

from ember.engine.dispatch import marker
from ember.engine.engine import Engine
from ember.engine.order import FIRST


def exception_observer(fn: Callable) -> Callable:
    """Mark an `EXCEPTION_RAISED` handler that only observes (saves, closes files) and never handles.

    In Ignite an attached `EXCEPTION_RAISED` handler that returns has handled the exception. ember's own
    handlers must not change whether an exception propagates: ember's Engine ignores observers when it decides;
    on a plain `ignite.engine.Engine` the last observer re-raises when no other handler is attached. An observer
    runs once per exception even where Ignite fires the event twice (inside an epoch, then around the run).
    Observers run first among the event's handlers, so a user's handler that re-raises cannot skip them.
    """

    @functools.wraps(fn)
    def observer(*args: Any) -> None:
        engine, exc = args[-2], args[-1]
        seen = exc.__dict__.setdefault("_ember_observed", set())
        key = (id(args[0]), id(observer)) if len(args) > 2 else id(observer)
        if key not in seen:
            seen.add(key)
            fn(*args)
        if not isinstance(engine, Engine) and _last_of_only_observers(engine, observer, args):
            raise exc

    observer._ember_observer = True  # type: ignore[attr-defined]
    observer.ember_order = FIRST  # type: ignore[attr-defined]  # before any handler that re-raises (Ignite's idiom)
    return observer


def _last_of_only_observers(engine: Any, observer: Callable, args: tuple) -> bool:
    """Whether `observer` is the last `EXCEPTION_RAISED` handler of a plain Ignite engine that has only observers."""
    entries = engine._event_handlers.get(Events.EXCEPTION_RAISED, [])
    if not entries or not all(marker(f, "_ember_observer") for f, _, _ in entries):
        return False
    last = entries[-1][0]
    return getattr(last, "__func__", last) is observer and (len(args) == 2 or last.__self__ is args[0])
