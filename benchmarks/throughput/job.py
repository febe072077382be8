"""What every runner gets (a Job: set-up, loaders, device, Clock) and the seed's logging they all reproduce."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.throughput.setups import Config


@dataclass
class Job:
    """One timed run: the set-up, its learning rate and epochs, the loaders, the device and the clock."""

    cfg: Config
    lr: float
    epochs: int
    loaders: dict[str, Any]
    device: torch.device
    clock: Clock


class Clock:
    """Per-epoch training and evaluation seconds; on CUDA each reading waits for the device first."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.train_s: list[float] = []
        self.eval_s: list[float] = []
        self._t = 0.0

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def start(self, *_: Any) -> None:
        self._t = self.now()

    def train_done(self, *_: Any) -> None:
        t = self.now()
        self.train_s.append(t - self._t)
        self._t = t

    def eval_done(self, *_: Any) -> None:
        t = self.now()
        self.eval_s.append(t - self._t)
        self._t = t


class SeedLog:
    """The seed's per-batch logging, with `.item()`/`float()` exactly where the seed reads a value."""

    def __init__(self, seed: str, size: int, steps: int, epochs: int) -> None:
        self.seed, self.size, self.steps, self.epochs = seed, size, steps, epochs
        self.epoch = 0
        self.running = 0.0
        self.correct = 0

    def epoch_start(self, *_: Any) -> None:
        self.running, self.correct = 0.0, 0

    def step(self, i: int, loss: Any, pred: torch.Tensor, y: torch.Tensor) -> None:
        if self.seed == "000":
            if i % 100 == 0:
                print(f"loss: {float(loss):>7f}  [{i * len(y):>5d}/{self.size:>5d}]")
        elif self.seed == "001":
            self.running += float(loss)
            if i % 100 == 99:
                print(f"Epoch [{self.epoch + 1}/{self.epochs}], Step [{i + 1}/{self.steps}], "
                      f"Loss: {self.running / 100:.4f}")
                self.running = 0.0
        else:
            self.running += float(loss)
            self.correct += pred.argmax(dim=1).eq(y).sum().item()

    def epoch_end(self, *_: Any) -> None:
        if self.seed == "004":
            print("epoch:", self.epoch, "total_correct:", self.correct, "loss:", self.running)
        self.epoch += 1
