"""The steps: engines that train and evaluate a model, built on `ember.engine.Engine`.

`create_trainer` / `create_evaluator` are ember's fast steps (CUDA graphs, torch.compile, channels-last, amp);
the `create_supervised_*` factories and `supervised_training_step*` keep Ignite's signatures.
"""

from ember.steps.batch import AMP_DTYPES, Amp, CompileMode, PrepareBatch, default_prepare_batch
from ember.steps.evaluator import Evaluator, create_evaluator
from ember.steps.supervised import (
    AmpMode,
    DeterministicEngine,
    create_supervised_evaluator,
    create_supervised_trainer,
    supervised_training_step,
    supervised_training_step_amp,
    supervised_training_step_apex,
    supervised_training_step_tpu,
)
from ember.steps.trainer import Trainer, create_trainer

__all__ = [
    "AMP_DTYPES",
    "Amp",
    "AmpMode",
    "CompileMode",
    "DeterministicEngine",
    "Evaluator",
    "PrepareBatch",
    "Trainer",
    "create_evaluator",
    "create_supervised_evaluator",
    "create_supervised_trainer",
    "create_trainer",
    "default_prepare_batch",
    "supervised_training_step",
    "supervised_training_step_amp",
    "supervised_training_step_apex",
    "supervised_training_step_tpu",
]
