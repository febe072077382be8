"""ember: an event-driven training engine for PyTorch, in the style of PyTorch-Ignite."""

from ember.engine import Engine, Events, State, create_evaluator, create_trainer

__all__ = ["Engine", "Events", "State", "create_trainer", "create_evaluator"]
__version__ = "0.1.0"
