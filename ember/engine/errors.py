"""What the engine adds to an exception raised by the process function: where it happened and the batch's shape."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def describe(obj: Any, depth: int = 0) -> str:
    """A short description of a batch (types and tensor shapes) for error messages."""
    shape = getattr(obj, "shape", None)
    if shape is not None:
        return f"{type(obj).__name__}(shape={tuple(shape)}, dtype={getattr(obj, 'dtype', '?')})"
    if depth < 2 and isinstance(obj, (list, tuple)):
        inner = ", ".join(describe(o, depth + 1) for o in obj[:4])
        return f"{type(obj).__name__}[{inner}{', ...' if len(obj) > 4 else ''}]"
    if depth < 2 and isinstance(obj, Mapping):
        inner = ", ".join(f"{k!r}: {describe(v, depth + 1)}" for k, v in list(obj.items())[:4])
        return f"dict{{{inner}}}"
    return type(obj).__name__


def note_step_failure(exc: BaseException, epoch: int, iteration: int, batch: Any) -> None:
    """Add to `exc` a note naming the epoch, iteration and batch of the failed step.

    Notes (`BaseException.add_note`) exist from Python 3.11; on 3.10 the exception is left as it is.

    Args:
        exc: the exception the process function raised.
        epoch: the engine's epoch when it raised.
        iteration: the engine's iteration when it raised.
        batch: the batch it was given.
    """
    if hasattr(exc, "add_note"):
        exc.add_note(f"ember: raised by the process function at epoch {epoch}, iteration {iteration}; "
                     f"batch: {describe(batch)}")
