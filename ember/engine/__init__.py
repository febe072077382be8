"""The engine: Engine, Events and filters, State, and the trainer/evaluator step factories."""

from ember.engine.engine import Engine, RemovableEventHandle
from ember.engine.events import EventEnum, Events, EventsList, FilteredEvent
from ember.engine.state import State
from ember.engine.steps import create_evaluator, create_trainer, default_prepare_batch

__all__ = [
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
]
