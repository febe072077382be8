"""The engine: Engine (an ignite.engine.Engine), Ignite's Events and State, and the step factories."""

from ember.engine.engine import Engine, exception_observer
from ember.engine.events import (
    CallableEventWithFilter,
    EventEnum,
    Events,
    EventsList,
    FilteredEvent,
    RemovableEventHandle,
    State,
)
from ember.engine.steps import create_evaluator, create_trainer, default_prepare_batch

__all__ = [
    "CallableEventWithFilter",
    "Engine",
    "EventEnum",
    "Events",
    "EventsList",
    "FilteredEvent",
    "RemovableEventHandle",
    "State",
    "create_evaluator",
    "create_trainer",
    "default_prepare_batch",
    "exception_observer",
]
