"""What handlers read from an engine's output and batch, shared so that each reads them the same way.

Outputs and batches are tensors, numbers, or sequences and mappings of them; `leaves` walks that structure
once, in order, and the readers (`first_tensor`, `batch_size_of`, `float_leaves`) pick from it. Nothing
here reads a value from the device except `as_number`, which says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from ember.engine import Engine


def leaves(obj: Any) -> Iterator[Any]:
    """The items of a (nested) sequence or mapping that are neither, in order; `obj` itself when it is neither."""
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        for item in obj:
            yield from leaves(item)
    else:
        yield obj


def first_tensor(obj: Any) -> torch.Tensor | None:
    """The first tensor in an output or batch (tensor, sequence or mapping), or None."""
    return next((leaf for leaf in leaves(obj) if isinstance(leaf, torch.Tensor)), None)


def batch_size_of(batch: Any) -> int | None:
    """The length of the first tensor found in a batch (tensor, sequence or mapping); None when there is none."""
    return next((len(leaf) for leaf in leaves(batch) if isinstance(leaf, torch.Tensor) and leaf.ndim > 0), None)


def float_leaves(obj: Any) -> list[Any]:
    """The floating-point tensors (detached) and Python floats in an output (tensor, number, sequence or mapping)."""
    found: list[Any] = []
    for leaf in leaves(obj):
        if isinstance(leaf, torch.Tensor):
            if leaf.is_floating_point() or leaf.is_complex():
                found.append(leaf.detach())
        elif isinstance(leaf, float):
            found.append(leaf)
    return found


def loss_of(output: Any, output_transform: Callable[[Any], Any] | None = None) -> Any:
    """The loss in an engine output: the output itself (tensor or number), or its "loss" entry."""
    if output_transform is not None:
        output = output_transform(output)
    if isinstance(output, Mapping) and "loss" in output:
        output = output["loss"]
    if isinstance(output, torch.Tensor):
        output = output.detach()
        return output if output.numel() == 1 else output.float().mean()
    if isinstance(output, (int, float)):
        return output
    raise TypeError(
        f"expected the engine output to be a loss tensor or number, got {type(output).__name__}; "
        "pass output_transform= to pick the loss out of it"
    )


def as_number(value: Any) -> Any:
    """A Python number for a one-element tensor (one device sync) or array; anything else unchanged."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, np.ndarray) and value.size == 1:
        return value.item()
    return value


def accumulate(total: Any, loss: Any) -> Any:
    """`total + loss` for a running loss sum, kept on the loss's device as float32 when the loss is a tensor
    (added in place, so that only reading the sum syncs); `total` is None for an empty sum, and a restored
    sum is a Python float."""
    if isinstance(loss, torch.Tensor):
        if total is None:
            return loss.float().clone()
        if not isinstance(total, torch.Tensor):
            total = torch.tensor(total, dtype=torch.float32, device=loss.device)
        return total.add_(loss)
    return loss if total is None else total + loss


def step_in_epoch(engine: Engine) -> int:
    """The 1-based index of the current iteration within its epoch (right on resumed runs too)."""
    s = engine.state
    if s.epoch_length:
        return (s.iteration - 1) % s.epoch_length + 1
    return s.iteration  # the length is unknown only during the first pass over data without a len()


def resumes_mid_epoch(engine: Engine, saved_iteration: int) -> bool:
    """True at the EPOCH_STARTED of a run resumed inside the epoch in which a handler's window was saved."""
    s = engine.state
    return s.iteration == saved_iteration and bool(s.epoch_length) and s.iteration % s.epoch_length != 0
