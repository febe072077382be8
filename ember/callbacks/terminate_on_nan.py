"""TerminateOnNan: stops training at the first non-finite loss, looking at the device only every n steps."""

from __future__ import annotations

import logging
import math
import sys
import weakref
from collections.abc import Callable
from typing import Any, TextIO

import torch

from ember.callbacks._output import float_leaves, step_in_epoch
from ember.distributed import all_reduce_sum, world_size
from ember.engine import Engine, Events
from ember.engine import order as order_levels
from ember.utils import checks

logger = logging.getLogger(__name__)
_GUARDS: weakref.WeakKeyDictionary[Engine, list[TerminateOnNan]] = weakref.WeakKeyDictionary()


def pending_non_finite(engine: Engine) -> bool:
    """Make each TerminateOnNan attached to `engine` check the steps it has not looked at yet (one sync; a
    collective under torchrun); True when one saw a non-finite value (it has then reported it and stopped the
    run). Checkpoint calls it before saving, so that no save can hold what a later check would have flagged."""
    return any([guard.check(engine) for guard in _GUARDS.get(engine, [])])


class TerminateOnNan:
    """Terminates the run at the first NaN or infinity in the output (the loss, or any tensor in it).

    Each step stores one on-device "all finite" flag in a small buffer (no sync); the buffer is read every
    `check_every` steps, at the last step of each epoch (before any EPOCH_COMPLETED handler) and at
    EPOCH_COMPLETED/COMPLETED. The first bad step is reported by epoch and iteration, stored as
    `engine.state.terminated_on_nan = (epoch, iteration)` (None while all is well, so that a checkpoint
    handler can refuse to save), printed once to `file` (stderr by default) and logged where logging is configured;
    then the engine stops. A Checkpoint saving in between makes it check
    first (`pending_non_finite`), so a save never holds a step the check would flag.
    Steps after the bad one but before the check still ran: a smaller `check_every` stops sooner. Under
    torchrun the ranks combine their flags at each check (one small all-reduce), so all stop on the same step.
    """

    ember_order = order_levels.GUARD

    def __init__(
        self,
        *,
        check_every: int = 50,
        output_transform: Callable[[Any], Any] | None = None,
        file: TextIO | None = None,
    ) -> None:
        checks.positive_int("check_every", check_every)
        self.check_every = check_every
        self.output_transform = output_transform
        self.file = file
        self.message: str | None = None
        self._flags: torch.Tensor | None = None
        self._steps: list[tuple[int, int, Any]] = []

    def attach(self, engine: Engine) -> None:
        """Watch `engine`'s outputs."""
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.check)
        engine.add_event_handler(Events.COMPLETED, self.check)
        _GUARDS.setdefault(engine, []).append(self)

    def _started(self, engine: Engine) -> None:
        engine.state.terminated_on_nan = None
        self.message = None
        self._steps = []

    def _iteration_completed(self, engine: Engine) -> None:
        if self.message is not None:
            return
        output = engine.state.output
        leaves = float_leaves(self.output_transform(output) if self.output_transform else output)
        s = engine.state
        bad = [x for x in leaves if not isinstance(x, torch.Tensor) and not math.isfinite(x)]
        if bad:
            self._report(engine, s.epoch, s.iteration, bad[0], len(leaves) == 1)
            return
        tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
        if tensors:
            finite = torch.isfinite(tensors[0]).all()
            for t in tensors[1:]:
                finite = finite & torch.isfinite(t).all()
            if self._flags is None or self._flags.device != finite.device:
                self._flags = torch.ones(self.check_every, dtype=torch.bool, device=finite.device)
            self._flags[len(self._steps)] = finite
            loss = tensors[0] if len(leaves) == 1 and tensors[0].numel() == 1 else None
            self._steps.append((s.epoch, s.iteration, loss))
        if len(self._steps) == self.check_every or (s.epoch_length and step_in_epoch(engine) == s.epoch_length):
            self.check(engine)

    def check(self, engine: Engine) -> bool:
        """Read the flags stored since the last check (one sync); True once a non-finite value was seen."""
        if self.message is not None:
            return True
        n = len(self._steps)
        if n == 0 or self._flags is None:
            return False
        flags = self._flags[:n]
        bad = ~flags
        if world_size() > 1:  # ranks check on the same steps and must stop together, or DDP's next all-reduce hangs
            bad = all_reduce_sum(bad.to(torch.int32)) > 0
        if not bad.any().item():
            self._steps = []
            return False
        first = int(bad.to(torch.uint8).argmax().item())
        epoch, iteration, loss = self._steps[first]
        self._steps = []
        here = not flags[first].item()
        self._report(engine, epoch, iteration, loss if here else None, loss is not None, elsewhere=not here)
        return True

    def _report(
        self, engine: Engine, epoch: int, iteration: int, value: Any, is_loss: bool, elsewhere: bool = False
    ) -> None:
        if isinstance(value, torch.Tensor):
            value = value.item()
        what = "loss" if is_loss else "output"
        if elsewhere:
            what += " on another rank"
        elif is_loss and value is not None:
            what += f" ({value})"
        seen = engine.state.iteration
        found = f" (found at iteration {seen}, checked every {self.check_every})" if seen != iteration else ""
        self.message = (f"TerminateOnNan: non-finite {what} at epoch {epoch}, iteration {iteration}{found}; "
                        "training stopped.")
        engine.state.terminated_on_nan = (epoch, iteration)
        if logger.hasHandlers():  # with none, logging's last-resort handler would print it a second time
            logger.error(self.message)
        print(self.message, file=self.file or sys.stderr)
        engine.terminate()
