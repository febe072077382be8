"""The engine's plan: per event, the handlers that will run, in their order, with their filters and order values.

Both work on Ignite's bookkeeping (`engine._event_handlers[event] = [(func, args, kwargs), ...]`), so they read
ember's engines and plain Ignite engines alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ignite.engine import Events

from ember.engine.order import closure_of, order_of, unwrap

# The built-in events in the order a run fires them.
RUN_ORDER = (
    Events.STARTED, Events.EPOCH_STARTED, Events.GET_BATCH_STARTED, Events.GET_BATCH_COMPLETED,
    Events.ITERATION_STARTED, Events.ITERATION_COMPLETED, Events.DATALOADER_STOP_ITERATION, Events.EPOCH_COMPLETED,
    Events.TERMINATE_SINGLE_EPOCH, Events.TERMINATE, Events.INTERRUPT, Events.COMPLETED, Events.EXCEPTION_RAISED,
)
_FILTER_ARGS = ("every", "once", "before", "after")


def order_of_entry(entry: tuple) -> int:
    """The declared order of a registered `(func, args, kwargs)` entry's handler."""
    return order_of(entry[0])


def place_last_entry(entries: list) -> None:
    """Move the entry just appended to `entries` after every entry of lower or equal order (ties: attachment order)."""
    if len(entries) < 2:
        return
    order = order_of_entry(entries[-1])
    if order_of_entry(entries[-2]) <= order:
        return
    index = next(i for i, entry in enumerate(entries[:-1]) if order_of_entry(entry) > order)
    entries.insert(index, entries.pop())


def describe_filter(flt: Callable | None) -> str:
    """`every=100`, `once=[3]`, `before=5, after=2`, or `filter=<name>` for a custom filter; '' for none."""
    if flt is None:
        return ""
    name = getattr(flt, "__qualname__", type(flt).__name__)
    if name.split(".<locals>")[0].endswith("_event_filter"):
        values = {k.rstrip("_"): v for k, v in closure_of(flt).items()}
        parts = [f"{k}={values[k]}" for k in _FILTER_ARGS if values.get(k) not in (None, 0, float("inf"))]
        if parts:
            return ", ".join(parts)
    return f"filter={name}"


def handler_name(handler: Any) -> str:
    """A readable name: `Class.method` for a bound method, the function's qualified name, or the object's class."""
    owner = getattr(handler, "__self__", None)
    if owner is not None and hasattr(handler, "__func__"):
        return f"{type(owner).__name__}.{handler.__func__.__name__}"
    inner = getattr(handler, "func", None)
    if inner is not None and hasattr(handler, "args"):
        return f"partial({handler_name(inner)})"
    if hasattr(handler, "__qualname__"):
        return handler.__qualname__.replace(".<locals>", "")
    return type(handler).__name__


def event_name(event: Any) -> str:
    """`ITERATION_COMPLETED` for a built-in event, the member or string name of a custom one."""
    return getattr(event, "name", None) or str(event)


def describe(engine: Any) -> str:
    """The plan as text: each event with handlers, in the order a run fires them (custom events after), and
    under it one line per handler in running order: its order value, its name and its filter."""
    table = engine._event_handlers
    events = [e for e in RUN_ORDER if table.get(e)] + [e for e in table if e not in RUN_ORDER and table[e]]
    lines: list[str] = []
    for event in events:
        lines.append(event_name(event))
        for func, *_ in table[event]:
            handler, flt = unwrap(func)
            where = describe_filter(flt)
            lines.append(f"  {order_of(handler):>6}  {handler_name(handler)}" + (f"  [{where}]" if where else ""))
    return "\n".join(lines)
