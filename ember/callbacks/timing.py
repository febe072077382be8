"""Timer and ThroughputMonitor: step time, epoch time and samples/s without a device sync on every step."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import torch

from ember.callbacks.loss_printer import as_tensor_sum, batch_size_of, loss_of, resumes_mid_epoch, step_in_epoch
from ember.engine import Engine, Events
from ember.engine import order as order_levels

# MindSpore's LossMonitor lines at each epoch end (seed 003):
# `Epoch:[  0/ 10], step:[ 1875/ 1875], loss:[0.189/1.176], time:2.254 ms, lr:0.01000`
# `Epoch time: 4286.163 ms, per step time: 2.286 ms, avg loss: 1.176`
SEED003_FMT = (
    "Epoch:[{epoch0:>3d}/{max_epochs:>3d}], step:[{step:>5d}/{steps:>5d}], "
    "loss:[{loss:.3f}/{avg_loss:.3f}], time:{step_ms:.3f} ms, lr:{lr:.5f}\n"
    "Epoch time: {epoch_ms:.3f} ms, per step time: {step_avg_ms:.3f} ms, avg loss: {avg_loss:.3f}"
)


def first_tensor(obj: Any) -> torch.Tensor | None:
    """The first tensor in an output or batch (tensor, sequence or mapping), or None."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        for item in obj:
            found = first_tensor(item)
            if found is not None:
                return found
    return None


class Timer:
    """Stores `time/step_ms` (last step), `time/step_avg_ms` and `time/epoch_s` in `state.metrics`.

    Times are host clock readings (`time.perf_counter`). On the CPU the step time is stored after every
    step. When the output is on a CUDA device nothing waits for the device during the epoch: each step
    records a CUDA event, and at the end of the epoch one synchronize makes the epoch time exact and gives
    the last step's device time from the events. The epoch ends at its last iteration, so evaluation run
    at EPOCH_COMPLETED is not counted. A run resumed mid-epoch from a checkpoint continues the epoch's
    clock and counts (`state_dict`), so its epoch time covers the whole epoch, not only the resumed part.
    """

    order = order_levels.COMPUTE

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


class ThroughputMonitor(Timer):
    """A Timer that also stores `throughput/samples_per_s` and, with `fmt`, prints a line per epoch.

    The samples of a step are `batch_size`, or the length of the first tensor in the batch. With `fmt`
    the loss of every step is summed on its device and read once per epoch. Template fields: epoch,
    epoch0 (0-based), max_epochs, step, steps, iteration, loss (last step), avg_loss (epoch mean),
    step_ms, step_avg_ms, epoch_ms, epoch_s, samples_per_s, lr (first parameter group of the trainer's
    optimizer, else `state.metrics["lr"]`). `SEED003_FMT` prints MindSpore's two lines.
    """

    def __init__(
        self,
        batch_size: int | None = None,
        *,
        fmt: str | None = None,
        file: TextIO | None = None,
        output_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.fmt = fmt
        self.file = file
        self.output_transform = output_transform
        self.samples = 0
        self.samples_per_s = 0.0
        self._loss_sum: Any = None
        self._last_loss: Any = None

    def _epoch_started(self, engine: Engine) -> None:
        self.samples = 0
        self._loss_sum = self._last_loss = None
        super()._epoch_started(engine)

    def state_dict(self) -> dict[str, Any]:
        """The Timer's epoch plus its samples and loss sums (read once: a checkpoint syncs anyway)."""
        last, total = self._last_loss, self._loss_sum
        return {**super().state_dict(), "samples": self.samples,
                "loss_sum": total.item() if isinstance(total, torch.Tensor) else total,
                "last_loss": last.item() if isinstance(last, torch.Tensor) else last}

    def _continue_window(self, restored: dict[str, Any]) -> None:
        self.samples = int(restored.get("samples", 0))
        self._loss_sum, self._last_loss = restored.get("loss_sum"), restored.get("last_loss")

    def _on_step(self, engine: Engine, now: float) -> None:
        self.samples += self.batch_size or batch_size_of(engine.state.batch) or 0
        if self._cuda is None:
            elapsed = now - self._epoch_start
            engine.state.metrics["throughput/samples_per_s"] = self.samples / elapsed if elapsed > 0 else 0.0
        if self.fmt is not None:
            loss = loss_of(engine.state.output, self.output_transform)
            if isinstance(loss, torch.Tensor):
                self._loss_sum = (loss.float().clone() if self._loss_sum is None
                                  else as_tensor_sum(self._loss_sum, loss).add_(loss))
            else:
                self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._last_loss = loss

    def _on_finish(self, engine: Engine) -> None:
        self.samples_per_s = self.samples / self.epoch_s if self.epoch_s > 0 else 0.0
        engine.state.metrics["throughput/samples_per_s"] = self.samples_per_s
        if self.fmt is not None:
            print(self.fmt.format(**self._fields(engine)), file=self.file or sys.stdout)

    def _losses(self) -> tuple[float, float]:
        if self._loss_sum is None:
            return math.nan, math.nan
        last, total = self._last_loss, self._loss_sum
        if isinstance(total, torch.Tensor):
            pair = torch.stack([torch.as_tensor(last, device=total.device).float(), total]).tolist()
            last, total = pair
        return float(last), float(total) / max(self._count, 1)

    def _fields(self, engine: Engine) -> dict[str, Any]:
        s = engine.state
        last, avg = self._losses()
        optimizer = getattr(engine, "optimizer", None)
        if optimizer is not None:
            lr = float(optimizer.param_groups[0]["lr"])
        else:
            lr = float(s.metrics.get("lr", math.nan))
        return {
            "epoch": s.epoch,
            "epoch0": s.epoch - 1,
            "max_epochs": s.max_epochs,
            "step": step_in_epoch(engine),
            "steps": s.epoch_length,
            "iteration": s.iteration,
            "loss": last,
            "avg_loss": avg,
            "step_ms": self.step_ms,
            "step_avg_ms": self.step_avg_ms,
            "epoch_ms": self.epoch_s * 1000,
            "epoch_s": self.epoch_s,
            "samples_per_s": self.samples_per_s,
            "lr": lr,
        }
