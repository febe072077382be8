"""What every recipe shares: its flags, device and data set-up, and `fit`, which adds logging,
checkpoints, resume and graceful stop around a trainer so each recipe reads like its seed."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ember import distributed as dist
from ember.callbacks import Checkpoint, ProgressBar, TensorBoardLogger, TerminateOnNan
from ember.engine import Engine, Events, create_evaluator, create_trainer
from ember.engine.fastdata import make_loader
from ember.recipes.data import load_dataset


class RecipeError(Exception):
    """A problem with a recipe's inputs that the command line reports in one line (exit status 1)."""


@dataclass(frozen=True)
class Recipe:
    """A recipe's name, the seed it reproduces and its default hyperparameters."""

    name: str
    seed_file: str
    dataset: str
    summary: str
    train: Callable[[argparse.Namespace, RunContext], int]
    epochs: int
    batch_size: int
    lr: float
    seed: int = 0
    shuffle: bool = False
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    extra_defaults: dict[str, Any] = field(default_factory=dict)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


SEED_RANGE = (-(2**63), 2**63 - 1)  # what torch.manual_seed takes as a signed 64-bit number


def _seed(text: str) -> int:
    value = int(text)
    if not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise argparse.ArgumentTypeError(f"must be an integer from {SEED_RANGE[0]} to {SEED_RANGE[1]}, got {text}")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only where it says something: not None/False, not a switch, not already stated."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.nargs == 0 or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser(recipe: Recipe, prog: str = "ember train") -> argparse.ArgumentParser:
    """The recipe's command-line flags, with its defaults shown in --help."""
    p = argparse.ArgumentParser(
        prog=f"{prog} {recipe.name}",
        usage="%(prog)s [flags]  (--help lists the flags and their defaults)",
        description=f"{recipe.summary} (seed {recipe.seed_file})",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--epochs", type=_positive_int, default=recipe.epochs, help="epochs to train")
    p.add_argument("--batch-size", type=_positive_int, default=recipe.batch_size, help="batch size per process")
    p.add_argument("--lr", type=_positive_float, default=recipe.lr, help="learning rate")
    p.add_argument("--seed", type=_seed, default=recipe.seed, help="random seed (model init, shuffling)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to train")
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="mixed precision (autocast)")
    p.add_argument("--data-root", default=None, help="folder holding the dataset files (else $EMBER_DATA)")
    p.add_argument("--data-path", choices=["fast", "dataloader"], default="fast",
                   help="fast: whole dataset on the device, batched there; dataloader: the seed's DataLoader")
    p.add_argument("--num-workers", type=_non_negative_int, default=0, help="DataLoader workers (dataloader path only)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="tqdm progress bar (default: only when stdout is a terminal)")
    p.add_argument("--logdir", default=None, help="TensorBoard folder (default: runs/<recipe>/<timestamp>)")
    p.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", help="do not log to TensorBoard")
    p.add_argument("--checkpoint-dir", default=None, help="checkpoint folder (default: checkpoints/<recipe>)")
    p.add_argument("--checkpoint-every", type=_positive_int, default=None, metavar="ITERS",
                   help="also checkpoint every ITERS iterations (default: at the end of each epoch)")
    p.add_argument("--keep-last", type=_positive_int, default=2, help="checkpoints to keep")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --checkpoint-dir")
    p.add_argument("--compile", nargs="?", const=True, default=False, metavar="MODE",
                   help="torch.compile the model (optionally with a mode, e.g. max-autotune-no-cudagraphs)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="capture the whole training step as one CUDA graph (CUDA only; static batch shapes)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format (CNNs)")
    p.add_argument("--max-iterations", type=_positive_int, default=None, help=argparse.SUPPRESS)
    if recipe.add_arguments is not None:
        recipe.add_arguments(p)
    return p


def select_device(choice: str) -> torch.device:
    """'auto' picks CUDA when available; 'cuda' without a GPU is an error that says so."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise RecipeError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and dist.world_size() > 1:
        return torch.device("cuda", dist.local_rank())
    return torch.device(choice)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) so runs repeat."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class RunContext:
    """The set-up a recipe asks for: device, data loaders, model placement, trainer and evaluator."""

    def __init__(self, recipe: Recipe, args: argparse.Namespace) -> None:
        self.recipe = recipe
        self.args = args
        dist.init(backend="gloo" if args.device == "cpu" else None)
        dist.silence_non_main()
        self.device = select_device(args.device)
        seed_everything(args.seed)
        self.stamp = time.strftime("%Y%m%d-%H%M%S")

    def dataset(self, train: bool, name: str | None = None) -> Any:
        """The recipe's dataset (or `name`), found as the data flags say."""
        return load_dataset(name or self.recipe.dataset, train=train, root=self.args.data_root)

    def loader(self, train: bool, *, shuffle: bool | None = None, batch_size: int | None = None,
               normalize: tuple | None = None, resize: int | None = None, name: str | None = None) -> Any:
        """A loader over the train or test split, on the fast data path or the seed's DataLoader."""
        args = self.args
        return make_loader(
            self.dataset(train, name),
            batch_size=batch_size or args.batch_size,
            shuffle=self.recipe.shuffle if shuffle is None else shuffle,
            seed=args.seed,
            device=self.device,
            path=args.data_path,
            normalize=normalize,
            resize=resize,
            num_workers=args.num_workers,
            num_replicas=dist.world_size() if train else 1,
            rank=dist.rank() if train else 0,
        )

    def model(self, model: nn.Module, channels_last: bool | None = None) -> nn.Module:
        """Move the model to the device (in channels-last format with --channels-last) and wrap it for DDP
        when distributed; the memory format comes first, so DDP's gradient buckets match it."""
        model = model.to(self.device)
        if self.args.channels_last if channels_last is None else channels_last:
            model = model.to(memory_format=torch.channels_last)
        return dist.wrap_model(model, self.device)

    def trainer(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, **kwargs: Any) -> Engine:
        """`create_trainer` with the recipe's device, --amp, --compile, --cuda-graph and --channels-last.

        --compile compiles the training step's forward (around DDP, so that its gradient all-reduce overlaps
        the backward); evaluation runs the model as it is."""
        kwargs.setdefault("cuda_graph", self.args.cuda_graph)
        kwargs.setdefault("channels_last", self.args.channels_last)
        kwargs.setdefault("compile", self.args.compile)
        return create_trainer(model, optimizer, loss_fn, self.device, amp=self.args.amp, **kwargs)

    def evaluator(self, model: nn.Module, loss_fn: Callable) -> Engine:
        """An evaluator computing accuracy and average loss with ignite's metrics on the device."""
        from ignite.metrics import Accuracy, Loss

        metrics = {"accuracy": Accuracy(device=self.device), "loss": Loss(loss_fn, device=self.device)}
        return create_evaluator(model, metrics, self.device, amp=self.args.amp)

    def fit(self, trainer: Engine, loader: Any, objects: dict[str, Any], *, progress: str = "epoch",
            output_transform: Callable[[Any], Any] | None = None) -> int:
        """Run the trainer with TensorBoard, checkpoints, --resume and graceful stop; return the exit status.

        `progress` is the bar's span ("epoch" or "run"); `output_transform` picks the loss out of the trainer's
        output for TensorBoard and the bar when the output is more than the loss tensor.
        """
        args, name = self.args, self.recipe.name
        objects = {**objects, "trainer": trainer}
        trainer.state.seed = args.seed
        ckpt_dir = args.checkpoint_dir or os.path.join("checkpoints", name)
        resumed = self._resume(trainer, ckpt_dir, objects) if args.resume else False
        if resumed and trainer.state.epoch_length not in (None, len(loader)):
            raise RecipeError(
                f"the checkpoint in {ckpt_dir} has {trainer.state.epoch_length} iterations per epoch but this run has "
                f"{len(loader)}: resume with the same --batch-size per process and the same number of processes"
            )
        if resumed and trainer.state.max_epochs is not None and trainer.state.is_done():
            if args.epochs <= trainer.state.max_epochs:
                print(f"Nothing to do: the run in {ckpt_dir} already finished {trainer.state.max_epochs} epochs.")
                return 0
        nan_guard = trainer.add(TerminateOnNan())
        trainer.add(Checkpoint(objects, ckpt_dir, every_epochs=1, every_iterations=args.checkpoint_every,
                               keep_last=args.keep_last, save_on_exception=True))
        if args.tensorboard:
            logdir = args.logdir or os.path.join("runs", name, self.stamp)
            try:
                trainer.add(TensorBoardLogger(logdir, hparams=self._hparams(), output_transform=output_transform))
            except OSError as exc:
                raise RecipeError(f"cannot write TensorBoard logs to {logdir}: {exc.strerror or exc}; pass --logdir "
                                  "with a folder that can be created and written, or --no-tensorboard") from None
        trainer.add(ProgressBar(per=progress, enabled=args.progress, output_transform=output_transform))
        if dist.world_size() > 1:
            print(f"Distributed: {dist.world_size()} processes, global batch {args.batch_size * dist.world_size()}")
        if args.max_iterations is not None:
            trainer.add_event_handler(Events.ITERATION_COMPLETED(once=args.max_iterations), lambda e: e.terminate())
        with graceful_stop(trainer) as stop:
            trainer.run(loader, max_epochs=args.epochs)
        if stop.signum is not None:
            print(f"Stopped by {signal.Signals(stop.signum).name} at epoch {trainer.state.epoch}, iteration "
                  f"{trainer.state.iteration}; checkpoint saved in {ckpt_dir} (continue with --resume).")
            return 128 + stop.signum
        if getattr(nan_guard, "stopped_at", None) is not None or getattr(trainer.state, "terminated_on_nan", None):
            return 1
        return 0

    def _resume(self, trainer: Engine, ckpt_dir: str, objects: dict[str, Any]) -> bool:
        path = Checkpoint.resume_latest(ckpt_dir, objects) if os.path.isdir(ckpt_dir) else None
        if path is None:
            print(f"No checkpoint in {ckpt_dir}: starting from the beginning.")
            return False
        if trainer.state.seed is not None and trainer.state.seed != self.args.seed:
            raise RecipeError(f"{path} was trained with --seed {trainer.state.seed}; pass --seed "
                              f"{trainer.state.seed} to resume it, or use another --checkpoint-dir")
        print(f"Resumed from {path} at epoch {trainer.state.epoch}, iteration {trainer.state.iteration}.")
        return True

    def _hparams(self) -> dict[str, Any]:
        a = self.args
        return {"recipe": self.recipe.name, "epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr,
                "seed": a.seed, "amp": a.amp or "none", "data_path": a.data_path}


STOP_CHECK_EVERY = 20  # iterations between the ranks' collective "was anyone signalled?" check


class _Stop:
    signum: int | None = None


def _ignore_signal(signum: int, frame: Any) -> None:
    """A Python-level no-op handler (SIG_IGN would make a pending SIGCHLD print a race-condition warning)."""


@contextlib.contextmanager
def graceful_stop(trainer: Engine) -> Iterator[_Stop]:
    """SIGTERM/SIGINT finish the current iteration and let COMPLETED handlers checkpoint and close logs;
    a second SIGINT aborts at once.

    A stop signal sent to the whole process group (scancel, a preempting scheduler) also kills the DataLoader's
    workers; from then on, to the end of the process, torch's SIGCHLD handler (which would raise on their deaths,
    even at exit) is replaced by a no-op, and the run fetches no further batch (outside torchrun, whose ranks
    fetch until they agree to stop). DataLoaders still notice dead workers by themselves, within seconds.

    The engine clears `state.output` after fetching a batch and sets it when the step returns. A signal that
    lands before the step's end (in an ITERATION_STARTED handler, or in the step) only takes effect at
    ITERATION_COMPLETED: terminating earlier would checkpoint the new iteration count with the old weights."""
    stop = _Stop()

    def handler(signum: int, frame: Any) -> None:
        if stop.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.signum = signum
        signal.signal(signal.SIGCHLD, _ignore_signal)
        print(f"\n{signal.Signals(signum).name} received: finishing the current iteration and saving a checkpoint "
              "(Ctrl-C again to abort now)", file=sys.stderr)
        if trainer.state.output is not None and not distributed:
            trainer.terminate()

    def stop_if_asked(engine: Engine) -> None:
        if stop.signum is not None:
            engine.terminate()

    def agree_to_stop(engine: Engine) -> None:
        if dist.all_reduce_sum(int(stop.signum is not None)) > 0:
            engine.terminate()

    # Under torchrun all ranks must stop on the same iteration, or the next collective call hangs.
    distributed = dist.world_size() > 1
    event = Events.ITERATION_COMPLETED(every=STOP_CHECK_EVERY) if distributed else Events.ITERATION_COMPLETED
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    deferred = trainer.add_event_handler(event, agree_to_stop if distributed else stop_if_asked)
    for s in previous:
        signal.signal(s, handler)
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        deferred.remove()
