"""Seed 002, "Adjusting the learning rate in PyTorch": MNIST, a 784-256-128-10 MLP, SGD, an LR scheduler.

The seed's epoch loop (train, validate, print the losses and the LR, then `scheduler.step(valid_loss)`)
becomes handlers: the training-loss sum is kept on the device, Evaluate validates after each epoch and fires
EVALUATED, on which the report is printed and then LRScheduler steps, in the seed's order. `--scheduler`
picks one of the four schedulers the article shows, with its parameters.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import SGD
from torch.optim.lr_scheduler import ExponentialLR, MultiStepLR, ReduceLROnPlateau, StepLR

from ember.callbacks import EvalEvents, Evaluate, LRScheduler
from ember.callbacks._output import resumes_mid_epoch
from ember.engine import Engine, Events
from ember.recipes.common import RunContext
from ember.recipes.recipe import Recipe

SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "plateau": lambda optimizer: ReduceLROnPlateau(optimizer, "min", patience=5),
    "step": lambda optimizer: StepLR(optimizer, step_size=10, gamma=0.1),
    "multistep": lambda optimizer: MultiStepLR(optimizer, milestones=[10, 30], gamma=0.1),
    "exponential": lambda optimizer: ExponentialLR(optimizer, gamma=0.1),
}
# The seed's validation-loss figure in the trainer's metrics (not "val/...": TensorBoard logs the mean there).
SEED_VALID_LOSS = "seed/valid_loss"


class Net(nn.Module):
    """The article's model: flatten, then 784-256-ReLU-128-ReLU-10 (its unused `lr`/`loss` attributes left out)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 256)
        self.fc2 = nn.Linear(256, 128)
        self.out = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_size = x.size(0)
        x = x.view(batch_size, -1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.out(x)


class SeedLoss:
    """The seed's loss figure: the sum over batches of `loss * data.size(0)`, divided by the number of batches.

    That is the mean loss per sample times the mean batch size (about 32 times the usual mean loss), which
    is what the seed prints and steps ReduceLROnPlateau with; it is reproduced as defined. The sum stays on
    the device in float64 (the seed sums Python floats) and is read once, by `compute`.
    """

    def __init__(self, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> None:
        self.loss_fn = loss_fn
        self.reset()

    def reset(self) -> None:
        """Start a new sum."""
        self.total: Any = 0.0
        self.batches = 0

    def add(self, loss: torch.Tensor, n: int) -> None:
        """Add one batch: its mean loss times its size, as the seed's `loss.item() * data.size(0)`."""
        self.total = loss.detach().double() * n + self.total
        self.batches += 1

    def update(self, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Add an evaluator batch `(y_pred, y)`."""
        y_pred, y = output
        self.add(self.loss_fn(y_pred, y), len(y))

    def compute(self) -> Any:
        """The figure: the sum divided by the number of batches (a device tensor)."""
        return self.total / max(self.batches, 1)


class TrainingSeedLoss(SeedLoss):
    """SeedLoss over a training epoch: restarted each epoch, one batch added per step, carried by checkpoints
    (`state_dict`), so that a run resumed mid-epoch prints the whole epoch's figure, as the straight run does."""

    def __init__(self) -> None:
        super().__init__()
        self._iteration = 0
        self._restored: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        """Restart the sum at each epoch's start and add every step's loss and batch size."""
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._step)

    def _epoch_started(self, engine: Engine) -> None:
        restored, self._restored = self._restored, None
        if restored is not None and resumes_mid_epoch(engine, restored["iteration"]):
            self.total, self.batches = restored["total"], restored["batches"]
        else:
            self.reset()

    def _step(self, engine: Engine) -> None:
        self.add(engine.state.output, len(engine.state.batch[1]))
        self._iteration = engine.state.iteration

    def state_dict(self) -> dict[str, Any]:
        """The sum so far in the epoch (read once: a checkpoint syncs anyway), its batches and last iteration."""
        return {"iteration": self._iteration, "total": float(self.total), "batches": self.batches}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Continue the saved sum when the run resumes at the iteration it was saved at (mid-epoch)."""
        self._restored = {"iteration": int(state_dict["iteration"]), "total": float(state_dict["total"]),
                          "batches": int(state_dict["batches"])}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The recipe's own flag: which of the article's schedulers to use."""
    p.add_argument("--scheduler", choices=list(SCHEDULERS), default="plateau",
                   help="plateau: ReduceLROnPlateau('min', patience=5) on the validation loss; step: StepLR(10, "
                        "0.1); multistep: MultiStepLR([10, 30], 0.1); exponential: ExponentialLR(0.1)")


def train(args: argparse.Namespace, run: RunContext) -> int:
    trainloader = run.loader(train=True)
    validloader = run.loader(train=False, shuffle=False)
    model = run.model(Net())
    optimizer = SGD(model.parameters(), lr=args.lr)
    loss = nn.CrossEntropyLoss()
    scheduler = SCHEDULERS[args.scheduler](optimizer)

    trainer = run.trainer(model, optimizer, loss)
    train_loss = trainer.add(TrainingSeedLoss())

    # TensorBoard gets the true mean losses (the trainer's and the evaluator's "loss"); the seed's figures
    # (SeedLoss) are printed, and the seed's validation figure steps ReduceLROnPlateau.
    valid_loss = SeedLoss(loss)
    evaluator = run.evaluator(model, loss)
    evaluator.on(Events.STARTED)(valid_loss.reset)
    evaluator.on(Events.ITERATION_COMPLETED)(lambda e: valid_loss.update(e.state.output))
    trainer.add(Evaluate(evaluator, validloader))

    @trainer.on(EvalEvents.EVALUATED)
    def report(engine: Any) -> None:
        curr_lr = optimizer.param_groups[0]["lr"]
        m = engine.state.metrics
        m[SEED_VALID_LOSS] = float(valid_loss.compute())
        # The seed's line, with its loss figures (see SeedLoss); its backslash-continued f-string also
        # printed the source's indentation after each tab, which is left out.
        print(f"Epoch {engine.state.epoch - 1}\t Training Loss: {float(train_loss.compute())}\t "
              f"Validation Loss:{m[SEED_VALID_LOSS]}\t LR:{curr_lr}")
        print(f"\t Validation Accuracy: {100 * m['val/accuracy']:.2f}%")

    monitor = SEED_VALID_LOSS if args.scheduler == "plateau" else None
    trainer.add(LRScheduler(scheduler, monitor=monitor, event=EvalEvents.EVALUATED))
    objects = {"model": model, "optimizer": optimizer, "scheduler": scheduler}
    return run.fit(trainer, trainloader, objects, progress="run")


RECIPE = Recipe(
    name="mnist-mlp-plateau",
    program="002",
    dataset="mnist",
    summary="MNIST, 784-256-128-10 MLP, SGD lr 0.1, batch 32, shuffled, ReduceLROnPlateau, 25 epochs",
    train=train,
    epochs=25,
    batch_size=32,
    lr=0.1,
    shuffle=True,
    add_arguments=add_arguments,
)
