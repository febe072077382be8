"""The Engine's run state: a plain dataclass that handlers read and may extend with their own attributes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class State:
    """Counters and values of the current run; `epoch` and `iteration` count from 1 once running."""

    epoch: int = 0
    iteration: int = 0
    max_epochs: int | None = None
    epoch_length: int | None = None
    batch: Any = None
    output: Any = None
    metrics: dict[str, Any] = field(default_factory=dict)
    dataloader: Any = None
    seed: int | None = None
    times: dict[str, float] = field(default_factory=lambda: {"EPOCH_COMPLETED": 0.0, "COMPLETED": 0.0})

    def __repr__(self) -> str:
        """Counters and plain values; the batch, output, data and metrics by type only (not whole tensors)."""
        plain = (int, float, str, bool, type(None))
        fields = (f"{k}={v!r}" if isinstance(v, plain) else f"{k}=<{type(v).__name__}>" for k, v in vars(self).items())
        return f"State({', '.join(fields)})"

    def is_done(self) -> bool:
        """True when the run has reached `max_epochs` (by epoch count or by iterations)."""
        if self.max_epochs is None:
            return False
        if self.epoch_length is not None and self.iteration >= self.epoch_length * self.max_epochs:
            return True
        return self.epoch >= self.max_epochs
