"""ember: an event-driven training engine for PyTorch, in the style of PyTorch-Ignite."""

from ember.engine import Engine, Events, State, create_evaluator, create_trainer
from ember.run import RunError, RunResult, fit

__all__ = ["Engine", "Events", "RunError", "RunResult", "State", "create_evaluator", "create_trainer", "fit"]
__version__ = "0.1.0"
