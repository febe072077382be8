"""The engine: Engine (an ignite.engine.Engine with ember's loop), Ignite's Events and State, exception observers.

The step factories moved to `ember.steps`; their old names here still work, with a DeprecationWarning.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

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

_MOVED_TO_STEPS = frozenset({
    "DeterministicEngine",
    "create_evaluator",
    "create_supervised_evaluator",
    "create_supervised_trainer",
    "create_trainer",
    "default_prepare_batch",
    "supervised_training_step",
    "supervised_training_step_amp",
    "supervised_training_step_apex",
    "supervised_training_step_tpu",
})


def __getattr__(name: str) -> Any:
    """The step factories' old home: import them from `ember.steps` on first use, with a DeprecationWarning.

    Imported lazily because `ember.steps` builds on this package (it may not be imported at the top here).
    """
    if name not in _MOVED_TO_STEPS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"`from ember.engine import {name}` is deprecated: use `from ember import {name}` "
        f"or `from ember.steps import {name}`",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module("ember.steps"), name)


__all__ = [
    "CallableEventWithFilter",
    "Engine",
    "EventEnum",
    "Events",
    "EventsList",
    "FilteredEvent",
    "RemovableEventHandle",
    "State",
    "exception_observer",
]
