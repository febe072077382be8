"""Row `lightning`: a LightningModule fitted by lightning's Trainer, validating every epoch."""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.throughput.job import Job, SeedLog


def lightning_module() -> Any:
    """The `lightning.pytorch` package, or `pytorch_lightning`; ImportError when neither is installed."""
    try:
        import lightning.pytorch as pl
    except ImportError:
        import pytorch_lightning as pl
    return pl


def run_lightning(job: Job) -> float:
    """A LightningModule with the seed's logging, fitted by lightning's Trainer with validation each epoch."""
    cfg, lr, epochs, loaders, device, clock = job.cfg, job.lr, job.epochs, job.loaders, job.device, job.clock
    pl = lightning_module()
    log = SeedLog(cfg.seed, len(loaders["train"].dataset), len(loaders["train"]), epochs)

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = cfg.model()
            self.accuracy = 0.0

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            pred = self.model(x)
            loss = cfg.loss_fn(pred, y)
            log.step(batch_idx, loss, pred, y)
            return loss

        def on_validation_epoch_start(self) -> None:
            self.loss_sum: Any = 0.0
            self.correct: Any = 0
            self.count = 0

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            pred = self.model(x)
            self.loss_sum = cfg.loss_fn(pred, y).double() * len(y) + self.loss_sum
            self.correct = pred.argmax(1).eq(y).sum() + self.correct
            self.count += len(y)

        def on_validation_epoch_end(self) -> None:
            self.accuracy = int(self.correct) / self.count
            print(f"Test Error: \n Accuracy: {100 * self.accuracy:>0.1f}%, "
                  f"Avg loss: {float(self.loss_sum) / self.count:>8f} \n")

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return cfg.optimizer(self.parameters(), lr)

    class Timing(pl.Callback):
        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            clock.start()
            log.epoch_start()

        def on_validation_start(self, trainer: Any, module: Any) -> None:
            log.epoch_end()
            clock.train_done()

        def on_validation_end(self, trainer: Any, module: Any) -> None:
            clock.eval_done()

    module = Module()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                         enable_progress_bar=False, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[Timing()])
    trainer.fit(module, loaders["train"], loaders["test"])
    return module.accuracy
