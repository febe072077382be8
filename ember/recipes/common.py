"""What every recipe shares: its flags, device and data set-up, and `fit`, which adds logging,
checkpoints, resume and graceful stop around a trainer so each recipe reads like its seed."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ember import distributed as dist
from ember.callbacks import TensorBoardLogger
from ember.callbacks.correct_counter import CorrectCounter
from ember.callbacks.eval_pictures import EvalPictures
from ember.callbacks.graceful_stop import GracefulStop
from ember.engine import Engine, create_evaluator, create_trainer
from ember.engine.fastdata import make_loader
from ember.recipes.data import load_dataset
from ember.run import MAY_DIFFER, RunError, fit, latest_run_dir, make_run_dir, saved_run


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
    p.add_argument("--logdir", default=None,
                   help="TensorBoard folder (default: runs/<recipe>/<run-id>, paired with the checkpoint folder)")
    p.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", help="do not log to TensorBoard")
    p.add_argument("--log-every", type=_positive_int, default=100, metavar="ITERS",
                   help="iterations between TensorBoard's per-iteration points (loss, LR, gradient norm)")
    p.add_argument("--images", action=argparse.BooleanOptionalAction, default=True,
                   help="TensorBoard pictures of each evaluation: confusion matrix, misclassified test images")
    p.add_argument("--histograms", action="store_true", help="TensorBoard histograms of weights and gradients")
    p.add_argument("--graph", action="store_true", help="the model graph in TensorBoard")
    p.add_argument("--checkpoint-dir", default=None,
                   help="the run's checkpoint folder (default: checkpoints/<recipe>/<run-id>, a new one per run)")
    p.add_argument("--checkpoint-every", type=_positive_int, default=None, metavar="ITERS",
                   help="also checkpoint every ITERS iterations (default: at the end of each epoch)")
    p.add_argument("--keep-last", type=_positive_int, default=2, help="checkpoints to keep")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN",
                   help="continue the newest run of this recipe (or the run in folder RUN, or in --checkpoint-dir) "
                        "with its flags; a flag given again must match, except --epochs and others that only say "
                        "how long, where or how visibly it runs")
    p.add_argument("--compile", nargs="?", const=True, default=False, metavar="MODE",
                   help="torch.compile the model (optionally with a mode, e.g. max-autotune-no-cudagraphs)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="capture the whole training step as one CUDA graph (CUDA only; static batch shapes)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format (CNNs)")
    p.add_argument("--show-plan", action="store_true",
                   help="print the handlers each event runs, in order, with their filters, before training")
    p.add_argument("--max-iterations", type=_positive_int, default=None, metavar="N",
                   help="stop after iteration N (counted over the whole run), with a checkpoint; e.g. to try a set-up")
    p.set_defaults(run_id=None)
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
        if args.cuda_graph and self.device.type != "cuda":
            raise RecipeError(f"--cuda-graph captures the step on a CUDA GPU, but this run trains on "
                              f"{self.device.type}: drop --cuda-graph, or pass --device cuda on a machine with a GPU")
        if args.cuda_graph and dist.world_size() > 1:
            raise RecipeError("--cuda-graph cannot capture a DistributedDataParallel step: drop it under torchrun")
        _place_run(recipe, args)
        seed_everything(args.seed)
        self.classes: list[str] | None = None
        self.correct: CorrectCounter | None = None

    def dataset(self, train: bool, name: str | None = None) -> Any:
        """The recipe's dataset (or `name`), found as the data flags say; its class names are kept for pictures."""
        dataset = load_dataset(name or self.recipe.dataset, train=train, root=self.args.data_root)
        self.classes = self.classes or getattr(dataset, "classes", None)
        return dataset

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
        if self.args.tensorboard:
            loss_fn = self.correct = CorrectCounter(loss_fn)  # the training accuracy, counted on the device
        return create_trainer(model, optimizer, loss_fn, self.device, amp=self.args.amp, **kwargs)

    def evaluator(self, model: nn.Module, loss_fn: Callable, metrics: dict[str, Any] | None = None) -> Engine:
        """An evaluator computing `metrics` (default: accuracy and average loss with ignite's metrics) on the
        device, and with TensorBoard and --images the pictures of each evaluation."""
        from ignite.metrics import Accuracy, Loss

        if metrics is None:
            metrics = {"accuracy": Accuracy(device=self.device), "loss": Loss(loss_fn, device=self.device)}
        evaluator = create_evaluator(model, metrics, self.device, amp=self.args.amp)
        if self.args.tensorboard and self.args.images:
            evaluator.add(EvalPictures())
        return evaluator

    def fit(self, trainer: Engine, loader: Any, objects: dict[str, Any], *, progress: str = "epoch",
            output_transform: Callable[[Any], Any] | None = None) -> int:
        """`ember.fit` with the command line's flags; returns the exit status.

        `progress` is the bar's span ("epoch" or "run"); `output_transform` picks the loss out of the trainer's
        output for TensorBoard and the bar when the output is more than the loss tensor.
        """
        args = self.args
        trainer.state.seed = args.seed
        if dist.world_size() > 1:
            print(f"Distributed: {dist.world_size()} processes, global batch {args.batch_size * dist.world_size()}")
        try:
            result = fit(
                trainer, loader, max_epochs=args.epochs, objects=objects, checkpoint_dir=args.checkpoint_dir,
                resume=bool(args.resume), config=self.config(), may_differ=MAY_DIFFER, run_id=args.run_id,
                checkpoint_every=args.checkpoint_every, keep_last=args.keep_last,
                tensorboard=self._tensorboard(objects.get("model"), output_transform) if args.tensorboard else None,
                progress=args.progress, progress_per=progress, max_iterations=args.max_iterations,
                output_transform=output_transform, resume_hint="--resume", show_plan=args.show_plan,
            )
        except RunError as exc:
            if exc.setting == "tensorboard":
                raise RecipeError(f"{exc}; pass --logdir with a folder that can be created and written, or "
                                  "--no-tensorboard") from None
            raise RecipeError(str(exc)) from None
        return result.exit_status

    def config(self) -> dict[str, Any]:
        """Every flag of this run (recipe-specific ones included) and the recipe's name, for its checkpoints."""
        skip = {"resume", "run_id"}
        return {"recipe": self.recipe.name, **{k: v for k, v in vars(self.args).items() if k not in skip}}

    def _tensorboard(self, model: nn.Module | None, output_transform: Callable[[Any], Any] | None) -> TensorBoardLogger:
        """The TensorBoard logger of this run, as the TensorBoard flags say."""
        args = self.args
        try:
            return TensorBoardLogger(args.logdir, log_every=args.log_every, histograms_every=int(args.histograms),
                                     graph=args.graph, model=model, hparams=self._hparams(),
                                     output_transform=output_transform, correct=self.correct,
                                     class_names=self.classes)
        except OSError as exc:
            raise RecipeError(f"cannot write TensorBoard logs to {args.logdir}: {exc.strerror or exc}; pass --logdir "
                              "with a folder that can be created and written, or --no-tensorboard") from None

    def _hparams(self) -> dict[str, Any]:
        """Every flag that shapes the training (the recipe's own included), not those saying where to log."""
        flags = {k: v for k, v in vars(self.args).items() if k not in NOT_HPARAMS}
        return {"recipe": self.recipe.name, **{k: "none" if v is None else v for k, v in flags.items()}}


