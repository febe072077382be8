"""Timer: step and epoch times without a device sync on every step."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch

from ember.callbacks._output import first_tensor, resumes_mid_epoch, step_in_epoch
from ember.engine import Engine, Events
from ember.engine import order as order_levels


class Timer:
    """Stores `time/step_ms` (last step), `time/step_avg_ms` and `time/epoch_s` in `state.metrics`.

    Times are host clock readings (`time.perf_counter`). On the CPU the step time is stored after every
    step. When the output is on a CUDA device nothing waits for the device during the epoch: each step
    records a CUDA event, and at the end of the epoch one synchronize makes the epoch time exact and gives
    the last step's device time from the events. The epoch ends at its last iteration, so evaluation run
    at EPOCH_COMPLETED is not counted. A run resumed mid-epoch from a checkpoint continues the epoch's
    clock and counts (`state_dict`), so its epoch time covers the whole epoch, not only the resumed part.
    """

    ember_order = order_levels.COMPUTE

    def __init__(self) -> None:
        self._cuda: torch.device | None = None
        self._device_known = False
        self._events: list[Any] = []
        self._epoch_start = 0.0
        self._last = 0.0
        self._step_s = 0.0
        self._count = 0
        self._finished = True
        self._iteration = 0
        self._restored: dict[str, Any] | None = None
        self.epoch_s = 0.0
        self.step_ms = 0.0
        self.step_avg_ms = 0.0

    def attach(self, engine: Engine) -> None:
        """Time `engine`'s epochs and steps."""
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _started(self, engine: Engine) -> None:
        self._device_known = False
        self._cuda = None

    def _epoch_started(self, engine: Engine) -> None:
        restored, self._restored = self._restored, None
        self._count = 0
        self._finished = False
        self._epoch_start = self._last = time.perf_counter()
        if restored is not None and resumes_mid_epoch(engine, restored["iteration"]):
            self._count = restored["count"]
            self._epoch_start -= restored["elapsed_s"]
            self._continue_window(restored)

    def state_dict(self) -> dict[str, Any]:
        """The epoch in progress: its steps and seconds so far (a checkpoint is the only time this is read)."""
        return {"iteration": self._iteration, "count": self._count, "elapsed_s": self._last - self._epoch_start}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Continue the saved epoch when the run resumes at the iteration it was saved at (mid-epoch)."""
        self._restored = {**state_dict, "iteration": int(state_dict["iteration"]), "count": int(state_dict["count"]),
                          "elapsed_s": float(state_dict["elapsed_s"])}

    def _continue_window(self, restored: dict[str, Any]) -> None:
        """Hook for subclasses: take over their part of a restored epoch."""

    def _iteration_completed(self, engine: Engine) -> None:
        if not self._device_known:
            self._find_device(engine)
        self._iteration = engine.state.iteration
        now = time.perf_counter()
        self._step_s = now - self._last
        self._last = now
        self._count += 1
        if self._cuda is not None:
            self._events[self._count % 2].record(torch.cuda.current_stream(self._cuda))
        else:
            engine.state.metrics["time/step_ms"] = self._step_s * 1000
        self._on_step(engine, now)
        if engine.state.epoch_length and step_in_epoch(engine) == engine.state.epoch_length:
            self._finish(engine)

    def _epoch_completed(self, engine: Engine) -> None:
        if not self._finished:
            self._finish(engine)

    def _find_device(self, engine: Engine) -> None:
        tensor = first_tensor(engine.state.output)
        if tensor is not None and tensor.device.type == "cuda":
            self._cuda = tensor.device
            self._events = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
        self._device_known = True

    def _finish(self, engine: Engine) -> None:
        """Close the epoch: one device sync (CUDA only), then store the epoch's times."""
        self._finished = True
        if self._cuda is not None:
            torch.cuda.synchronize(self._cuda)
        end = time.perf_counter() if self._cuda is not None else self._last
        self.epoch_s = end - self._epoch_start
        if self._cuda is not None and self._count >= 2:
            self.step_ms = self._events[(self._count - 1) % 2].elapsed_time(self._events[self._count % 2])
        elif self._cuda is not None:
            self.step_ms = self.epoch_s * 1000
        else:
            self.step_ms = self._step_s * 1000
        self.step_avg_ms = self.epoch_s * 1000 / max(self._count, 1)
        metrics = engine.state.metrics
        metrics["time/step_ms"] = self.step_ms
        metrics["time/step_avg_ms"] = self.step_avg_ms
        metrics["time/epoch_s"] = self.epoch_s
        self._on_finish(engine)

    def _on_step(self, engine: Engine, now: float) -> None:
        """Hook for subclasses, called after each step is timed."""

    def _on_finish(self, engine: Engine) -> None:
        """Hook for subclasses, called once the epoch's times are stored."""
