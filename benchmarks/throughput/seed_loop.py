"""The plain PyTorch loops: each seed program's training loop and seed 000's test loop, as written.

Row `seed` runs them on the seed's DataLoader, row `seed-inmemory` on ember's DeviceLoader batches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.throughput.job import Job


def seed_test_loop(dataloader: Any, model: nn.Module, loss_fn: Callable, device: torch.device) -> float:
    """Seed 000's test_loop: `.item()` per batch for the loss and the correct count; returns the accuracy."""
    size = len(dataloader.dataset)
    num_batches = len(dataloader)
    test_loss, correct = 0, 0
    with torch.no_grad():
        for X, y in dataloader:
            X, y = X.to(device), y.to(device)
            pred = model(X)
            test_loss += loss_fn(pred, y).item()
            correct += (pred.argmax(1) == y).type(torch.float).sum().item()
    test_loss /= num_batches
    correct /= size
    print(f"Test Error: \n Accuracy: {(100 * correct):>0.1f}%, Avg loss: {test_loss:>8f} \n")
    return correct


def seed004_epoch(network: nn.Module, train_loader: Any, optimizer: torch.optim.Optimizer,
                  device: torch.device | None = None) -> tuple[float, int]:
    """One epoch of seed 004's loop as deeplizard writes it: the `.item()` sums of the loss and the correct count.

    tests/recipes/test_recipes.py checks the fashion-mnist-cnn recipe's printed figures against it.
    """
    total_loss, total_correct = 0, 0
    for batch in train_loader:
        images, labels = batch
        images, labels = images.to(device), labels.to(device)
        preds = network(images)
        loss = F.cross_entropy(preds, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total_loss += loss.item()
        total_correct += preds.argmax(dim=1).eq(labels).sum().item()
    return total_loss, total_correct


def run_seed(job: Job) -> float:
    """The seed's loop as written (seed 000, 001 or 004), with its test loop after each epoch."""
    cfg, lr, epochs, loaders, device, clock = job.cfg, job.lr, job.epochs, job.loaders, job.device, job.clock
    dataloader, test_dataloader = loaders["train"], loaders["test"]
    model = cfg.model().to(device)
    loss_fn = cfg.loss_fn
    optimizer = cfg.optimizer(model.parameters(), lr)
    size = len(dataloader.dataset)
    accuracy = 0.0
    for epoch in range(epochs):
        clock.start()
        if cfg.seed == "000":
            for batch, (X, y) in enumerate(dataloader):
                X, y = X.to(device), y.to(device)
                pred = model(X)
                loss = loss_fn(pred, y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if batch % 100 == 0:
                    loss, current = loss.item(), batch * len(X)
                    print(f"loss: {loss:>7f}  [{current:>5d}/{size:>5d}]")
        elif cfg.seed == "001":
            running_loss = 0.0
            for i, (inputs, labels) in enumerate(dataloader):
                inputs, labels = inputs.to(device), labels.to(device)
                optimizer.zero_grad()
                outputs = model(inputs)
                loss = loss_fn(outputs, labels)
                loss.backward()
                optimizer.step()
                running_loss += loss.item()
                if i % 100 == 99:
                    print(f"Epoch [{epoch + 1}/{epochs}], Step [{i + 1}/{len(dataloader)}], "
                          f"Loss: {running_loss / 100:.4f}")
                    running_loss = 0.0
        else:
            total_loss, total_correct = seed004_epoch(model, dataloader, optimizer, device)
            print("epoch:", epoch, "total_correct:", total_correct, "loss:", total_loss)
        clock.train_done()
        accuracy = seed_test_loop(test_dataloader, model, loss_fn, device)
        clock.eval_done()
    return accuracy
