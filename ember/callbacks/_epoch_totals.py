"""TensorBoardLogger's totals of a training epoch, kept on the device until the epoch is logged."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import torch


class EpochTotals:
    """The running sums of one training epoch, on the device, plus its time and samples on the host."""

    def __init__(self, epoch: int, carried: Mapping[str, Any] | None = None) -> None:
        carried = carried or {}
        self.epoch = epoch
        self.start = time.perf_counter() - float(carried.get("elapsed_s", 0.0))
        self.end: float | None = None
        self.samples = int(carried.get("samples", 0))
        self.steps = int(carried.get("steps", 0))
        self.loss_sum: Any = float(carried.get("loss_sum", 0.0))
        self.correct: Any = int(carried.get("correct", 0))
        self.counted = int(carried.get("counted", 0))

    def add(self, loss: Any, correct: Any, n: int) -> None:
        """Count a step of `n` samples with its loss and right predictions (device values stay on the device)."""
        self.steps += 1
        self.samples += n
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().float()
        self.loss_sum = loss + self.loss_sum
        if correct is not None:
            self.correct = correct + self.correct
            self.counted += n

    def read(self) -> tuple[float, float | None]:
        """(mean loss, accuracy or None) with one host read."""
        values = [self.loss_sum, self.correct]
        tensors = [v for v in values if isinstance(v, torch.Tensor)]
        if tensors:
            device = tensors[0].device
            values = torch.stack([torch.as_tensor(v, device=device).double() for v in values]).tolist()
        loss_sum, correct = float(values[0]), float(values[1])
        mean = loss_sum / self.steps if self.steps else math.nan
        return mean, (correct / self.counted if self.counted else None)

    def elapsed(self) -> float:
        """Seconds of the epoch: to its last step once that is done, else until now."""
        return (self.end if self.end is not None else time.perf_counter()) - self.start
