"""A user's own training script: its model, its DataLoader, `ember.fit` -- nothing of `ember train`.

    python user_script.py FOLDER [--epochs N] [--pause-at K [--stuck]] [--pause-in-last-epoch-end] [--nan-at K]

--pause-at K waits after iteration K (its checkpoint written) until a stop is asked for (--stuck: regardless);
--pause-in-last-epoch-end does so in an EPOCH_COMPLETED handler of the last epoch (where an evaluation runs);
--nan-at K feeds NaN inputs from iteration K on. Prints `PAUSE K` when pausing, exits with fit's exit status.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import ember
from ember.engine import Events
from ember.steps import create_trainer

parser = argparse.ArgumentParser()
parser.add_argument("folder")
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--lr", type=float, default=0.1)
parser.add_argument("--pause-at", type=int, default=None)
parser.add_argument("--stuck", action="store_true")
parser.add_argument("--pause-in-last-epoch-end", action="store_true")
parser.add_argument("--nan-at", type=int, default=None)
parser.add_argument("--async-checkpoint", action="store_true")
args = parser.parse_args()

torch.manual_seed(0)
data = TensorDataset(torch.randn(48, 6), torch.randint(0, 3, (48,)))
# 6 iterations an epoch; its own generator, so that iter() does not draw from the RNG that Dropout uses.
loader = DataLoader(data, batch_size=8, generator=torch.Generator().manual_seed(0))
model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
nan_from = args.nan_at


def step_inputs(batch):
    x, y = batch
    return (x * float("nan"), y) if nan_from is not None and trainer.state.iteration >= nan_from else (x, y)


trainer = create_trainer(model, optimizer, F.cross_entropy)
trainer.add_event_handler(Events.GET_BATCH_COMPLETED, lambda e: setattr(e.state, "batch", step_inputs(e.state.batch)))


def pause(engine) -> None:
    print(f"PAUSE {engine.state.iteration}", flush=True)
    deadline = time.monotonic() + 600  # the test ends it sooner
    while (args.stuck or engine.state.stop_reason is None) and time.monotonic() < deadline:
        time.sleep(0.01)


if args.pause_at is not None:
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=args.pause_at), pause)
if args.pause_in_last_epoch_end:
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=args.epochs), pause)

result = ember.fit(trainer, loader, max_epochs=args.epochs, objects={"model": model, "optimizer": optimizer},
                   checkpoint_dir=args.folder, resume=True, config={"lr": args.lr}, progress=False,
                   async_checkpoint=args.async_checkpoint)
print(f"RESULT {result.exit_status} finished={result.finished} reason={result.stop_reason}", flush=True)
raise SystemExit(result.exit_status)
