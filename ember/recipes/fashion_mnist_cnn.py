"""Seed 004, deeplizard's "CNN training" (PyTorch series, part 21): FashionMNIST, a two-conv Network, Adam.

The seed's training loop sums `loss.item()` and `get_num_correct(preds, labels)` over an epoch's batches
and prints `epoch: 0 total_correct: 46512 loss: 343.97...`. Here the trainer's step also outputs the batch's
correct count, both sums stay on the device, and they are read once per epoch. Evaluate adds the test
accuracy.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn, optim

from ember.callbacks import Evaluate
from ember.callbacks._output import resumes_mid_epoch
from ember.engine import Engine, Events
from ember.engine import order as order_levels
from ember.recipes.common import RunContext
from ember.recipes.recipe import Recipe

EVAL_FMT = "test accuracy: {accuracy:.4f} test loss: {loss:.4f}"


class Network(nn.Module):
    """The seed's Network: conv 1→6 k5, conv 6→12 k5 (each with ReLU and maxpool 2), fc 192→120→60→10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels=1, out_channels=6, kernel_size=5)
        self.conv2 = nn.Conv2d(in_channels=6, out_channels=12, kernel_size=5)
        self.fc1 = nn.Linear(in_features=12 * 4 * 4, out_features=120)
        self.fc2 = nn.Linear(in_features=120, out_features=60)
        self.out = nn.Linear(in_features=60, out_features=10)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = F.max_pool2d(F.relu(self.conv1(t)), kernel_size=2, stride=2)
        t = F.max_pool2d(F.relu(self.conv2(t)), kernel_size=2, stride=2)
        t = t.reshape(-1, 12 * 4 * 4)
        t = F.relu(self.fc1(t))
        t = F.relu(self.fc2(t))
        return self.out(t)


def get_num_correct(preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The seed's count of right predictions, left on the device (the seed calls .item() on it)."""
    return preds.argmax(dim=1).eq(labels).sum()


def loss_and_correct(images: Any, labels: torch.Tensor, preds: torch.Tensor, loss: torch.Tensor) -> dict[str, Any]:
    """The trainer's output: the batch's loss and its number of correct predictions, both device tensors."""
    return {"loss": loss.detach(), "correct": get_num_correct(preds.detach(), labels)}


class EpochTotals:
    """Sums the epoch's batch losses and correct counts on the device and prints them as the seed does.

    Its sums are part of a checkpoint (`state_dict`): a run resumed mid-epoch prints the whole epoch's totals,
    what the straight run prints.
    """

    ember_order = order_levels.PROGRESS  # the seed prints its epoch line before it evaluates

    def __init__(self) -> None:
        self.total_loss: Any = 0.0
        self.total_correct: Any = 0
        self._iteration = 0
        self._restored: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        """Restart the sums each epoch, add every step's output, print at the epoch's end."""
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.report)

    def reset(self) -> None:
        """Zero both sums."""
        self.total_loss, self.total_correct = 0.0, 0

    def _epoch_started(self, engine: Engine) -> None:
        restored, self._restored = self._restored, None
        if restored is not None and resumes_mid_epoch(engine, restored["iteration"]):
            self.total_loss, self.total_correct = restored["total_loss"], restored["total_correct"]
        else:
            self.reset()

    def update(self, engine: Engine) -> None:
        """Add the step's loss and correct count, on the device."""
        output = engine.state.output
        self.total_loss = output["loss"].double() + self.total_loss  # float64 like the seed's Python sum
        self.total_correct = output["correct"] + self.total_correct
        self._iteration = engine.state.iteration

    def report(self, engine: Engine) -> None:
        """Read both sums (one sync each) and print the seed's line, with its 0-based epoch."""
        total_loss, total_correct = float(self.total_loss), int(self.total_correct)
        print("epoch:", engine.state.epoch - 1, "total_correct:", total_correct, "loss:", total_loss)

    def state_dict(self) -> dict[str, Any]:
        """The sums so far in the epoch (read once: a checkpoint syncs anyway) and the iteration they cover."""
        return {"iteration": self._iteration, "total_loss": float(self.total_loss),
                "total_correct": int(self.total_correct)}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Continue the saved sums when the run resumes at the iteration they were saved at (mid-epoch)."""
        self._restored = {"iteration": int(state_dict["iteration"]), "total_loss": float(state_dict["total_loss"]),
                          "total_correct": int(state_dict["total_correct"])}


def train(args: argparse.Namespace, run: RunContext) -> int:
    train_loader = run.loader(train=True)
    test_loader = run.loader(train=False)
    network = run.model(Network())
    optimizer = optim.Adam(network.parameters(), lr=args.lr)

    trainer = run.trainer(network, optimizer, F.cross_entropy, output_transform=loss_and_correct)
    trainer.add(EpochTotals())
    trainer.add(Evaluate(run.evaluator(network, F.cross_entropy), test_loader, fmt=EVAL_FMT))
    objects = {"model": network, "optimizer": optimizer}
    return run.fit(trainer, train_loader, objects, output_transform=lambda output: output["loss"])


RECIPE = Recipe(
    name="fashion-mnist-cnn",
    program="004",
    dataset="fashion-mnist",
    summary="FashionMNIST, 2-conv Network (6, 12 channels) + fc 192-120-60-10, Adam lr 0.01, batch 100, 5 epochs",
    train=train,
    epochs=5,
    batch_size=100,
    lr=0.01,
)
