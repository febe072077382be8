"""Seed 000, PyTorch's "Optimizing Model Parameters" tutorial: FashionMNIST, a 784-512-512-10 MLP, plain SGD.

The seed's train_loop/test_loop become handlers: LossPrinter prints every 100 batches, Evaluate runs the
test loop after each epoch and prints the seed's "Test Error" block.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from ember.callbacks import Evaluate, LossPrinter
from ember.engine import Events
from ember.recipes.common import RunContext
from ember.recipes.formats import SEED000_EVAL_FMT
from ember.recipes.recipe import Recipe
from ember.run import finished


class NeuralNetwork(nn.Module):
    """The seed's model: flatten, then 784-512-ReLU-512-ReLU-10."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(28 * 28, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_relu_stack(self.flatten(x))


def train(args: argparse.Namespace, run: RunContext) -> int:
    train_dataloader = run.loader(train=True)
    test_dataloader = run.loader(train=False)
    model = run.model(NeuralNetwork())
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)

    trainer = run.trainer(model, optimizer, loss_fn)
    trainer.on(Events.EPOCH_STARTED)(lambda e: print(f"Epoch {e.state.epoch}\n-------------------------------"))
    trainer.add(LossPrinter(every=100))
    trainer.add(Evaluate(run.evaluator(model, loss_fn), test_dataloader, fmt=SEED000_EVAL_FMT))
    trainer.on(Events.COMPLETED)(lambda e: finished(e.state) and print("Done!"))  # not after a stop
    return run.fit(trainer, train_dataloader, {"model": model, "optimizer": optimizer})


RECIPE = Recipe(
    name="fashion-mnist-mlp",
    program="000",
    dataset="fashion-mnist",
    summary="FashionMNIST, 784-512-512-10 MLP, SGD lr 1e-3, batch 64, 10 epochs",
    train=train,
    epochs=10,
    batch_size=64,
    lr=1e-3,
)
