"""The engine: Engine (an ignite.engine.Engine with ember's loop), Ignite's Events and State, exception observers.

The step factories are in `ember.steps` (and `ember` itself).
"""

from __future__ import annotations

from ember.engine.engine import Engine
from ember.engine.events import (
    CallableEventWithFilter,
    EventEnum,
    Events,
    EventsList,
    RemovableEventHandle,
    State,
)
from ember.engine.observers import exception_observer

__all__ = [
    "CallableEventWithFilter",
    "Engine",
    "EventEnum",
    "Events",
    "EventsList",
    "RemovableEventHandle",
    "State",
    "exception_observer",
]
