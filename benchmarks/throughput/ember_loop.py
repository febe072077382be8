"""Rows `ember-dataloader`, `ember`, `ember-fast`, `ember-fast-compile`: ember's create_trainer + Evaluate."""

from __future__ import annotations

from typing import Any

from ignite.metrics import Accuracy, Loss

from benchmarks.throughput.job import Job
from ember.callbacks import Evaluate, LossPrinter
from ember.engine import Events
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
    trainer.add_event_handler(Events.EPOCH_COMPLETED, clock.train_done)
    trainer.add(Evaluate(evaluator, loaders["test"], fmt=SEED000_EVAL_FMT))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, clock.eval_done)
    trainer.run(loaders["train"], max_epochs=epochs)
    return float(evaluator.state.metrics["accuracy"])
