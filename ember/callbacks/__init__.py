"""Handlers that do everything around the training step, one module per family."""

from ember.callbacks.checkpoint import Checkpoint, CheckpointError, CorruptCheckpointError
from ember.callbacks.early_stopping import EarlyStopping
from ember.callbacks.evaluate import SEED000_EVAL_FMT, EvalEvents, Evaluate
from ember.callbacks.graceful_stop import GracefulStop
from ember.callbacks.loss_printer import SEED000_FMT, SEED001_FMT, LossPrinter
from ember.callbacks.lr_scheduler import LRScheduler
from ember.callbacks.nan import TerminateOnNan
from ember.callbacks.progress import ProgressBar
from ember.callbacks.tensorboard import TensorBoardLogger
from ember.callbacks.timing import SEED003_FMT, ThroughputMonitor, Timer

__all__ = [
    "SEED000_EVAL_FMT",
    "SEED000_FMT",
    "SEED001_FMT",
    "SEED003_FMT",
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
