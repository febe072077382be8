"""Seed 003, MindSpore's "Model training" tutorial: MNIST resized to 32×32, LeNet-5, Momentum.

`model.train(epochs, dataset_train, callbacks=[LossMonitor(learning_rate, 1875)])` becomes a trainer with
ThroughputMonitor printing MindSpore's two LossMonitor lines at the end of each epoch (losses summed on
the device, read once per epoch); Evaluate adds the test accuracy, as `model.eval` would.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from ember.callbacks import Evaluate, ThroughputMonitor
from ember.recipes.common import RunContext
from ember.recipes.formats import SEED003_FMT
from ember.recipes.recipe import Recipe

# mindvision's Mnist(resize=32): Resize(32), Rescale(1/255), Rescale(1/0.3081, -0.1307/0.3081), HWC2CHW,
# i.e. torchvision's Resize(32) + ToTensor() + Normalize((0.1307,), (0.3081,)).
RESIZE = 32
NORMALIZE = ((0.1307,), (0.3081,))
EVAL_FMT = "Eval result: {{'acc': {accuracy:.4f}, 'loss': {loss:.4f}}}"


class LeNet5(nn.Module):
    """mindvision's `lenet(num_classes=10)`: conv 1→6 k5 valid, ReLU, maxpool 2, conv 6→16 k5 valid, ReLU,
    maxpool 2, flatten, fc 400→120→84→10 with ReLU between."""

    def __init__(self, num_classes: int = 10, num_channel: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_channel, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.relu = nn.ReLU()
        self.max_pool2d = nn.MaxPool2d(kernel_size=2, stride=2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.max_pool2d(self.relu(self.conv1(x)))
        x = self.max_pool2d(self.relu(self.conv2(x)))
        x = self.flatten(x)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The recipe's own flag: the optimizer's momentum."""
    p.add_argument("--momentum", type=float, default=0.9, help="momentum of the SGD (MindSpore Momentum) optimizer")


def train(args: argparse.Namespace, run: RunContext) -> int:
    dataset_train = run.loader(train=True, resize=RESIZE, normalize=NORMALIZE)
    dataset_eval = run.loader(train=False, shuffle=False, resize=RESIZE, normalize=NORMALIZE)
    network = run.model(LeNet5(num_classes=10))
    # SoftmaxCrossEntropyWithLogits(sparse=True, reduction='mean') is CrossEntropyLoss; MindSpore's Momentum
    # (v = momentum * v + grad; w -= lr * v) is SGD with momentum and no dampening.
    net_loss = nn.CrossEntropyLoss()
    net_opt = torch.optim.SGD(network.parameters(), lr=args.lr, momentum=args.momentum)

    trainer = run.trainer(network, net_opt, net_loss)
    trainer.add(ThroughputMonitor(fmt=SEED003_FMT))
    trainer.add(Evaluate(run.evaluator(network, net_loss), dataset_eval, fmt=EVAL_FMT))
    return run.fit(trainer, dataset_train, {"model": network, "optimizer": net_opt})


RECIPE = Recipe(
    name="mnist-lenet",
    program="003",
    dataset="mnist",
    summary="MNIST resized to 32x32, LeNet-5, SGD momentum 0.9 lr 0.01, batch 32, shuffled, 10 epochs",
    train=train,
    epochs=10,
    batch_size=32,
    lr=1e-2,
    shuffle=True,
    add_arguments=add_arguments,
)
