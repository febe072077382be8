"""Rows `ember-dataloader`, `ember`, `ember-fast`, `ember-fast-compile`: ember's create_trainer + Evaluate."""

from __future__ import annotations

from typing import Any

from ignite.metrics import Accuracy, Loss

from benchmarks.throughput.job import Job
from ember.callbacks import Evaluate, LossPrinter
from ember.engine import Events, order
from ember.recipes import fashion_mnist_cnn
from ember.recipes.formats import SEED000_EVAL_FMT, SEED001_FMT
from ember.steps import create_evaluator, create_trainer


def run_ember(job: Job, **fast: Any) -> float:
    """ember's create_trainer + Evaluate with the recipe's logging handlers, on the loaders given."""
    cfg, lr, epochs, loaders, device, clock = job.cfg, job.lr, job.epochs, job.loaders, job.device, job.clock
    model = cfg.model().to(device)
    optimizer = cfg.optimizer(model.parameters(), lr)
    amp = fast.get("amp")
    output_transform = fashion_mnist_cnn.loss_and_correct if cfg.seed == "004" else None
    trainer = create_trainer(model, optimizer, cfg.loss_fn, device, output_transform=output_transform, **fast)
    if cfg.seed == "000":
        trainer.add(LossPrinter(every=100))
    elif cfg.seed == "001":
        trainer.add(LossPrinter(every=100, fmt=SEED001_FMT, window=True))
    else:
        trainer.add(fashion_mnist_cnn.EpochTotals())
    metrics = {"accuracy": Accuracy(device=device), "loss": Loss(cfg.loss_fn, device=device)}
    evaluator = create_evaluator(model, metrics, device, amp=amp)
    trainer.add_event_handler(Events.EPOCH_STARTED, clock.start)
    trainer.add(Evaluate(evaluator, loaders["test"], fmt=SEED000_EVAL_FMT))
    # handlers run by declared order, not attachment order: the training clock stops before Evaluate runs,
    # the evaluation clock after every handler of EPOCH_COMPLETED
    trainer.add(_At(Events.EPOCH_COMPLETED, clock.train_done), order=order.EVALUATE - 1)
    trainer.add(_At(Events.EPOCH_COMPLETED, clock.eval_done), order=order.LAST)
    trainer.run(loaders["train"], max_epochs=epochs)
    return float(evaluator.state.metrics["accuracy"])


class _At:
    """A clock reading as a callback, so that `trainer.add(..., order=...)` places it among the event's handlers."""

    def __init__(self, event: Any, read: Any) -> None:
        self.event, self.read = event, read

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(self.event, self._read)

    def _read(self, _: Any) -> None:
        self.read()
