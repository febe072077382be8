"""LossPrinter: prints the training loss every n iterations, reading its value only on the iterations it prints."""

from __future__ import annotations

import string
import sys
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import torch

from ember.callbacks._output import accumulate, as_number, batch_size_of, loss_of, resumes_mid_epoch, step_in_epoch
from ember.distributed import world_size
from ember.engine import Engine, Events
from ember.engine import order as order_levels
from ember.utils import checks

# `loss: 2.290156  [    0/60000]`: the loss, then the samples seen so far out of the dataset's.
DEFAULT_FMT = "loss: {loss:>7f}  [{current:>5d}/{size:>5d}]"


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

    ember_order = order_levels.READ

    def __init__(
        self,
        every: int = 100,
        fmt: str = DEFAULT_FMT,
        window: bool = False,
        size: int | None = None,
        file: TextIO | None = None,
        *,
        output_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        checks.positive_int("every", every)
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
            self._sum = accumulate(self._sum, loss)
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
