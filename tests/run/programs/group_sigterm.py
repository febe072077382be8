"""N runs of `ember.fit` in a row, each over a DataLoader with 2 workers, each stopped by a SIGTERM that the
parent sends to the whole process group (as scancel does) while the main process waits for a batch.

    python group_sigterm.py BASE N [--plain]

starts run k when a line arrives on stdin, prints `READY k` at its iteration 3, then
`RESULT k <exit status> <stop iteration> <checkpoint step>`.
Batches come from `make_loader(path="dataloader")`, as in `ember train --data-path dataloader`, or with
--plain from a DataLoader the user built (workers not told to ignore the signal).
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

import ember
from ember.callbacks import Checkpoint
from ember.data import make_loader
from ember.engine import Events
from ember.steps import create_trainer


class SlowImages(Dataset):
    """28x28 images that take 2 ms each to read, so that the main process mostly waits in next()."""

    transform = None

    def __init__(self, n: int) -> None:
        self.images = np.random.default_rng(0).integers(0, 255, (n, 28, 28), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        time.sleep(0.002)
        image = self.images[i]
        return (self.transform(image) if self.transform else torch.from_numpy(image).float()), int(i % 10)


base, runs, plain = Path(sys.argv[1]), int(sys.argv[2]), "--plain" in sys.argv
for k in range(runs):
    sys.stdin.readline()
    torch.manual_seed(0)
    data = SlowImages(96)
    loader = DataLoader(data, batch_size=8, num_workers=2) if plain else make_loader(
        data, 8, path="dataloader", num_workers=2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    trainer = create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), F.cross_entropy)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=3), lambda e, k=k: print(f"READY {k}", flush=True))
    result = ember.fit(trainer, loader, max_epochs=20, objects={"model": model}, checkpoint_dir=base / f"run{k}",
                       progress=False)
    latest = Checkpoint.latest(base / f"run{k}")
    step = torch.load(latest, weights_only=True)["step"] if latest else None
    print(f"RESULT {k} {result.exit_status} {trainer.state.iteration} {step}", flush=True)
    del loader, trainer, model
    gc.collect()  # shut the old loader's workers down here, not in the next run's forked workers
