"""LRScheduler: steps a torch.optim.lr_scheduler scheduler per epoch or per iteration and records the LR."""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from ember.callbacks._monitor import metric
from ember.callbacks.evaluate import register_eval_events
from ember.engine import Engine, Events
from ember.engine import order as order_levels
from ember.utils import checks


class LRScheduler:
    """Steps `scheduler` at every EPOCH_COMPLETED (`per="epoch"`) or ITERATION_COMPLETED (`per="iteration"`).

    `ReduceLROnPlateau` is stepped with `engine.state.metrics[monitor]` (e.g. "val/loss" from Evaluate).
    Evaluate runs before it on the same event whatever the attach order (its `ember_order` is lower); a metric
    computed by a handler of your own must be attached before it, or step on `event=EvalEvents.EVALUATED`
    to step right after each evaluation. Before each step, the learning
    rate in effect (the one the epoch or iteration just used) is stored in `state.metrics` as `lr`, or as
    `lr/group{i}` when the optimizer has several parameter groups.
    """

    ember_order = order_levels.DEFAULT

    def __init__(
        self,
        scheduler: Any,
        *,
        per: Literal["epoch", "iteration"] = "epoch",
        monitor: str | None = None,
        event: Any | None = None,
    ) -> None:
        checks.one_of("per", per, {"epoch": "", "iteration": ""})
        if not callable(getattr(scheduler, "step", None)) or not hasattr(scheduler, "optimizer"):
            raise TypeError(f"expected a torch.optim.lr_scheduler scheduler, got {type(scheduler).__name__}")
        self.plateau = isinstance(scheduler, ReduceLROnPlateau)
        if self.plateau and monitor is None:
            raise ValueError(
                "ReduceLROnPlateau is stepped with a metric: pass monitor= the name of one in "
                "engine.state.metrics, e.g. LRScheduler(scheduler, monitor='val/loss') after Evaluate"
            )
        if monitor is not None and not self.plateau:
            raise ValueError(
                f"monitor={monitor!r} is only used with ReduceLROnPlateau; "
                f"{type(scheduler).__name__} steps without a metric, so leave monitor out"
            )
        self.scheduler = scheduler
        self.per = per
        self.monitor = monitor
        self.event = event

    def attach(self, engine: Engine) -> None:
        """Record the starting LR at STARTED and step on the chosen event."""
        engine.add_event_handler(Events.STARTED, self.record)
        if self.event is not None:
            event = self.event
            register_eval_events(engine, event)
        else:
            event = Events.EPOCH_COMPLETED if self.per == "epoch" else Events.ITERATION_COMPLETED
        engine.add_event_handler(event, self.step)

    def lrs(self) -> list[float | torch.Tensor]:
        """The current learning rate of each parameter group; a tensor LR is copied, not read, so no sync."""
        return [
            lr.detach().clone() if isinstance(lr := group["lr"], torch.Tensor) else float(lr)
            for group in self.scheduler.optimizer.param_groups
        ]

    def record(self, engine: Engine) -> None:
        """Store the current learning rate(s) in `engine.state.metrics`."""
        lrs = self.lrs()
        if len(lrs) == 1:
            engine.state.metrics["lr"] = lrs[0]
        else:
            for i, lr in enumerate(lrs):
                engine.state.metrics[f"lr/group{i}"] = lr

    def step(self, engine: Engine) -> None:
        """Record the LR just used, then step the scheduler (with the monitored metric for a plateau)."""
        self.record(engine)
        if not self.plateau:
            with warnings.catch_warnings():
                if engine.state.iteration:  # steps were taken, if in another process (an epoch end on resume)
                    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
                self.scheduler.step()
            return
        assert self.monitor is not None  # __init__ requires it with a plateau
        self.scheduler.step(metric(engine, self.monitor, "LRScheduler", "step"))

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state, for checkpoints."""
        return self.scheduler.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the scheduler's state from a checkpoint."""
        self.scheduler.load_state_dict(state_dict)
