"""CorrectCounter: the training accuracy counted on the device, inside the loss function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class CorrectCounter:
    """A loss function wrapper that counts the batch's right predictions on the device (no host read).

    `create_trainer(model, optimizer, CorrectCounter(loss_fn))` trains as with `loss_fn`; for class scores
    (N x C) and integer labels (N) it also adds `argmax == label` to a device counter, which
    TensorBoardLogger(correct=counter) reads once per epoch for the training accuracy. The counter is
    updated in place, so a training step captured as a CUDA graph keeps counting when replayed.
    """

    def __init__(self, loss_fn: Callable[[Any, Any], torch.Tensor]) -> None:
        self.loss_fn = loss_fn
        self.count: torch.Tensor | None = None

    def __call__(self, y_pred: Any, y: Any) -> torch.Tensor:
        loss = self.loss_fn(y_pred, y)
        if isinstance(y_pred, torch.Tensor) and y_pred.ndim == 2 and isinstance(y, torch.Tensor) and y.ndim == 1 \
                and not y.is_floating_point():
            hits = (y_pred.detach().argmax(dim=1) == y).sum()
            if self.count is None:
                self.count = torch.zeros((), dtype=torch.int64, device=hits.device)
            self.count.add_(hits)
        return loss

    def take(self) -> torch.Tensor | None:
        """The count so far (a device tensor) and a reset to zero; None before any classification batch."""
        if self.count is None:
            return None
        value = self.count.clone()
        self.count.zero_()
        return value
