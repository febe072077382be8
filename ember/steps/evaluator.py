"""`create_evaluator`: an `Evaluator` engine that runs a model without gradients and bridges metrics to it.

Metrics are Ignite's (`ignite.metrics.Metric`, attached through their own `iteration_completed`/`completed`)
or any object with `reset()`, `update(output)` and `compute()`; their values land in `state.metrics`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ember.engine.engine import Engine, ProcessFunction
from ember.engine.events import Events
from ember.engine.observers import exception_observer
from ember.steps.batch import Amp, PrepareBatch, autocast, default_prepare_batch, device_type


class Evaluator(Engine):
    """The engine `create_evaluator` returns: an Engine that also holds the model it evaluates."""

    def __init__(self, process_function: ProcessFunction, model: nn.Module) -> None:
        super().__init__(process_function)
        self.logger = logging.getLogger("ignite.engine.engine.Engine")  # the name evaluators always logged under
        self.model: nn.Module = model


def _is_ignite_metric(metric: Any) -> bool:
    try:
        from ignite.metrics import Metric
    except ImportError:
        return False
    return isinstance(metric, Metric)


def create_evaluator(
    model: nn.Module,
    metrics: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    *,
    non_blocking: bool = True,
    prepare_batch: PrepareBatch | None = None,
    amp: Amp | None = None,
) -> Evaluator:
    """An Evaluator that runs `model` in eval mode without gradients and fills `state.metrics` at COMPLETED.

    Args:
        model: the model to evaluate; put in eval mode for the run, then back in the mode it was in.
        metrics: name -> metric (an Ignite Metric, or anything with reset, update(output) and compute).
        device: where batches go (and Ignite metrics accumulate); None leaves them where they are.
        non_blocking: copy batches to the device asynchronously.
        prepare_batch: `prepare_batch(batch, device, non_blocking) -> (x, y)`; default `default_prepare_batch`.
        amp: autocast the forward to "bf16" or "fp16"; None for full precision.
    """
    prepare = prepare_batch or default_prepare_batch
    autocast_context = autocast(amp, device_type(device, model))
    metrics = dict(metrics or {})
    for name, metric in metrics.items():
        if not all(callable(getattr(metric, m, None)) for m in ("reset", "update", "compute")):
            raise TypeError(f"metric {name!r} needs reset(), update(output) and compute(); got {metric!r}")
        if device is not None and _is_ignite_metric(metric) and torch.device(device).type != "cpu":
            metric._device = torch.device(device)  # accumulate on the evaluator's device: no per-batch sync

    @torch.no_grad()
    def eval_step(engine: Engine, batch: Any) -> tuple[Any, Any]:
        x, y = prepare(batch, device, non_blocking)
        with autocast_context():
            y_pred = model(x)
        return y_pred, y

    evaluator = Evaluator(eval_step, model)
    ignite_metrics = {n: m for n, m in metrics.items() if _is_ignite_metric(m)}
    plain_metrics = {n: m for n, m in metrics.items() if n not in ignite_metrics}
    was_training = [model.training]

    def started(engine: Engine) -> None:
        was_training[0] = model.training
        model.eval()
        engine.state.metrics.clear()
        for metric in metrics.values():
            metric.reset()

    def iteration_completed(engine: Engine) -> None:
        for metric in ignite_metrics.values():
            metric.iteration_completed(engine)
        for metric in plain_metrics.values():
            metric.update(engine.state.output)

    def completed(engine: Engine) -> None:
        for name, metric in ignite_metrics.items():
            metric.completed(engine, name)
        for name, metric in plain_metrics.items():
            value = metric.compute()
            if isinstance(value, torch.Tensor) and value.ndim == 0:
                value = value.item()
            engine.state.metrics[name] = value
        model.train(was_training[0])

    @exception_observer
    def restore_mode(engine: Engine, exc: BaseException) -> None:
        model.train(was_training[0])

    evaluator.add_event_handler(Events.STARTED, started)
    if metrics:
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, iteration_completed)
    evaluator.add_event_handler(Events.COMPLETED, completed)
    evaluator.add_event_handler(Events.EXCEPTION_RAISED, restore_mode)
    return evaluator
