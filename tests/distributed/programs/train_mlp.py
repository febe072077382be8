"""A tiny DDP training run with ember, for test_distributed.py: run it under torchrun or as one process.

It trains a small MLP on in-memory data sharded by DistributedSampler, evaluates ignite metrics on an
uneven shard per rank, optionally saves (rank 0) or resumes (every rank) a Checkpoint, and has rank 0
alone write result.json.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as torch_dist
from ignite.metrics import Accuracy, Loss
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from ember import distributed as dist
from ember.callbacks import LossPrinter, TerminateOnNan
from ember.callbacks.checkpoint import Checkpoint
from ember.engine import Events
from ember.steps import create_evaluator, create_trainer

N_TRAIN, N_EVAL, N_FEATURES, N_CLASSES = 96, 50, 8, 3
EVAL_SPLIT = 30  # with 2 ranks, rank 0 evaluates samples [0, 30) and rank 1 [30, 50): uneven on purpose


def make_data() -> tuple[TensorDataset, torch.Tensor, torch.Tensor]:
    """Train set and eval tensors: labels from a random linear map plus noise, so accuracy is below 1."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(N_FEATURES, N_CLASSES, generator=g)
    x = torch.randn(N_TRAIN + N_EVAL, N_FEATURES, generator=g)
    y = (x @ w + 1.5 * torch.randn(N_TRAIN + N_EVAL, N_CLASSES, generator=g)).argmax(1)
    return TensorDataset(x[:N_TRAIN], y[:N_TRAIN]), x[N_TRAIN:], y[N_TRAIN:]


def eval_shard(x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's part of the eval set, in batches of 10 (rank 0 gets 3 batches, rank 1 gets 2)."""
    if dist.world_size() > 1:
        bounds = [0, EVAL_SPLIT, N_EVAL]
        mine = slice(bounds[dist.rank()], bounds[dist.rank() + 1])
        x, y = x[mine], y[mine]
    return [(x[i : i + 10], y[i : i + 10]) for i in range(0, len(x), 10)]


def flat_weights(model: nn.Module) -> list[float]:
    """All parameters, flattened, as float64 Python numbers (exact in JSON)."""
    return torch.cat([p.detach().double().flatten() for p in model.parameters()]).tolist()


def gather(obj: object) -> list[object]:
    """obj from every rank, in rank order."""
    if not dist.is_enabled():
        return [obj]
    out: list[object] = [None] * dist.world_size()
    torch_dist.all_gather_object(out, obj)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batch-size", type=int, required=True, help="per process")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--save-after", type=int, default=None, help="checkpoint to OUT/ckpt/ after this epoch")
    p.add_argument("--resume", type=Path, default=None, help="a checkpoint folder to continue from")
    p.add_argument("--nan-at", type=int, default=None, help="make the loss NaN at this iteration (on --nan-rank)")
    p.add_argument("--nan-rank", type=int, default=1)
    args = p.parse_args()

    distributed = dist.init()
    assert distributed == (int(os.environ.get("WORLD_SIZE", "1")) > 1)
    assert dist.init() == distributed, "init() must be idempotent"
    dist.silence_non_main()
    print(f"stdout of rank {dist.rank()}")
    torch.manual_seed(1 + dist.rank())  # different init per rank: DDP must broadcast rank 0's weights
    train_set, x_eval, y_eval = make_data()
    net = nn.Sequential(nn.Linear(N_FEATURES, 16), nn.Tanh(), nn.Linear(16, N_CLASSES))
    model = dist.wrap_model(net, "cpu")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    sampler = DistributedSampler(train_set, dist.world_size(), dist.rank(), shuffle=True, seed=7)
    loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler)
    def loss_fn(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(pred, y)
        if trainer.state.iteration == args.nan_at and dist.rank() == args.nan_rank:
            return loss * float("nan")
        return loss

    trainer = create_trainer(model, optimizer, loss_fn, "cpu")
    trainer.add(TerminateOnNan(check_every=3))
    trainer.add(LossPrinter(every=2))  # seed 000's "loss: ...  [current/size]" lines, on rank 0
    objects = {"model": model, "optimizer": optimizer, "trainer": trainer}
    if args.save_after is not None:
        ckpt = Checkpoint(objects, args.out / "ckpt", every_epochs=args.save_after, save_on_completed=False)
        trainer.add(ckpt)
    if args.resume is not None:
        torch.rand(7)  # moves this process's generator, which the checkpoint must set back
        Checkpoint.load(Checkpoint.latest(args.resume), objects)
    iterations_run = 0

    @trainer.on(Events.ITERATION_COMPLETED)
    def count() -> None:
        nonlocal iterations_run
        iterations_run += 1

    trainer.run(loader, max_epochs=args.epochs)
    draw_after_training = torch.rand(1).item()  # where this rank's torch generator stands

    evaluator = create_evaluator(model, {"accuracy": Accuracy(), "loss": Loss(F.cross_entropy)}, "cpu")
    metrics = evaluator.run(eval_shard(x_eval, y_eval)).metrics
    assert dist.unwrap(model) is net, "unwrap must return the module inside DDP"
    with torch.no_grad():
        logits = net(x_eval)
    correct = (logits.argmax(1) == y_eval).double()
    shard = slice(0, EVAL_SPLIT) if dist.rank() == 0 else slice(EVAL_SPLIT, N_EVAL)
    report = {
        "weights": flat_weights(net),
        "accuracy": metrics["accuracy"],
        "loss": metrics["loss"],
        "sampler_epoch": sampler.epoch,
        "iteration": trainer.state.iteration,
        "draw_after_training": draw_after_training,
        "terminated_on_nan": trainer.state.terminated_on_nan,
        "shard_accuracy": correct[shard].mean().item(),
        "all_reduce_sum": dist.all_reduce_sum(dist.rank() + 1),
        "broadcast": dist.broadcast_object(f"from rank {dist.rank()}"),
    }
    reports = gather(report)
    dist.barrier()
    if dist.is_main():
        (args.out / f"rank{dist.rank()}.txt").write_text("written by the main process\n")
        result = {
            "world_size": dist.world_size(),
            "iteration": trainer.state.iteration,
        "draw_after_training": draw_after_training,
            "iterations_run": iterations_run,
            "epoch": trainer.state.epoch,
            "whole_set_accuracy": correct.mean().item(),
            "whole_set_loss": F.cross_entropy(logits, y_eval).item(),
            "ranks": reports,
        }
        (args.out / "result.json").write_text(json.dumps(result))
    dist.cleanup()
    assert not dist.is_enabled() and dist.world_size() == 1


if __name__ == "__main__":
    main()
