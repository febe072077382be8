"""`create_trainer`: a `Trainer` engine whose step is zero_grad, forward, loss, backward and optimizer step."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ember import distributed as dist
from ember.engine.engine import Engine, ProcessFunction
from ember.steps.batch import Amp, CompileMode, PrepareBatch, autocast, compiled, default_prepare_batch, device_type
from ember.steps.cuda_graph import GraphedStep, check_cuda_graph
from ember.utils import checks


class Trainer(Engine):
    """The engine `create_trainer` returns: an Engine that also holds what its step trains with.

    Handlers reach the model, optimizer and (with amp="fp16") GradScaler through these attributes, e.g.
    `Checkpoint({"model": trainer.model, "optimizer": trainer.optimizer}, dirname)`; Checkpoint itself saves
    `trainer.scaler` with the trainer.
    """

    def __init__(
        self,
        process_function: ProcessFunction,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        super().__init__(process_function)
        self.logger = logging.getLogger("ignite.engine.engine.Engine")  # the name trainers always logged under
        self.model: nn.Module = model
        self.optimizer: torch.optim.Optimizer = optimizer
        self.scaler: torch.amp.GradScaler | None = scaler


def create_trainer(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    device: torch.device | str | None = None,
    *,
    non_blocking: bool = True,
    accumulate: int = 1,
    clip_grad_norm: float | None = None,
    amp: Amp | None = None,
    prepare_batch: PrepareBatch | None = None,
    output_transform: Callable[[Any, Any, Any, torch.Tensor], Any] | None = None,
    cuda_graph: bool = False,
    compile: bool | CompileMode = False,
    channels_last: bool = False,
) -> Trainer:
    """A Trainer whose step trains `model` on one batch and outputs the detached loss (no host sync).

    Speed options: `compile` runs the step's forward through torch.compile (True, or a mode name such as
    "max-autotune-no-cudagraphs"); `channels_last` puts the model and 4-D inputs in channels-last memory
    format (faster convolutions, above all under bf16 on GPUs); `cuda_graph` captures the whole step (forward,
    loss, backward, optimizer step) as one CUDA graph after a few eager warm-up batches (see `GraphedStep`).

    Args:
        model: the model to train; the step puts it in train mode.
        optimizer: steps the model's parameters.
        loss_fn: `loss_fn(y_pred, y)`, a scalar tensor.
        device: where batches go (the model must already be there); None leaves them where they are.
        non_blocking: copy batches to the device asynchronously.
        accumulate: batches per optimizer step (gradient accumulation); the loss is divided by it.
        clip_grad_norm: clip the gradients' total norm to this before each optimizer step.
        amp: mixed precision: "bf16" (autocast) or "fp16" (autocast and a GradScaler), None for full precision.
        prepare_batch: `prepare_batch(batch, device, non_blocking) -> (x, y)`; default `default_prepare_batch`.
        output_transform: `output_transform(x, y, y_pred, loss)` is the step's output instead of the loss.
        cuda_graph: capture the whole step as one CUDA graph.
        compile: torch.compile the model's forward (True, or a mode name).
        channels_last: use channels-last memory format for the model (not an FSDP2-sharded one) and 4-D inputs.
    """
    checks.positive_int("accumulate", accumulate)
    prepare = prepare_batch or default_prepare_batch
    step_device_type = device_type(device, model)
    if cuda_graph:
        device = device if device is not None else next(model.parameters()).device
        check_cuda_graph(torch.device(device), model, optimizer, amp, accumulate, compile)
    autocast_context = autocast(amp, step_device_type, cache=not cuda_graph)
    scaler = torch.amp.GradScaler(step_device_type) if amp == "fp16" else None
    params = [p for p in model.parameters() if p.requires_grad]
    if channels_last and not dist.is_sharded(model):  # FSDP2 shards only contiguous parameters
        model.to(memory_format=torch.channels_last)
    net = compiled(model, compile)

    def forward_backward_step(x: Any, y: Any, step: bool = True) -> tuple[Any, torch.Tensor]:
        """Forward, loss, backward and (when `step`) the optimizer step of one batch; no zero_grad."""
        with autocast_context():
            y_pred = net(x)
            loss = loss_fn(y_pred, y)
        scaled = loss / accumulate if accumulate > 1 else loss
        if scaler is not None:
            scaler.scale(scaled).backward()
        else:
            scaled.backward()
        if step:
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
        return y_pred, loss

    graphed = GraphedStep(forward_backward_step, optimizer) if cuda_graph else None

    def train_step(engine: Engine, batch: Any) -> Any:
        if not model.training:
            model.train()
        x, y = prepare(batch, device, non_blocking)
        if channels_last and isinstance(x, torch.Tensor) and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if graphed is not None:
            x, y, y_pred, loss = graphed(x, y)
        else:
            it = engine.state.iteration
            if accumulate == 1 or it % accumulate == 1:
                optimizer.zero_grad(set_to_none=True)
            y_pred, loss = forward_backward_step(x, y, accumulate == 1 or it % accumulate == 0)
        if output_transform is not None:
            return output_transform(x, y, y_pred, loss)
        return loss.detach()

    return Trainer(train_step, model, optimizer, scaler)
