"""ThroughputMonitor: samples/s (and, with a template, a line per epoch) on top of the Timer's clocks."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any, TextIO

import torch

from ember.callbacks._output import accumulate, batch_size_of, loss_of, step_in_epoch
from ember.callbacks.timer import Timer
from ember.engine import Engine


class ThroughputMonitor(Timer):
    """A Timer that also stores `throughput/samples_per_s` and, with `fmt`, prints a line per epoch.

    The samples of a step are `batch_size`, or the length of the first tensor in the batch. With `fmt`
    the loss of every step is summed on its device and read once per epoch. Template fields: epoch,
    epoch0 (0-based), max_epochs, step, steps, iteration, loss (last step), avg_loss (epoch mean),
    step_ms, step_avg_ms, epoch_ms, epoch_s, samples_per_s, lr (first parameter group of the trainer's
    optimizer, else `state.metrics["lr"]`). `ember.recipes.formats.SEED003_FMT` prints MindSpore's two lines.
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
            self._loss_sum = accumulate(self._loss_sum, loss)
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
