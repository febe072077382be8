"""Handlers that do everything around the training step, one module per handler, named after it."""

from __future__ import annotations

import warnings
from typing import Any

from ember.callbacks.checkpoint import Checkpoint, CheckpointError, CorruptCheckpointError
from ember.callbacks.early_stopping import EarlyStopping
from ember.callbacks.evaluate import EvalEvents, Evaluate
from ember.callbacks.graceful_stop import GracefulStop
from ember.callbacks.loss_printer import LossPrinter
from ember.callbacks.lr_scheduler import LRScheduler
from ember.callbacks.progress_bar import ProgressBar
from ember.callbacks.tensorboard_logger import TensorBoardLogger
from ember.callbacks.terminate_on_nan import TerminateOnNan
from ember.callbacks.throughput_monitor import ThroughputMonitor
from ember.callbacks.timer import Timer

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CorruptCheckpointError",
    "EarlyStopping",
    "EvalEvents",
    "Evaluate",
    "GracefulStop",
    "LRScheduler",
    "LossPrinter",
    "ProgressBar",
    "TensorBoardLogger",
    "TerminateOnNan",
    "ThroughputMonitor",
    "Timer",
]

_MOVED_TO_RECIPES = frozenset({"SEED000_FMT", "SEED001_FMT", "SEED003_FMT", "SEED000_EVAL_FMT"})


def __getattr__(name: str) -> Any:
    """The seeds' output templates, which moved to `ember.recipes.formats`: still found here, with a warning."""
    if name in _MOVED_TO_RECIPES:
        warnings.warn(
            f"ember.callbacks.{name} moved: use `from ember.recipes.formats import {name}`",
            DeprecationWarning,
            stacklevel=2,
        )
        from ember.recipes import formats  # recipes are a layer above: imported only for this old path

        return getattr(formats, name)
    raise AttributeError(f"module 'ember.callbacks' has no attribute {name!r}")