# Flags about where things go and how a run is watched, not about the training itself.
NOT_HPARAMS = frozenset({"data_root", "logdir", "tensorboard", "checkpoint_dir", "checkpoint_every", "keep_last",
                         "resume", "run_id", "progress", "show_plan", "max_iterations", "log_every", "images",
                         "histograms", "graph"})


@contextlib.contextmanager
def graceful_stop(trainer: Engine) -> Iterator[GracefulStop]:
    """`GracefulStop` attached to `trainer` and installed for the block (kept for scripts that used it)."""
    stop = GracefulStop()
    trainer.add(stop)
    with stop:
        yield stop


_UNSET = object()
# Flags a resumed run does not take from its checkpoints: they describe this invocation, not the run.
_NOT_ADOPTED = frozenset({"checkpoint_dir", "resume", "run_id", "progress", "show_plan", "max_iterations",
                          "device"})


def parse_flags(recipe: Recipe, argv: list[str]) -> argparse.Namespace:
    """The recipe's flags from `argv`; with --resume, the run's folder and its own flags.

    (A new run gets its folders `checkpoints/<recipe>/<run-id>` and `runs/<recipe>/<run-id>` from RunContext,
    once the process group is up.) `--resume` finds the run (its folder, --checkpoint-dir, or the newest run of
    the recipe), takes every flag not given on the command line from its checkpoints, applies a differing
    flag given again where that is honest (`MAY_DIFFER`: more --epochs, another --device...) and refuses any
    other in one line naming the flag and both values, before anything is built or trained.
    """
    parser = build_parser(recipe)
    given = parser.parse_args(argv, namespace=argparse.Namespace(**{a.dest: _UNSET for a in parser._actions}))
    explicit = {k for k, v in vars(given).items() if v is not _UNSET}
    args = parser.parse_args(argv)
    root = os.path.join("checkpoints", recipe.name)
    if args.resume:
        _adopt_saved_flags(recipe, parser, args, explicit, root)
    return args


