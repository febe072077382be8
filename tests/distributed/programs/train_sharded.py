"""A small ember.fit run under DDP or FSDP2 with sharded checkpoints, for test_sharded.py.

Run it under torchrun (or as Slurm would start it, or as one process). Rank 0 writes result.json: the full
weights and Adam state (gathered here for the test's comparison only), the iteration reached, how the run
ended and what it resumed from. Faults on request: a rank SIGKILLs itself at an iteration (on the first start
only, so a torchelastic restart gets past it), while committing a sharded save or in the background write of
one; a rank sends itself a signal. Background writes may be delayed, so that training changes the weights first.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import ember
from ember import distributed as dist
from ember.callbacks import Checkpoint
from ember.checkpoint import sharded
from ember.engine import Events
from ember.steps import create_trainer

N_TRAIN, N_FEATURES, N_CLASSES = 96, 8, 3


def make_data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(N_FEATURES, N_CLASSES, generator=g)
    x = torch.randn(N_TRAIN, N_FEATURES, generator=g)
    y = (x @ w + 1.5 * torch.randn(N_TRAIN, N_CLASSES, generator=g)).argmax(1)
    return TensorDataset(x, y)


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, list[float]]:
    """Every parameter and Adam state tensor, whole, by name (rank 0; {} elsewhere)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    net = dist.unwrap(model)
    weights = get_model_state_dict(net, options=options)
    optim = get_optimizer_state_dict(net, optimizer, options=options)
    out = {f"model.{k}": v.double().flatten().tolist() for k, v in weights.items()}
    for key, state in optim.get("state", {}).items():
        for name, value in state.items():
            out[f"optim.{key}.{name}"] = torch.as_tensor(value).double().flatten().tolist()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--strategy", choices=["ddp", "fsdp"], default="fsdp")
    p.add_argument("--bf16", action="store_true", help="FSDP2's mixed precision: bf16 compute, fp32 reductions")
    p.add_argument("--batch-size", type=int, required=True, help="per process")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--ckpt", default=None, help="the run's checkpoint folder (default: a new one under ./checkpoints)")
    p.add_argument("--checkpoint-every", type=int, default=4)
    p.add_argument("--keep-last", type=int, default=2)
    p.add_argument("--max-iterations", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--inspect", action="store_true", help="only load the newest checkpoint of --ckpt and report")
    p.add_argument("--kill-at", type=int, default=None, help="SIGKILL --fault-rank after this iteration (first start)")
    p.add_argument("--kill-in-commit", type=int, default=None, help="SIGKILL --fault-rank while saving this iteration")
    p.add_argument("--signal-at", type=int, default=None, help="send SIGUSR1 to --fault-rank after this iteration")
    p.add_argument("--fault-rank", type=int, default=1)
    p.add_argument("--async-save", action="store_true", help="save in the background (async_checkpoint=True)")
    p.add_argument("--write-delay", type=float, default=0.0, help="background writes start this late (seconds)")
    p.add_argument("--kill-in-write", type=int, default=None,
                   help="SIGKILL --fault-rank in the background write of this iteration's save")
    args = p.parse_args()

    dist.init(backend="gloo")
    torch.manual_seed(0)  # the same initial weights on every rank (FSDP2 shards each rank's own copy)
    net = nn.Sequential(nn.Linear(N_FEATURES, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, N_CLASSES))
    model = dist.wrap_model(net, "cpu", strategy=args.strategy, mixed_precision="bf16" if args.bf16 else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    train_set = make_data()
    sampler = DistributedSampler(train_set, dist.world_size(), dist.rank(), shuffle=True, seed=7)
    loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler,
                        generator=torch.Generator().manual_seed(1))
    trainer = create_trainer(model, optimizer, F.cross_entropy, "cpu")
    objects = {"model": model, "optimizer": optimizer}
    restarts = dist.elastic_restart_count()

    if args.kill_at is not None and restarts == 0:
        @trainer.on(Events.ITERATION_COMPLETED(once=args.kill_at))
        def _kill() -> None:
            if dist.rank() == args.fault_rank:
                os.kill(os.getpid(), signal.SIGKILL)

    if args.signal_at is not None:
        @trainer.on(Events.ITERATION_COMPLETED(once=args.signal_at))
        def _signal() -> None:
            if dist.rank() == args.fault_rank:
                os.kill(os.getpid(), signal.SIGUSR1)

    if args.kill_in_commit is not None:
        commit = sharded.commit

        def dying_commit(tmp: str, path: str, manifest: dict | None) -> None:
            if trainer.state.iteration == args.kill_in_commit and dist.rank() == args.fault_rank:
                os.kill(os.getpid(), signal.SIGKILL)
            commit(tmp, path, manifest)

        sharded.commit = dying_commit

    if args.write_delay or args.kill_in_write is not None:
        write_shards = sharded.write_shards

        def slow_or_dying_write(tmp: str, path: str, state: dict, group: object = None) -> None:
            time.sleep(args.write_delay)  # the step goes on meanwhile, changing the live weights
            if args.kill_in_write is not None and f"_{args.kill_in_write:09d}." in path \
                    and dist.rank() == args.fault_rank:
                os.kill(os.getpid(), signal.SIGKILL)
            write_shards(tmp, path, state, group)

        sharded.write_shards = slow_or_dying_write

    if args.inspect:
        trainer.state.epoch_length = len(loader)
        loaded = Checkpoint.resume_latest(args.ckpt, {**objects, "trainer": trainer})
        report = {"resumed_from": loaded, "exit_status": 0, "finished": False}
    else:
        result = ember.fit(trainer, loader, max_epochs=args.epochs, objects=objects, checkpoint_dir=args.ckpt,
                           sharded=args.strategy == "fsdp",
                           resume=args.resume, checkpoint_every=args.checkpoint_every, keep_last=args.keep_last,
                           progress=False, max_iterations=args.max_iterations, config={"seed": 0},
                           async_checkpoint=args.async_save)
        report = {"resumed_from": result.resumed_from, "exit_status": result.exit_status,
                  "finished": result.finished, "checkpoint_dir": result.checkpoint_dir, "run_id": result.run_id}
    state = full_state(model, optimizer)
    if dist.is_main():
        args.out.mkdir(parents=True, exist_ok=True)
        report.update(world_size=dist.world_size(), iteration=trainer.state.iteration, restarts=restarts,
                      sharded=dist.is_sharded(model), state=state)
        (args.out / "result.json").write_text(json.dumps(report))
    dist.cleanup()
    sys.exit(report["exit_status"])


if __name__ == "__main__":
    main()
