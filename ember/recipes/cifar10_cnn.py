"""Seed 001, a training-loop tutorial: CIFAR-10, a small CNN, Adam.

The seed's loop (`running_loss += loss.item()`, print the mean every 100 steps) becomes LossPrinter with a
100-step window, summed on the device; Evaluate adds the test accuracy after each epoch.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn, optim

from ember.callbacks import Evaluate, LossPrinter
from ember.recipes.common import RunContext
from ember.recipes.formats import SEED001_FMT
from ember.recipes.recipe import Recipe

# transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) after ToTensor, as in the seed.
NORMALIZE = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
EVAL_FMT = "Epoch [{epoch}/{max_epochs}], Test Accuracy: {accuracy_pct:.2f}%, Test Loss: {loss:.4f}"


class SimpleCNN(nn.Module):
    """The seed's model: conv 3→6 k5, maxpool 2, conv 6→16 k5, maxpool 2, fc 400→120→84→10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)  # the seed's x.view(-1, 16 * 5 * 5), which fails on channels-last tensors
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def train(args: argparse.Namespace, run: RunContext) -> int:
    trainloader = run.loader(train=True, normalize=NORMALIZE)
    testloader = run.loader(train=False, shuffle=False, normalize=NORMALIZE)
    model = run.model(SimpleCNN())
    optimizer = optim.Adam(model.parameters(), lr=args.lr)
    criterion = nn.CrossEntropyLoss()

    trainer = run.trainer(model, optimizer, criterion)
    trainer.add(LossPrinter(every=100, fmt=SEED001_FMT, window=True))
    trainer.add(Evaluate(run.evaluator(model, criterion), testloader, fmt=EVAL_FMT))
    return run.fit(trainer, trainloader, {"model": model, "optimizer": optimizer})


RECIPE = Recipe(
    name="cifar10-cnn",
    program="001",
    dataset="cifar10",
    summary="CIFAR-10, SimpleCNN (2 conv + 3 fc), Adam lr 1e-3, batch 64, shuffled, 5 epochs",
    train=train,
    epochs=5,
    batch_size=64,
    lr=1e-3,
    shuffle=True,
)
