"""Handlers that do everything around the training step, one module per handler, named after it."""

from __future__ import annotations

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
