"""TerminateOnNan: stops training at the first non-finite loss, looking at the device only every n steps."""

from __future__ import annotations

import logging
import math
import sys
import weakref
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import torch

from ember.callbacks.loss_printer import step_in_epoch
from ember.distributed import all_reduce_sum, world_size
from ember.engine import Engine, Events
from ember.engine import order as order_levels

logger = logging.getLogger(__name__)
_GUARDS: weakref.WeakKeyDictionary[Engine, list[TerminateOnNan]] = weakref.WeakKeyDictionary()


def pending_non_finite(engine: Engine) -> bool:
    """Make each TerminateOnNan attached to `engine` check the steps it has not looked at yet (one sync; a
    collective under torchrun); True when one saw a non-finite value (it has then reported it and stopped the
    run). Checkpoint calls it before saving, so that no save can hold what a later check would have flagged."""
    return any([guard.check(engine) for guard in _GUARDS.get(engine, [])])


def float_leaves(obj: Any) -> list[Any]:
    """The floating-point tensors and Python floats in an output (tensor, number, sequence or mapping)."""
    if isinstance(obj, torch.Tensor):
        return [obj.detach()] if obj.is_floating_point() or obj.is_complex() else []
    if isinstance(obj, float):
        return [obj]
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [leaf for item in obj for leaf in float_leaves(item)]
    return []


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether no tensor holds NaN or Inf, with one host sync per device: a tensor's sum is finite when all its
    values are (a reduction far cheaper than `isfinite`'s mask); a sum that is not (NaN/Inf, or an overflow)
    gets the exact check."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        by_device.setdefault(t.device, []).append(t.detach())
    for ts in by_device.values():
        sums = torch.stack([t.sum().to(torch.float64) if not t.is_complex() else t.sum().abs().double() for t in ts])
        if not bool(torch.isfinite(sums).all()):
            bad = ~torch.isfinite(sums)
            if any(not bool(torch.isfinite(t).all()) for t, b in zip(ts, bad.tolist()) if b):
                return False
    return True


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

    order = order_levels.GUARD

    def __init__(
        self,
        *,
        check_every: int = 50,
        output_transform: Callable[[Any], Any] | None = None,
        file: TextIO | None = None,
    ) -> None:
        if not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"check_every must be a positive integer, got {check_every!r}")
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
        engine.state.terminated_on_nan = None  # type: ignore[attr-defined]
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
        self.message = f"TerminateOnNan: non-finite {what} at epoch {epoch}, iteration {iteration}; training stopped."
        engine.state.terminated_on_nan = (epoch, iteration)  # type: ignore[attr-defined]
        if logger.hasHandlers():  # with none, logging's last-resort handler would print it a second time
            logger.error(self.message)
        print(self.message, file=self.file or sys.stderr)
        engine.terminate()
