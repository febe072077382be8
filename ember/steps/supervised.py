"""Ignite's supervised factories with Ignite's signatures, building ember Engines on a sync-free step.

`from ember import create_supervised_trainer, create_supervised_evaluator, Events` replaces the same line from
`ignite.engine` in Ignite's example programs. What differs from Ignite: the engines are ember's, and the
trainer's default `output_transform` returns `loss.detach()` (a tensor, no host-device sync per step) where
Ignite returns `loss.item()`; handlers that need a Python number call `float(engine.state.output)`.
The steps themselves are Ignite's `supervised_training_step*`; for ember's faster trainer (CUDA graphs,
torch.compile, channels-last) use `ember.create_trainer`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Literal

import ignite.engine as ie
import torch
from ignite.engine.deterministic import DeterministicEngine as IgniteDeterministicEngine
from ignite.metrics import Metric

from ember.engine.engine import Engine

AmpMode = Literal["amp", "apex"]
"""Ignite's mixed-precision back-ends: torch.amp autocast (with an optional GradScaler), or NVIDIA apex."""


class DeterministicEngine(IgniteDeterministicEngine, Engine):
    """Ignite's DeterministicEngine (reproducible data order on resume) on ember's loop."""


def _identity(output: Any) -> Any:
    return output


def _apply(model: torch.nn.Module, x: Any) -> Any:
    return model(x)


def _detached_loss(x: Any, y: Any, y_pred: Any, loss: torch.Tensor) -> torch.Tensor:
    return loss.detach()


def _prediction_and_target(x: Any, y: Any, y_pred: Any) -> tuple[Any, Any]:
    return y_pred, y


def _detached_by_default(ignite_step: Callable[..., Callable]) -> Callable[..., Callable]:
    """Ignite's step factory `ignite_step`, same signature, whose `output_transform` defaults to the detached loss.

    The other arguments pass through unchanged (positional or by keyword); `help()` and `inspect.signature`
    show Ignite's parameters with the new default.
    """
    signature = inspect.signature(ignite_step)

    @functools.wraps(ignite_step)
    def step_factory(*args: Any, **kwargs: Any) -> Callable:
        bound = signature.bind(*args, **kwargs)
        bound.arguments.setdefault("output_transform", _detached_loss)
        return ignite_step(*bound.args, **bound.kwargs)

    step_factory.__signature__ = signature.replace(parameters=[  # type: ignore[attr-defined]
        p.replace(default=_detached_loss) if p.name == "output_transform" else p
        for p in signature.parameters.values()
    ])
    step_factory.__module__ = __name__
    step_factory.__doc__ = (f"Ignite's `{ignite_step.__name__}` (same arguments), whose default output is the "
                            "detached loss tensor (no host-device sync) instead of `loss.item()`.")
    return step_factory


supervised_training_step = _detached_by_default(ie.supervised_training_step)
supervised_training_step_amp = _detached_by_default(ie.supervised_training_step_amp)  # autocast, optional GradScaler
supervised_training_step_apex = _detached_by_default(ie.supervised_training_step_apex)  # needs NVIDIA apex
supervised_training_step_tpu = _detached_by_default(ie.supervised_training_step_tpu)  # needs torch_xla


def create_supervised_trainer(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Any, Any], torch.Tensor] | torch.nn.Module,
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    prepare_batch: Callable = ie._prepare_batch,
    model_transform: Callable[[Any], Any] = _identity,
    output_transform: Callable[[Any, Any, Any, torch.Tensor], Any] = _detached_loss,
    deterministic: bool = False,
    amp_mode: AmpMode | None = None,
    scaler: bool | torch.amp.GradScaler = False,
    gradient_accumulation_steps: int = 1,
    model_fn: Callable[[torch.nn.Module, Any], Any] = _apply,
) -> Engine:
    """Ignite's `create_supervised_trainer`, returning an ember Engine (DeterministicEngine if `deterministic`).

    Args are Ignite's (amp_mode "amp"/"apex", `scaler`, `gradient_accumulation_steps`, `model_fn`...); the one
    difference is the default `output_transform`, which returns the detached loss tensor instead of
    `loss.item()`, so that the step never waits for the device.
    """
    built = ie.create_supervised_trainer(model, optimizer, loss_fn, device, non_blocking, prepare_batch,
                                         model_transform, output_transform, False, amp_mode, scaler,
                                         gradient_accumulation_steps, model_fn)
    trainer = (DeterministicEngine if deterministic else Engine)(built._process_function)
    if hasattr(built.state, "scaler"):
        trainer.state.scaler = built.state.scaler
    return trainer


def create_supervised_evaluator(
    model: torch.nn.Module,
    metrics: Mapping[str, Metric] | None = None,
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    prepare_batch: Callable = ie._prepare_batch,
    model_transform: Callable[[Any], Any] = _identity,
    output_transform: Callable[[Any, Any, Any], Any] = _prediction_and_target,
    amp_mode: AmpMode | None = None,
    model_fn: Callable[[torch.nn.Module, Any], Any] = _apply,
) -> Engine:
    """Ignite's `create_supervised_evaluator` (same arguments and behaviour), returning an ember Engine."""
    built = ie.create_supervised_evaluator(model, None, device, non_blocking, prepare_batch, model_transform,
                                           output_transform, amp_mode, model_fn)
    evaluator = Engine(built._process_function)
    for name, metric in (metrics or {}).items():
        metric.attach(evaluator, name)
    return evaluator
