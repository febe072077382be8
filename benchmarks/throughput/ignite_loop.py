"""Row `ignite`: ignite's create_supervised_trainer and create_supervised_evaluator with the seed's logging."""

from __future__ import annotations

from typing import Any

from ignite.engine import Events as IgniteEvents
from ignite.engine import create_supervised_evaluator, create_supervised_trainer
from ignite.metrics import Accuracy, Loss

from benchmarks.throughput.job import Job, SeedLog
from ember.recipes.formats import SEED000_EVAL_FMT


def run_ignite(job: Job) -> float:
    """ignite's create_supervised_trainer (its default `.item()` output) and create_supervised_evaluator."""
    cfg, lr, epochs, loaders, device, clock = job.cfg, job.lr, job.epochs, job.loaders, job.device, job.clock
    model = cfg.model().to(device)
    optimizer = cfg.optimizer(model.parameters(), lr)
    trainer = create_supervised_trainer(
        model, optimizer, cfg.loss_fn, device=device,
        output_transform=lambda x, y, y_pred, loss: (loss.item(), y_pred.detach(), y),
    )
    metrics = {"accuracy": Accuracy(), "loss": Loss(cfg.loss_fn)}
    evaluator = create_supervised_evaluator(model, metrics, device=device)
    log = SeedLog(cfg.seed, len(loaders["train"].dataset), len(loaders["train"]), epochs)

    @trainer.on(IgniteEvents.ITERATION_COMPLETED)
    def log_step(engine: Any) -> None:
        loss, pred, y = engine.state.output
        log.step((engine.state.iteration - 1) % engine.state.epoch_length, loss, pred, y)

    @trainer.on(IgniteEvents.EPOCH_COMPLETED)
    def evaluate(engine: Any) -> None:
        log.epoch_end()
        clock.train_done()
        metrics = evaluator.run(loaders["test"]).metrics
        print(SEED000_EVAL_FMT.format(accuracy_pct=100 * metrics["accuracy"], loss=metrics["loss"]))
        clock.eval_done()

    trainer.add_event_handler(IgniteEvents.EPOCH_STARTED, clock.start)
    trainer.add_event_handler(IgniteEvents.EPOCH_STARTED, log.epoch_start)
    trainer.run(loaders["train"], max_epochs=epochs)
    return float(evaluator.state.metrics["accuracy"])