def _place_run(recipe: Recipe, args: argparse.Namespace) -> None:
    """A new run's own folders (made by rank 0, the same on every rank), unless the flags name them."""
    if args.checkpoint_dir is None:
        root = os.path.join("checkpoints", recipe.name)
        args.checkpoint_dir, args.run_id = make_run_dir(root) if dist.is_main() else (None, None)
        args.checkpoint_dir, args.run_id = dist.broadcast_object((args.checkpoint_dir, args.run_id))
    if args.run_id is None:
        args.run_id = os.path.basename(os.path.normpath(args.checkpoint_dir))
    if args.logdir is None:
        args.logdir = os.path.join("runs", recipe.name, args.run_id)


def flag_of(parser: argparse.ArgumentParser, dest: str) -> str:
    """The command-line flag that sets `dest` (`--batch-size` for batch_size)."""
    for action in parser._actions:
        if action.dest == dest and action.option_strings:
            return max(action.option_strings, key=len)
    return f"--{dest.replace('_', '-')}"


def _shown(flag: str, value: Any) -> str:
    if value is None or value is False:
        return f"no {flag}"
    return flag if value is True else f"{flag} {value}"


def _adopt_saved_flags(recipe: Recipe, parser: argparse.ArgumentParser, args: argparse.Namespace,
                       explicit: set[str], root: str) -> None:
    if isinstance(args.resume, str):
        folder = os.path.dirname(args.resume) if os.path.isfile(args.resume) else args.resume
        if args.checkpoint_dir is not None and os.path.abspath(args.checkpoint_dir) != os.path.abspath(folder):
            raise RecipeError(f"--resume {args.resume} and --checkpoint-dir {args.checkpoint_dir} name two runs; "
                              "give one of them")
        if not os.path.isdir(folder):
            raise RecipeError(f"--resume {args.resume}: no such run folder; pass a folder under {root}, or --resume "
                              "alone for the newest run of this recipe")
        args.checkpoint_dir = folder
    elif args.checkpoint_dir is None:
        args.checkpoint_dir = latest_run_dir(root)
        if args.checkpoint_dir is None:
            print(f"No earlier run of {recipe.name} in {root}: starting a new run.")
            return
    saved = saved_run(args.checkpoint_dir)
    if saved is None:
        return
    config = saved["config"]
    if config.get("recipe", recipe.name) != recipe.name:
        raise RecipeError(f"--resume: {args.checkpoint_dir} holds a run of {config['recipe']}, not of {recipe.name}; "
                          f"resume it with `ember train {config['recipe']} --resume {args.checkpoint_dir}`")
    current = vars(args)
    for key, old in config.items():
        if key not in current or key in _NOT_ADOPTED:
            continue
        if key not in explicit:
            current[key] = old
        elif key not in MAY_DIFFER and _plain_value(current[key]) != old:
            flag = flag_of(parser, key)
            raise RecipeError(f"{_shown(flag, current[key])} differs from the run being resumed "
                              f"({args.checkpoint_dir}), which has {_shown(flag, old)}; drop {flag} to keep the "
                              "run's value, or start a new run without --resume")
    args.run_id = saved["run_id"]


def _plain_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
