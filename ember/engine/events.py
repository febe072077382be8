"""Events an Engine fires, and the filters (`every`, `once`, `before`/`after`, custom) that narrow them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ember.engine.engine import Engine

EventFilter = Callable[["Engine", int], bool]


class FilteredEvent:
    """An event paired with a filter `fn(engine, event_count) -> bool`; handlers fire only when it is true."""

    __slots__ = ("event", "filter")

    def __init__(self, event: Any, event_filter: EventFilter) -> None:
        self.event = event
        self.filter = event_filter

    def __or__(self, other: Any) -> EventsList:
        return EventsList([self]) | other

    def __repr__(self) -> str:
        return f"{self.event!r}(filtered)"


class EventsList:
    """Several events (`Events.A | Events.B`) to attach one handler to."""

    def __init__(self, events: Sequence[Any] = ()) -> None:
        self.events: list[Any] = list(events)

    def __or__(self, other: Any) -> EventsList:
        more = other.events if isinstance(other, EventsList) else [other]
        return EventsList(self.events + more)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)


def _every(n: int) -> EventFilter:
    def every(_engine: Engine, count: int) -> bool:
        return count % n == 0

    every.every = n  # lets the engine test the period inline, without a call
    return every


def _once(steps: Sequence[int]) -> EventFilter:
    wanted = frozenset(steps)
    return lambda _engine, count: count in wanted


def _between(before: int | None, after: int | None) -> EventFilter:
    return lambda _engine, count: (before is None or count < before) and (after is None or count > after)


def _both(a: EventFilter, b: EventFilter) -> EventFilter:
    return lambda engine, count: a(engine, count) and b(engine, count)


def _positive(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class EventEnum(Enum):
    """Base for event enums: calling a member with a filter returns a FilteredEvent, as in Ignite."""

    def __call__(
        self,
        event_filter: EventFilter | None = None,
        every: int | None = None,
        once: int | Sequence[int] | None = None,
        before: int | None = None,
        after: int | None = None,
    ) -> FilteredEvent:
        if event_filter is not None:
            if any(v is not None for v in (every, once, before, after)):
                raise ValueError("event_filter cannot be combined with every, once, before or after")
            if not callable(event_filter):
                raise TypeError(f"event_filter must be callable as fn(engine, event_count), got {event_filter!r}")
            return FilteredEvent(self, event_filter)
        if once is not None:
            if any(v is not None for v in (every, before, after)):
                raise ValueError("once cannot be combined with every, before or after")
            steps = [once] if isinstance(once, int) else list(once)
            return FilteredEvent(self, _once([_positive("once", s) for s in steps]))
        if every is None and before is None and after is None:
            raise ValueError(f"{self.name}(...) needs one of event_filter, every, once, before or after")
        flt = _every(_positive("every", every)) if every is not None else None
        if before is not None or after is not None:
            window = _between(before, after)
            flt = window if flt is None else _both(flt, window)
        return FilteredEvent(self, flt)

    def __or__(self, other: Any) -> EventsList:
        return EventsList([self]) | other


class Events(EventEnum):
    """The events every Engine fires, in Ignite's order and with Ignite's counting."""

    STARTED = "started"
    EPOCH_STARTED = "epoch_started"
    GET_BATCH_STARTED = "get_batch_started"
    GET_BATCH_COMPLETED = "get_batch_completed"
    ITERATION_STARTED = "iteration_started"
    ITERATION_COMPLETED = "iteration_completed"
    EPOCH_COMPLETED = "epoch_completed"
    COMPLETED = "completed"
    TERMINATE = "terminate"
    TERMINATE_SINGLE_EPOCH = "terminate_single_epoch"
    EXCEPTION_RAISED = "exception_raised"


# Which State attribute counts each built-in event, for filters (Ignite's mapping).
EVENT_TO_ATTR: dict[Any, str] = {
    Events.STARTED: "epoch",
    Events.EPOCH_STARTED: "epoch",
    Events.GET_BATCH_STARTED: "iteration",
    Events.GET_BATCH_COMPLETED: "iteration",
    Events.ITERATION_STARTED: "iteration",
    Events.ITERATION_COMPLETED: "iteration",
    Events.EPOCH_COMPLETED: "epoch",
    Events.COMPLETED: "epoch",
    Events.TERMINATE: "epoch",
    Events.TERMINATE_SINGLE_EPOCH: "epoch",
    Events.EXCEPTION_RAISED: "epoch",
}
