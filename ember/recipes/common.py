"""What every recipe shares: `RunContext`, its device and data set-up and `fit`, which adds logging,
checkpoints, resume and graceful stop around a trainer so each recipe reads like its seed.

A recipe file imports `Recipe` and `RunContext` from here; the flags are `ember.recipes.flags`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ember import distributed as dist
from ember.callbacks import TensorBoardLogger
from ember.callbacks.correct_counter import CorrectCounter
from ember.callbacks.eval_pictures import EvalPictures
from ember.callbacks.tensorboard_logger import run_name
from ember.data import load_dataset, make_loader, release_workers
from ember.engine import Engine
from ember.recipes.flags import GLOBAL_BATCH, MAY_DIFFER, NOT_HPARAMS, NOT_SAVED
from ember.recipes.precision import slow_amp_warning
from ember.recipes.recipe import Recipe, RecipeError
from ember.run import RunError, RunFolder, fit, place
from ember.steps import create_evaluator, create_trainer

__all__ = ["NOT_HPARAMS", "Recipe", "RecipeError", "RunContext", "seed_everything", "select_device"]


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

    def __init__(self, recipe: Recipe, args: argparse.Namespace, run: RunFolder | None = None) -> None:
        """Set up the process group and device, then place the run: `run` (the folder --resume opened), else
        --checkpoint-dir, else a new folder `checkpoints/<recipe>/<run-id>`, locked for the run (`close`)."""
        self.recipe = recipe
        self.args = args
        self.run: RunFolder | None = None
        dist.init(backend="gloo" if args.device == "cpu" else None)
        dist.silence_non_main()
        self.device = select_device(args.device)
        # What the run actually uses where a flag leaves it to ember (--device auto; the recipe's own choices
        # made through trainer()), for the HParams table.
        self.resolved: dict[str, Any] = {"device": str(self.device)}
        self.given = dict(vars(args))  # the flags as given, before a recipe adjusts them (the run's name)
        if args.cuda_graph and self.device.type != "cuda":
            raise RecipeError(f"--cuda-graph captures the step on a CUDA GPU, but this run trains on "
                              f"{self.device.type}: drop --cuda-graph, or pass --device cuda on a machine with a GPU")
        if args.cuda_graph and dist.world_size() > 1:
            raise RecipeError("--cuda-graph cannot capture a DistributedDataParallel step: drop it under torchrun")
        slow = slow_amp_warning(args.amp, self.device)
        if slow and dist.is_main():
            print(slow, file=sys.stderr)
        try:
            self.run = place(run or args.checkpoint_dir, root=os.path.join("checkpoints", recipe.name))
        except RunError as exc:
            raise RecipeError(str(exc)) from None
        self.logdir = args.logdir or _paired_logdir(recipe.name, self.run)
        seed_everything(args.seed)
        self.classes: list[str] | None = None
        self.correct: CorrectCounter | None = None
        self._loaders: list[Any] = []

    def dataset(self, train: bool, name: str | None = None) -> Any:
        """The recipe's dataset (or `name`), found as the data flags say; its class names are kept for pictures."""
        dataset = load_dataset(name or self.recipe.dataset, train=train, root=self.args.data_root)
        self.classes = self.classes or getattr(dataset, "classes", None)
        return dataset

    def loader(self, train: bool, *, shuffle: bool | None = None, batch_size: int | None = None,
               normalize: tuple | None = None, resize: int | None = None, name: str | None = None) -> Any:
        """A loader over the train or test split, on the fast data path or the seed's DataLoader."""
        args = self.args
        loader = make_loader(
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
        self._loaders.append(loader)
        return loader

    def model(self, model: nn.Module, channels_last: bool | None = None) -> nn.Module:
        """Move the model to the device (in channels-last format with --channels-last) and wrap it for DDP
        or FSDP2 (--strategy) when distributed; the memory format comes first, so DDP's gradient buckets match
        it. FSDP2 shards only contiguous parameters, so under it the weights keep their format (the batches
        are still channels-last)."""
        model = model.to(self.device)
        sharding = self.args.strategy == "fsdp" and dist.world_size() > 1
        if (self.args.channels_last if channels_last is None else channels_last) and not sharding:
            model = model.to(memory_format=torch.channels_last)
        return dist.wrap_model(model, self.device, strategy=self.args.strategy,
                               mixed_precision=self.args.fsdp_precision)

    def trainer(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, **kwargs: Any) -> Engine:
        """`create_trainer` with the recipe's device, --amp, --compile, --cuda-graph and --channels-last.

        --compile compiles the training step's forward (around DDP, so that its gradient all-reduce overlaps
        the backward); evaluation runs the model as it is."""
        kwargs.setdefault("cuda_graph", self.args.cuda_graph)
        kwargs.setdefault("channels_last", self.args.channels_last)
        kwargs.setdefault("compile", self.args.compile)
        self.resolved.update({k: kwargs[k] for k in ("cuda_graph", "channels_last", "compile")})
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

    def fit(self, trainer: Engine, loader: Any, objects: dict[str, Any], *, progress: Literal["epoch", "run"] = "epoch",
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
                trainer, loader, max_epochs=args.epochs, objects=objects, checkpoint_dir=self.run,
                resume=bool(args.resume), config=self.config(), may_differ=MAY_DIFFER | {"batch_size"},
                checkpoint_every=args.checkpoint_every, keep_last=args.keep_last,
                async_checkpoint=args.async_checkpoint,
                tensorboard=self._tensorboard(objects.get("model"), output_transform) if args.tensorboard else None,
                progress=args.progress, progress_per=progress, max_iterations=args.max_iterations,
                output_transform=output_transform, resume_hint="--resume", show_plan=args.show_plan,
                sharded=args.strategy == "fsdp",
            )
        except RunError as exc:
            if exc.setting == "tensorboard":
                raise RecipeError(f"{exc}; pass --logdir with a folder that can be created and written, or "
                                  "--no-tensorboard") from None
            if exc.setting == "logdir":
                raise RecipeError(str(exc).replace(f"tensorboard={self.logdir!r}", f"--logdir {self.logdir}")
                                  + "; pass --logdir with a new folder, or --resume that run") from None
            raise RecipeError(str(exc)) from None
        return result.exit_status

    def close(self) -> None:
        """End the loaders' worker processes and let go of the run folder's lock; a folder made for a run that
        never saved is removed."""
        for loader in self._loaders:
            release_workers(loader)
        if self.run is not None and dist.is_main():
            self.run.close()

    def config(self) -> dict[str, Any]:
        """Every flag of this run (recipe-specific ones included), the recipe's name and the global batch (what
        must match on resume; the batch per process may change with the number of processes), for its
        checkpoints; the folders are the ones the run uses."""
        config = {k: v for k, v in vars(self.args).items() if k not in NOT_SAVED}
        if self.run is not None:
            config.update(checkpoint_dir=self.run.path, logdir=self.logdir)
        return {"recipe": self.recipe.name, **config, GLOBAL_BATCH: self.args.batch_size * dist.world_size()}

    def _tensorboard(self, model: nn.Module | None, output_transform: Callable[[Any], Any] | None) -> TensorBoardLogger:
        """The TensorBoard logger of this run, as the TensorBoard flags say."""
        args = self.args
        try:
            return TensorBoardLogger(self.logdir, log_every=args.log_every, histograms_every=int(args.histograms),
                                     graph=args.graph, model=model, hparams=self._hparams(), run_name=self._run_name(),
                                     output_transform=output_transform, correct=self.correct,
                                     class_names=self.classes)
        except OSError as exc:
            raise RecipeError(f"cannot write TensorBoard logs to {self.logdir}: {exc.strerror or exc}; pass --logdir "
                              "with a folder that can be created and written, or --no-tensorboard") from None

    def _hparams(self) -> dict[str, Any]:
        """Every flag that shapes the training (the recipe's own included), not those saying where to log, with
        the values the run used (`device` is the device trained on, not `auto`)."""
        flags = {k: v for k, v in vars(self.args).items() if k not in NOT_HPARAMS}
        flags.update((k, v) for k, v in self.resolved.items() if k in flags)
        return {"recipe": self.recipe.name, **{k: "none" if v is None else v for k, v in flags.items()}}

    def _run_name(self) -> str:
        """The run's name in the HParams table: the flags that differ from the recipe's defaults, its time."""
        from ember.recipes.flags import build_parser

        defaults = {k: v for k, v in vars(build_parser(self.recipe).parse_args([])).items() if k not in NOT_HPARAMS}
        return run_name(self.run.run_id, self.recipe.name, self.given, defaults)


def _paired_logdir(recipe: str, run: RunFolder) -> str:
    """The TensorBoard folder of a run: `runs/<recipe>/<run-id>` for a folder `checkpoints/<recipe>/<run-id>`;
    for a folder elsewhere, its name and a digest of its full path, so that `a/exp` and `b/exp` never share one."""
    default = os.path.join("checkpoints", recipe, run.run_id)
    if os.path.abspath(run.path) == os.path.abspath(default):
        return os.path.join("runs", recipe, run.run_id)
    digest = hashlib.sha256(os.path.abspath(run.path).encode()).hexdigest()[:8]
    return os.path.join("runs", recipe, f"{os.path.basename(os.path.normpath(run.path))}-{digest}")
