"""What every step does with a batch and a model: unpack and move the batch, pick autocast, compile the model."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from ember.engine.errors import describe

PrepareBatch = Callable[[Any, Any, bool], tuple[Any, Any]]
Amp = Literal["bf16", "fp16"]
"""Mixed precision of a step: autocast to bfloat16, or to float16 with a GradScaler."""
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
"""A torch.compile mode name (torch.compile itself rejects others)."""
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


def device_type(device: torch.device | str | None, model: nn.Module) -> str:
    """The device type a step runs on: `device`'s, else that of the model's first parameter, else "cpu"."""
    if device is not None:
        return torch.device(device).type
    p = next(model.parameters(), None)
    return p.device.type if p is not None else "cpu"


def autocast(
    amp: Amp | None, device_type: str, cache: bool = True
) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the step's autocast context: a null context without `amp`, else torch.autocast to its dtype."""
    if amp is None:
        return contextlib.nullcontext
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    dtype = AMP_DTYPES[amp]
    return lambda: torch.autocast(device_type=device_type, dtype=dtype, cache_enabled=cache)


def compiled(model: nn.Module, compile: bool | CompileMode) -> nn.Module:
    """`model`, or torch.compile of it (`compile` True for the default mode, or the mode's name)."""
    if compile is False or compile is None:
        return model
    if compile is not True and not isinstance(compile, str):
        raise TypeError(f"compile must be a bool or a torch.compile mode name, got {compile!r}")
    return torch.compile(model, mode=None if compile is True else compile)
