"""Step factories: `create_trainer` (zero_grad, forward, loss, backward, step) and `create_evaluator`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ember.engine.engine import Engine, describe
from ember.engine.events import Events

PrepareBatch = Callable[[Any, Any, bool], tuple[Any, Any]]
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def default_prepare_batch(
    batch: Any, device: torch.device | str | None = None, non_blocking: bool = True
) -> tuple[Any, Any]:
    """Split a batch into (inputs, targets) and move both to `device`."""
    if not isinstance(batch, (list, tuple)) or len(batch) != 2:
        raise TypeError(
            f"expected a batch (inputs, targets), got {describe(batch)}; "
            "pass prepare_batch= to create_trainer/create_evaluator to unpack other batch structures"
        )
    x, y = batch
    if device is not None:
        x = x.to(device, non_blocking=non_blocking)
        y = y.to(device, non_blocking=non_blocking)
    return x, y


def _device_type(device: torch.device | str | None, model: nn.Module) -> str:
    if device is not None:
        return torch.device(device).type
    p = next(model.parameters(), None)
    return p.device.type if p is not None else "cpu"


def _autocast(amp: str | None, device_type: str) -> Callable[[], contextlib.AbstractContextManager]:
    if amp is None:
        return contextlib.nullcontext
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    dtype = AMP_DTYPES[amp]
    return lambda: torch.autocast(device_type=device_type, dtype=dtype)


def create_trainer(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    device: torch.device | str | None = None,
    *,
    non_blocking: bool = True,
    accumulate: int = 1,
    clip_grad_norm: float | None = None,
    amp: str | None = None,
    prepare_batch: PrepareBatch | None = None,
    output_transform: Callable[[Any, Any, Any, torch.Tensor], Any] | None = None,
) -> Engine:
    """An Engine whose step trains `model` on one batch and outputs the detached loss (no host sync)."""
    if not isinstance(accumulate, int) or accumulate < 1:
        raise ValueError(f"accumulate must be a positive integer, got {accumulate!r}")
    prepare = prepare_batch or default_prepare_batch
    device_type = _device_type(device, model)
    autocast = _autocast(amp, device_type)
    scaler = torch.amp.GradScaler(device_type) if amp == "fp16" else None
    params = [p for p in model.parameters() if p.requires_grad]

    def train_step(engine: Engine, batch: Any) -> Any:
        it = engine.state.iteration
        if accumulate == 1 or it % accumulate == 1:
            optimizer.zero_grad(set_to_none=True)
        if not model.training:
            model.train()
        x, y = prepare(batch, device, non_blocking)
        with autocast():
            y_pred = model(x)
            loss = loss_fn(y_pred, y)
        scaled = loss / accumulate if accumulate > 1 else loss
        if scaler is not None:
            scaler.scale(scaled).backward()
        else:
            scaled.backward()
        if accumulate == 1 or it % accumulate == 0:
            if scaler is not None:
                if clip_grad_norm is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
            else:
                if clip_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
                optimizer.step()
        if output_transform is not None:
            return output_transform(x, y, y_pred, loss)
        return loss.detach()

    trainer = Engine(train_step)
    trainer.model = model
    trainer.optimizer = optimizer
    trainer.scaler = scaler
    return trainer


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
    amp: str | None = None,
) -> Engine:
    """An Engine that runs `model` in eval mode without gradients and fills `state.metrics` at COMPLETED."""
    prepare = prepare_batch or default_prepare_batch
    autocast = _autocast(amp, _device_type(device, model))
    metrics = dict(metrics or {})
    for name, metric in metrics.items():
        if not all(callable(getattr(metric, m, None)) for m in ("reset", "update", "compute")):
            raise TypeError(f"metric {name!r} needs reset(), update(output) and compute(); got {metric!r}")
        if device is not None and _is_ignite_metric(metric) and torch.device(device).type != "cpu":
            metric._device = torch.device(device)  # accumulate on the evaluator's device: no per-batch sync

    @torch.no_grad()
    def eval_step(engine: Engine, batch: Any) -> tuple[Any, Any]:
        x, y = prepare(batch, device, non_blocking)
        with autocast():
            y_pred = model(x)
        return y_pred, y

    evaluator = Engine(eval_step)
    evaluator.model = model
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

    def restore_mode(engine: Engine, exc: BaseException) -> None:
        model.train(was_training[0])

    evaluator.add_event_handler(Events.STARTED, started)
    if metrics:
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, iteration_completed)
    evaluator.add_event_handler(Events.COMPLETED, completed)
    evaluator.add_event_handler(Events.EXCEPTION_RAISED, restore_mode)
    return evaluator
