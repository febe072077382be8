"""Precomputed dispatch for the per-iteration events, built from Ignite's `_event_handlers` bookkeeping.

Ignite keeps handlers as `engine._event_handlers[event] = [(func, args, kwargs), ...]`, and Ignite's own code and
handlers (the time profilers) read and edit those lists in place. ember keeps that bookkeeping as the single
source of truth, in containers that tell the engine when they change, and compiles each hot event's handlers into
one plain function: direct calls in registration order, `every=` filters tested inline, other filters called
directly. The function is rebuilt only after a change, so a fired event costs one call plus its handlers.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

from ignite.engine.events import CallableEventWithFilter, State

_EVERY_CODE = CallableEventWithFilter.every_event_filter(2).__code__


class HandlerList(list):
    """A list of `(func, args, kwargs)` entries that tells its engine when it changes."""

    __slots__ = ("_owner",)

    def __init__(self, owner: Callable[[], Any], items: Iterable = ()) -> None:
        super().__init__(items)
        self._owner = owner

    def _changed(self) -> None:
        engine = self._owner()
        if engine is not None:
            engine._handlers_changed()


def _mutator(name: str) -> Callable:
    base = getattr(list, name)

    def method(self: HandlerList, *args: Any) -> Any:
        out = base(self, *args)
        self._changed()
        return self if name == "__iadd__" else out

    method.__name__ = name
    return method


for _name in ("append", "insert", "extend", "remove", "pop", "clear", "sort", "reverse", "__setitem__",
              "__delitem__", "__iadd__"):
    setattr(HandlerList, _name, _mutator(_name))


class HandlerDict(dict):
    """Ignite's `defaultdict(list)` of handlers, whose lists (and itself) tell the engine when they change."""

    def __init__(self, engine: Any, items: Iterable = ()) -> None:
        super().__init__()
        self._owner = weakref.ref(engine)
        for key, value in dict(items).items():
            dict.__setitem__(self, key, HandlerList(self._owner, value))

    def __missing__(self, key: Any) -> HandlerList:
        value = HandlerList(self._owner)
        dict.__setitem__(self, key, value)
        return value

    def __setitem__(self, key: Any, value: Iterable) -> None:
        dict.__setitem__(self, key, HandlerList(self._owner, value))
        self._changed()

    def __delitem__(self, key: Any) -> None:
        dict.__delitem__(self, key)
        self._changed()

    def pop(self, *args: Any) -> Any:
        out = dict.pop(self, *args)
        self._changed()
        return out

    def clear(self) -> None:
        dict.clear(self)
        self._changed()

    def _changed(self) -> None:
        engine = self._owner()
        if engine is not None:
            engine._handlers_changed()


def _condition(flt: Callable, event: Any, i: int, ns: dict) -> str | None:
    """The inline test of filter `flt` for `event`, or None when the wrapper must be called as it is."""
    attr = State.event_to_attr.get(event)
    if attr is None or not attr.isidentifier():
        return None
    if getattr(flt, "__code__", None) is _EVERY_CODE:
        return f"not e.state.{attr} % {int(flt.__closure__[0].cell_contents)}"
    ns[f"f{i}"] = flt
    return f"f{i}(e, e.state.{attr})"


def compile_dispatch(engine: Any, event: Any, entries: list) -> Callable[[], None] | None:
    """One function that runs `entries` (Ignite's handler tuples for `event`) as Ignite's `_fire_event` would.

    Returns None when there is nothing to run. Handlers registered with a filter (Ignite wraps them) are called
    directly behind their test; anything ember does not recognise is called exactly as Ignite calls it.
    """
    if not entries:
        return None
    ns: dict[str, Any] = {"e": engine, "ev": event}
    lines = ["def fire():", "    e.last_event_name = ev"]
    for i, (func, args, kwargs) in enumerate(entries):
        engine_first = bool(args) and isinstance(args[0], weakref.ref)
        rest = args[1:] if engine_first else args
        target, condition = func, None
        filtered = getattr(func, "_ember_filtered", None)
        if filtered is not None:
            condition = _condition(filtered[1], event, i, ns)
            if condition is not None:
                target = filtered[0]
        ns[f"h{i}"], ns[f"a{i}"], ns[f"k{i}"] = target, rest, kwargs
        params = ["e"] if engine_first else []
        params += [f"*a{i}"] if rest else []
        params += [f"**k{i}"] if kwargs else []
        call = f"h{i}({', '.join(params)})"
        lines += [f"    if {condition}:", f"        {call}"] if condition else [f"    {call}"]
    exec("\n".join(lines), ns)  # noqa: S102 - source built above from fixed templates, no user text
    return ns["fire"]
