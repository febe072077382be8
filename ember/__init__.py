"""ember: an event-driven training engine for PyTorch, in the style of PyTorch-Ignite."""

from ember.engine import (
    DeterministicEngine,
    Engine,
    EventEnum,
    Events,
    State,
    create_evaluator,
    create_supervised_evaluator,
    create_supervised_trainer,
    create_trainer,
    supervised_training_step,
    supervised_training_step_amp,
    supervised_training_step_apex,
    supervised_training_step_tpu,
)
from ember.run import RunError, RunResult, fit

__all__ = [
    "DeterministicEngine",
    "Engine",
    "EventEnum",
    "Events",
    "RunError",
    "RunResult",
    "State",
    "create_evaluator",
    "create_supervised_evaluator",
    "create_supervised_trainer",
    "create_trainer",
    "fit",
    "supervised_training_step",
    "supervised_training_step_amp",
    "supervised_training_step_apex",
    "supervised_training_step_tpu",
]
__version__ = "0.1.0"
