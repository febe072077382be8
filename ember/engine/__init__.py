"""The engine: Engine (an ignite.engine.Engine), Ignite's Events and State, and the step factories."""

from ember.engine.engine import Engine
from ember.engine.events import (
    CallableEventWithFilter,
    EventEnum,
    Events,
    EventsList,
    FilteredEvent,
    RemovableEventHandle,
    State,
)
from ember.engine.observers import exception_observer
from ember.engine.steps import create_evaluator, create_trainer, default_prepare_batch
from ember.engine.supervised import (
    DeterministicEngine,
    create_supervised_evaluator,
    create_supervised_trainer,
    supervised_training_step,
    supervised_training_step_amp,
    supervised_training_step_apex,
    supervised_training_step_tpu,
)

__all__ = [
    "CallableEventWithFilter",
    "DeterministicEngine",
    "Engine",
    "EventEnum",
    "Events",
    "EventsList",
    "FilteredEvent",
    "RemovableEventHandle",
    "State",
    "create_evaluator",
    "create_supervised_evaluator",
    "create_supervised_trainer",
    "create_trainer",
    "default_prepare_batch",
    "exception_observer",
    "supervised_training_step",
    "supervised_training_step_amp",
    "supervised_training_step_apex",
    "supervised_training_step_tpu",
]
