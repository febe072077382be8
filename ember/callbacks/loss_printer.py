"""LossPrinter: prints the training loss every n iterations, reading its value only on the iterations it prints."""

from __future__ import annotations

import string
import sys
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import torch

from ember.distributed import world_size
from ember.engine import Engine, Events
from ember.engine import order as order_levels

# `loss: 2.290156  [    0/60000]` every 100 batches (seed 000, the PyTorch "Optimizing Model Parameters" tutorial).
SEED000_FMT = "loss: {loss:>7f}  [{current:>5d}/{size:>5d}]"
# `Epoch [1/5], Step [100/782], Loss: 2.0503`, the mean of the last 100 steps (seed 001; use window=True).
SEED001_FMT = "Epoch [{epoch}/{max_epochs}], Step [{step}/{steps}], Loss: {loss:.4f}"


def batch_size_of(batch: Any) -> int | None:
    """The length of the first tensor found in a batch (tensor, sequence or mapping); None when there is none."""
    if isinstance(batch, torch.Tensor):
        return len(batch) if batch.ndim > 0 else None
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            n = batch_size_of(item)
            if n is not None:
                return n
    return None


def step_in_epoch(engine: Engine) -> int:
    """The 1-based index of the current iteration within its epoch (right on resumed runs too)."""
    s = engine.state
    if s.epoch_length:
        return (s.iteration - 1) % s.epoch_length + 1
    return s.iteration  # the length is unknown only during the first pass over data without a len()


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
    """A Python number for a 1-element tensor (one device sync), anything else unchanged."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value


def resumes_mid_epoch(engine: Engine, saved_iteration: int) -> bool:
    """True at the EPOCH_STARTED of a run resumed inside the epoch in which a handler's window was saved."""
    s = engine.state
    return s.iteration == saved_iteration and bool(s.epoch_length) and s.iteration % s.epoch_length != 0


def as_tensor_sum(total: Any, like: torch.Tensor) -> torch.Tensor:
    """A running sum as a float32 tensor on `like`'s device (a restored sum is a Python float)."""
    if isinstance(total, torch.Tensor):
        return total
    return torch.tensor(total, dtype=torch.float32, device=like.device)


def template_fields(fmt: str) -> set[str]:
    """The top-level field names a `str.format` template uses."""
    names = set()
    for _, field, _, _ in string.Formatter().parse(fmt):
        if field:
            names.add(field.split(".")[0].split("[")[0])
    return names


class LossPrinter:
    """Prints the loss every `every` iterations of each epoch, or with `window=True` the mean over those steps.

    Without a window it prints at steps 0, every, 2*every... of each epoch (0-based, as seed 000's
    `batch % 100 == 0`); with a window at steps every, 2*every... (1-based, as seed 001's `i % 100 == 99`),
    the mean of the losses since the last print, summed on the loss's device so that only printing syncs.
    Template fields: loss, current (samples before this batch, all ranks together: step index * batch size *
    world size), size (dataset length), epoch, max_epochs, step (1-based step in the epoch), steps (epoch
    length), iteration.
    """

    order = order_levels.READ

    def __init__(
        self,
        every: int = 100,
        fmt: str = SEED000_FMT,
        window: bool = False,
        size: int | None = None,
        file: TextIO | None = None,
        *,
        output_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        self.every = every
        self.fmt = fmt
        self.window = window
        self.size = size
        self.file = file
        self.output_transform = output_transform
        self._fields = template_fields(fmt)
        self._sum: Any = None
        self._count = 0
        self._iteration = 0
        self._restored: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        """Print on `engine`'s iterations; with a window, also sum every loss and restart the sum each epoch."""
        if self.window:
            engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._on_iteration)

    def _reset(self, engine: Engine) -> None:
        restored, self._restored = self._restored, None
        if restored is not None and resumes_mid_epoch(engine, restored["iteration"]):
            self._sum, self._count = restored["sum"], restored["count"]
            return
        self._sum = None
        self._count = 0

    def state_dict(self) -> dict[str, Any]:
        """The loss window open at the last iteration (its sum read once: a checkpoint syncs anyway)."""
        total = self._sum
        if isinstance(total, torch.Tensor):
            total = total.item()
        return {"iteration": self._iteration, "sum": total, "count": self._count}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Continue the saved window when the run resumes at the iteration it was saved at (mid-epoch)."""
        self._restored = {"iteration": int(state_dict["iteration"]), "sum": state_dict["sum"],
                          "count": int(state_dict["count"])}

    def _on_iteration(self, engine: Engine) -> None:
        step = step_in_epoch(engine)
        self._iteration = engine.state.iteration
        if self.window:
            loss = loss_of(engine.state.output, self.output_transform)
            if isinstance(loss, torch.Tensor):
                self._sum = loss.float().clone() if self._sum is None else as_tensor_sum(self._sum, loss).add_(loss)
            else:
                self._sum = loss if self._sum is None else self._sum + loss
            self._count += 1
            if step % self.every == 0:
                value = as_number(self._sum / self._count)
                self._reset(engine)
                self._print(engine, step, value)
        elif (step - 1) % self.every == 0:
            self._print(engine, step, as_number(loss_of(engine.state.output, self.output_transform)))

    def _print(self, engine: Engine, step: int, loss: float) -> None:
        s = engine.state
        fields: dict[str, Any] = {
            "loss": loss,
            "epoch": s.epoch,
            "max_epochs": s.max_epochs,
            "step": step,
            "steps": s.epoch_length,
            "iteration": s.iteration,
        }
        if "current" in self._fields:
            fields["current"] = (step - 1) * (batch_size_of(s.batch) or 0) * world_size()
        if "size" in self._fields:
            fields["size"] = self._dataset_size(engine)
        print(self.fmt.format(**fields), file=self.file or sys.stdout)

    def _dataset_size(self, engine: Engine) -> int:
        if self.size is not None:
            return self.size
        data = engine.state.dataloader
        dataset = getattr(data, "dataset", None)
        if dataset is not None and hasattr(dataset, "__len__"):
            return len(dataset)
        size = getattr(data, "size", None)
        if isinstance(size, int):
            return size
        raise ValueError(
            f"LossPrinter: the template uses {{size}} but the data ({type(data).__name__}) has neither a "
            "`.dataset` with a length nor an integer `.size`; pass LossPrinter(size=number_of_samples)"
        )
