"""ember: an event-driven training engine for PyTorch, in the style of PyTorch-Ignite."""

from ember.engine import Engine, EventEnum, Events, State
from ember.run import RunError, RunResult, fit
from ember.steps import (
    DeterministicEngine,
    Evaluator,
    Trainer,
    create_evaluator,
    create_supervised_evaluator,
    create_supervised_trainer,
    create_trainer,
    default_prepare_batch,
    supervised_training_step,
    supervised_training_step_amp,
    supervised_training_step_apex,
    supervised_training_step_tpu,
)

__all__ = [
    "DeterministicEngine",
    "Engine",
    "EventEnum",
    "Events",
    "Evaluator",
    "RunError",
    "RunResult",
    "State",
    "Trainer",
    "create_evaluator",
    "create_supervised_evaluator",
    "create_supervised_trainer",
    "create_trainer",
    "default_prepare_batch",
    "fit",
    "supervised_training_step",
    "supervised_training_step_amp",
    "supervised_training_step_apex",
    "supervised_training_step_tpu",
]
__version__ = "0.1.0"
