"""Training and evaluation throughput of a recipe's set-up: the seed's own loop, ignite, Lightning and ember.

Every loop trains the same model (same initial weights), optimizer, batch size and samples, and evaluates
on the test split after each epoch. Repeats are interleaved (the order rotates each repeat); the table
gives medians with min..max. Rows:
  seed              the seed program's loop as written (DataLoader + ToTensor, `.item()` where the seed
                    has it; seed 000's test_loop for evaluation)
  ignite            ignite's create_supervised_trainer/evaluator (Accuracy, Loss) on the same DataLoader
  lightning         a LightningModule and lightning's Trainer on the same DataLoader
  ember-dataloader  ember's create_trainer + Evaluate on the same DataLoader (isolates the engine)
  seed-inmemory     the seed's loop on ember's DeviceLoader batches: the floor, no engine, no per-sample work
  ember             ember with its defaults: fast data path (DeviceLoader), no per-step syncs
  ember-fast        bf16 autocast, channels_last for CNNs, and on CUDA the whole step captured as a CUDA graph
                    (on CPU only where the CPU computes bf16 natively, e.g. AVX512-BF16 or AMX)
  ember-fast-compile  (CUDA) the same plus torch.compile(mode="max-autotune-no-cudagraphs")
Run: python benchmarks/throughput.py --device cpu --recipe fashion-mnist-mlp [--epochs 1] [--repeats 3]
     [--warmup-epochs 0] [--limit-samples N] [--loops seed,ember] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Events as IgniteEvents
from ignite.engine import create_supervised_evaluator, create_supervised_trainer
from ignite.metrics import Accuracy, Loss
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import VisionDataset

from ember.callbacks import Evaluate, LossPrinter
from ember.engine import Events, create_evaluator, create_trainer
from ember.engine.fastdata import make_loader, torchvision_transform
from ember.recipes import RECIPES, cifar10_cnn, fashion_mnist_cnn, fashion_mnist_mlp
from ember.recipes.data import DataNotFoundError, load_dataset
from ember.recipes.formats import SEED000_EVAL_FMT, SEED001_FMT

LOOPS = ("seed", "ignite", "lightning", "ember-dataloader", "seed-inmemory", "ember", "ember-fast",
         "ember-fast-compile")
CUDA_ONLY = ("ember-fast-compile",)


@dataclass(frozen=True)
class Config:
    """What a recipe trains, as its seed program sets it up."""

    recipe: str
    seed: str
    model: Callable[[], nn.Module]
    optimizer: Callable[[Any, float], torch.optim.Optimizer]
    loss_fn: Callable[[Any, Any], torch.Tensor]
    normalize: tuple | None
    num_workers: int
    cnn: bool




def sgd(params: Any, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr)


def adam(params: Any, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr)


CONFIGS = {
    "fashion-mnist-mlp": Config("fashion-mnist-mlp", "000", fashion_mnist_mlp.NeuralNetwork, sgd,
                                nn.CrossEntropyLoss(), None, 0, False),
    "fashion-mnist-cnn": Config("fashion-mnist-cnn", "004", fashion_mnist_cnn.Network, adam, F.cross_entropy,
                                None, 0, True),
    "cifar10-cnn": Config("cifar10-cnn", "001", cifar10_cnn.SimpleCNN, adam, nn.CrossEntropyLoss(),
                          cifar10_cnn.NORMALIZE, 2, True),
}


class GeneratedCIFAR10(VisionDataset):
    """Images of CIFAR-10's shape and format (uint8 N×32×32×3 `.data`, int `.targets`), read like CIFAR10.

    Each class has a fixed random template blended with per-image noise, so accuracy still moves.
    """

    def __init__(self, n: int, seed: int, transform: Any = None) -> None:
        super().__init__(root="", transform=transform)
        templates = np.random.default_rng(12345).integers(0, 256, size=(10, 32, 32, 3), dtype=np.uint16)
        rng = np.random.default_rng(seed)
        labels = rng.permutation(np.arange(n) % 10)
        self.data = np.empty((n, 32, 32, 3), dtype=np.uint8)
        for start in range(0, n, 5000):
            part = labels[start:start + 5000]
            noise = rng.integers(0, 256, size=(len(part), 32, 32, 3), dtype=np.uint16)
            self.data[start:start + 5000] = (7 * templates[part] + 3 * noise) // 10
        self.targets = labels.tolist()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        image = Image.fromarray(self.data[index])
        return (self.transform(image) if self.transform is not None else image), self.targets[index]


def load_splits(cfg: Config, data_root: str | None, limit: int | None) -> tuple[Any, Any, str]:
    """Raw (transform=None) train and test sets, cut to `limit` samples if given, and where they came from."""
    dataset = RECIPES[cfg.recipe].dataset
    try:
        train = load_dataset(dataset, True, root=data_root, download=False)
        test = load_dataset(dataset, False, root=data_root, download=False)
        origin = f"{dataset} files"
    except DataNotFoundError:
        if dataset != "cifar10":
            raise
        train, test = GeneratedCIFAR10(50_000, 0), GeneratedCIFAR10(10_000, 1)
        origin = "generated data of CIFAR-10's shape (the real CIFAR-10 files are absent)"
    if limit is not None:
        train = Subset(train, range(min(limit, len(train))))
        test = Subset(test, range(min(limit, len(test))))
    return train, test, origin


def with_transform(dataset: Any, transform: Any) -> Any:
    """The same samples read through `transform` (the seed's ToTensor pipeline)."""
    if isinstance(dataset, Subset):
        return Subset(with_transform(dataset.dataset, transform), dataset.indices)
    copy = object.__new__(type(dataset))
    copy.__dict__.update(dataset.__dict__)
    copy.transform = transform
    if hasattr(copy, "transforms") and hasattr(dataset, "target_transform"):
        from torchvision.datasets.vision import StandardTransform

        copy.transforms = StandardTransform(transform, dataset.target_transform)
    return copy


@dataclass
class Job:
    """One timed run: the set-up, its learning rate and epochs, the loaders, the device and the clock."""

    cfg: Config
    lr: float
    epochs: int
    loaders: dict[str, Any]
    device: torch.device
    clock: Clock


class Clock:
    """Per-epoch training and evaluation seconds; on CUDA each reading waits for the device first."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.train_s: list[float] = []
        self.eval_s: list[float] = []
        self._t = 0.0

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def start(self, *_: Any) -> None:
        self._t = self.now()

    def train_done(self, *_: Any) -> None:
        t = self.now()
        self.train_s.append(t - self._t)
        self._t = t

    def eval_done(self, *_: Any) -> None:
        t = self.now()
        self.eval_s.append(t - self._t)
        self._t = t


class OtherLoad:
    """CPU used by other processes while a run goes on, as a share of all CPUs (Linux /proc/stat; else None).

    The machine's busy time minus this process's own (threads and DataLoader workers included): a busy
    neighbour slows every loop, above all those whose 2-thread kernels wait on a descheduled thread.
    """

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # all but idle and iowait
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        return busy / os.sysconf("SC_CLK_TCK"), own, time.perf_counter()

    def share(self) -> float | None:
        """Other processes' CPU seconds per wall second per CPU since construction, 0..1."""
        end = self._read()
        if self._start is None or end is None or end[2] <= self._start[2]:
            return None
        other = (end[0] - self._start[0]) - (end[1] - self._start[1])
        return min(max(other / ((end[2] - self._start[2]) * (os.cpu_count() or 1)), 0.0), 1.0)


class SeedLog:
    """The seed's per-batch logging, with `.item()`/`float()` exactly where the seed reads a value."""

    def __init__(self, seed: str, size: int, steps: int, epochs: int) -> None:
        self.seed, self.size, self.steps, self.epochs = seed, size, steps, epochs
        self.epoch = 0
        self.running = 0.0
        self.correct = 0

    def epoch_start(self, *_: Any) -> None:
        self.running, self.correct = 0.0, 0

    def step(self, i: int, loss: Any, pred: torch.Tensor, y: torch.Tensor) -> None:
        if self.seed == "000":
            if i % 100 == 0:
                print(f"loss: {float(loss):>7f}  [{i * len(y):>5d}/{self.size:>5d}]")
        elif self.seed == "001":
            self.running += float(loss)
            if i % 100 == 99:
                print(f"Epoch [{self.epoch + 1}/{self.epochs}], Step [{i + 1}/{self.steps}], "
                      f"Loss: {self.running / 100:.4f}")
                self.running = 0.0
        else:
            self.running += float(loss)
            self.correct += pred.argmax(dim=1).eq(y).sum().item()

    def epoch_end(self, *_: Any) -> None:
        if self.seed == "004":
            print("epoch:", self.epoch, "total_correct:", self.correct, "loss:", self.running)
        self.epoch += 1


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
            total_loss, total_correct = 0, 0
            for batch in dataloader:
                images, labels = batch
                images, labels = images.to(device), labels.to(device)
                preds = model(images)
                loss = F.cross_entropy(preds, labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total_loss += loss.item()
                total_correct += preds.argmax(dim=1).eq(labels).sum().item()
            print("epoch:", epoch, "total_correct:", total_correct, "loss:", total_loss)
        clock.train_done()
        accuracy = seed_test_loop(test_dataloader, model, loss_fn, device)
        clock.eval_done()
    return accuracy


def run_ignite(job: Job) -> float:
    """ignite's create_supervised_trainer (its default `.item()` output) and create_supervised_evaluator."""
    cfg, lr, epochs, loaders, device, clock = job.cfg, job.lr, job.epochs, job.loaders, job.device, job.clock
    model = cfg.model().to(device)
    optimizer = cfg.optimizer(model.parameters(), lr)
    trainer = create_supervised_trainer(
        model, optimizer, cfg.loss_fn, device=device,
        output_transform=lambda x, y, y_pred, loss: (loss.item(), y_pred.detach(), y),
    )
    metrics = {"accuracy": Accuracy(), "loss": Loss(cfg.loss_fn)}
    evaluator = create_supervised_evaluator(model, metrics, device=device)
    log = SeedLog(cfg.seed, len(loaders["train"].dataset), len(loaders["train"]), epochs)

    @trainer.on(IgniteEvents.ITERATION_COMPLETED)
    def log_step(engine: Any) -> None:
        loss, pred, y = engine.state.output
        log.step((engine.state.iteration - 1) % engine.state.epoch_length, loss, pred, y)

    @trainer.on(IgniteEvents.EPOCH_COMPLETED)
    def evaluate(engine: Any) -> None:
        log.epoch_end()
        clock.train_done()
        metrics = evaluator.run(loaders["test"]).metrics
        print(SEED000_EVAL_FMT.format(accuracy_pct=100 * metrics["accuracy"], loss=metrics["loss"]))
        clock.eval_done()

    trainer.add_event_handler(IgniteEvents.EPOCH_STARTED, clock.start)
    trainer.add_event_handler(IgniteEvents.EPOCH_STARTED, log.epoch_start)
    trainer.run(loaders["train"], max_epochs=epochs)
    return float(evaluator.state.metrics["accuracy"])


def lightning_module() -> Any:
    """The `lightning.pytorch` package, or `pytorch_lightning`; ImportError when neither is installed."""
    try:
        import lightning.pytorch as pl
    except ImportError:
        import pytorch_lightning as pl
    return pl


def run_lightning(job: Job) -> float:
    """A LightningModule with the seed's logging, fitted by lightning's Trainer with validation each epoch."""
    cfg, lr, epochs, loaders, device, clock = job.cfg, job.lr, job.epochs, job.loaders, job.device, job.clock
    pl = lightning_module()
    log = SeedLog(cfg.seed, len(loaders["train"].dataset), len(loaders["train"]), epochs)

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = cfg.model()
            self.accuracy = 0.0

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            pred = self.model(x)
            loss = cfg.loss_fn(pred, y)
            log.step(batch_idx, loss, pred, y)
            return loss

        def on_validation_epoch_start(self) -> None:
            self.loss_sum: Any = 0.0
            self.correct: Any = 0
            self.count = 0

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            pred = self.model(x)
            self.loss_sum = cfg.loss_fn(pred, y).double() * len(y) + self.loss_sum
            self.correct = pred.argmax(1).eq(y).sum() + self.correct
            self.count += len(y)

        def on_validation_epoch_end(self) -> None:
            self.accuracy = int(self.correct) / self.count
            print(f"Test Error: \n Accuracy: {100 * self.accuracy:>0.1f}%, "
                  f"Avg loss: {float(self.loss_sum) / self.count:>8f} \n")

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return cfg.optimizer(self.parameters(), lr)

    class Timing(pl.Callback):
        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            clock.start()
            log.epoch_start()

        def on_validation_start(self, trainer: Any, module: Any) -> None:
            log.epoch_end()
            clock.train_done()

        def on_validation_end(self, trainer: Any, module: Any) -> None:
            clock.eval_done()

    module = Module()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                         enable_progress_bar=False, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[Timing()])
    trainer.fit(module, loaders["train"], loaders["test"])
    return module.accuracy


def run_ember(job: Job, **fast: Any) -> float:
    """ember's create_trainer + Evaluate with the recipe's logging handlers, on the loaders given."""
    cfg, lr, epochs, loaders, device, clock = job.cfg, job.lr, job.epochs, job.loaders, job.device, job.clock
    model = cfg.model().to(device)
    optimizer = cfg.optimizer(model.parameters(), lr)
    amp = fast.get("amp")
    output_transform = fashion_mnist_cnn.loss_and_correct if cfg.seed == "004" else None
    trainer = create_trainer(model, optimizer, cfg.loss_fn, device, output_transform=output_transform, **fast)
    if cfg.seed == "000":
        trainer.add(LossPrinter(every=100))
    elif cfg.seed == "001":
        trainer.add(LossPrinter(every=100, fmt=SEED001_FMT, window=True))
    else:
        trainer.add(fashion_mnist_cnn.EpochTotals())
    metrics = {"accuracy": Accuracy(device=device), "loss": Loss(cfg.loss_fn, device=device)}
    evaluator = create_evaluator(model, metrics, device, amp=amp)
    trainer.add_event_handler(Events.EPOCH_STARTED, clock.start)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, clock.train_done)
    trainer.add(Evaluate(evaluator, loaders["test"], fmt=SEED000_EVAL_FMT))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, clock.eval_done)
    trainer.run(loaders["train"], max_epochs=epochs)
    return float(evaluator.state.metrics["accuracy"])


def make_loaders(cfg: Config, batch_size: int, shuffle: bool, train: Any, test: Any, device: torch.device,
                 num_workers: int) -> dict[str, dict[str, Any]]:
    """The seed's DataLoaders (for seed, ignite, lightning, ember-dataloader) and ember's DeviceLoaders."""
    transform = torchvision_transform(cfg.normalize)
    seed = {
        "train": DataLoader(with_transform(train, transform), batch_size=batch_size, shuffle=shuffle,
                            num_workers=num_workers),
        "test": DataLoader(with_transform(test, transform), batch_size=batch_size, num_workers=num_workers),
    }
    fast = {
        "train": make_loader(train, batch_size, shuffle=shuffle, device=device, normalize=cfg.normalize),
        "test": make_loader(test, batch_size, device=device, normalize=cfg.normalize),
    }
    return {"dataloader": seed, "fast": fast}


def runners(cfg: Config) -> dict[str, tuple[str, Callable[[Job], float]]]:
    """Each loop's data path and run function."""

    def fast(job: Job) -> dict[str, Any]:
        return {"amp": "bf16", "cuda_graph": job.device.type == "cuda", "channels_last": cfg.cnn}

    def ember_fast(job: Job) -> float:
        return run_ember(job, **fast(job))

    def ember_fast_compile(job: Job) -> float:
        return run_ember(job, **fast(job), compile="max-autotune-no-cudagraphs")

    return {
        "seed": ("dataloader", run_seed),
        "ignite": ("dataloader", run_ignite),
        "lightning": ("dataloader", run_lightning),
        "ember-dataloader": ("dataloader", run_ember),
        "seed-inmemory": ("fast", run_seed),
        "ember": ("fast", run_ember),
        "ember-fast": ("fast", ember_fast),
        "ember-fast-compile": ("fast", ember_fast_compile),
    }


def timed_run(run: Callable[[Job], float], job: Job) -> tuple[float, float, float | None]:
    """One run of a loop: its wall seconds, final accuracy and the other processes' CPU share meanwhile."""
    torch.manual_seed(0)
    t0, load = time.perf_counter(), OtherLoad()
    with contextlib.redirect_stdout(io.StringIO()), _quiet():
        accuracy = run(job)
    return time.perf_counter() - t0, accuracy, load.share()


def native_bf16_cpu() -> bool:
    """Whether oneDNN runs bf16 matrix products natively on this CPU (else bf16 autocast only slows it down)."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run the selected loops `repeats` times, interleaved; summarise samples/s, epoch time and accuracy."""
    cfg = CONFIGS[args.recipe]
    recipe = RECIPES[args.recipe]
    device = torch.device(args.device)
    batch_size = args.batch_size or recipe.batch_size
    train, test, origin = load_splits(cfg, args.data_root, args.limit_samples)
    num_workers = cfg.num_workers if args.num_workers is None else args.num_workers
    loaders = make_loaders(cfg, batch_size, recipe.shuffle, train, test, device, num_workers)
    table = runners(cfg)
    if args.loops is None:
        selected = [name for name in LOOPS if device.type == "cuda" or name not in CUDA_ONLY]
    else:
        selected = [name for name in LOOPS if name in args.loops]
    skipped: dict[str, str] = {}
    if device.type != "cuda":
        skipped.update({name: "needs --device cuda" for name in CUDA_ONLY if name in selected})
        if "ember-fast" in selected and not native_bf16_cpu():
            skipped["ember-fast"] = "this CPU has no native bf16 arithmetic (AVX512-BF16 or AMX)"
    if "lightning" in selected:
        try:
            lightning_module()
        except ImportError as err:
            skipped["lightning"] = f"lightning is not installed ({err}); `make bench` installs it"
    for name, reason in skipped.items():
        print(f"skipping {name}: {reason}", file=sys.stderr)
    active = [name for name in selected if name not in skipped]
    timed = slice(args.warmup_epochs, None)
    results = {name: {k: [] for k in ("train", "eval", "epoch", "acc", "other", "reruns")} for name in active}
    for r in range(args.repeats):
        order = active[r % len(active):] + active[:r % len(active)]
        for name in order:
            res = results[name]
            path, run = table[name]
            for attempt in range(args.retries + 1):
                clock = Clock(device)
                job = Job(cfg, recipe.lr, args.epochs, loaders[path], device, clock)
                seconds, accuracy, other = timed_run(run, job)
                busy = other is not None and 100 * other > args.busy_above
                share = "?" if other is None else f"{100 * other:.0f}%"
                again = " (busy: run again)" if busy and attempt < args.retries else ""
                print(f"repeat {r + 1}/{args.repeats} {name}: {seconds:.1f} s, acc. {100 * accuracy:.2f}%, "
                      f"other processes {share} of the CPUs{again}", file=sys.stderr)
                if not busy or attempt == args.retries:
                    break
                res["reruns"].append(1)
            train_s, eval_s = sum(clock.train_s[timed]), sum(clock.eval_s[timed])
            counted = len(clock.train_s[timed])
            res["train"].append(len(train) * counted / train_s)
            res["eval"].append(len(test) * counted / eval_s)
            res["epoch"].append((train_s + eval_s) / counted)
            res["acc"].append(100 * accuracy)
            if other is not None:
                res["other"].append(100 * other)
    loops: dict[str, Any] = {}
    for name in active:
        res = results[name]
        loops[name] = {"train_samples_per_s": stats(res["train"]), "eval_samples_per_s": stats(res["eval"]),
                       "epoch_s": stats(res["epoch"]), "test_accuracy_pct": stats(res["acc"]),
                       "other_processes_cpu_pct": stats(res["other"]) if res["other"] else None,
                       "reruns_when_busy": len(res["reruns"])}
    if "seed" in loops:
        base = loops["seed"]["train_samples_per_s"]["median"]
        for row in loops.values():
            row["train_ratio_to_seed"] = row["train_samples_per_s"]["median"] / base
    return {
        "recipe": args.recipe, "seed_program": cfg.seed, "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "machine": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "data": origin, "train_samples": len(train), "test_samples": len(test), "batch_size": batch_size,
        "epochs": args.epochs, "warmup_epochs": args.warmup_epochs, "repeats": args.repeats,
        "num_workers": num_workers, "busy_above_pct": args.busy_above, "retries": args.retries,
        "loops": loops, "skipped": skipped,
    }


@contextlib.contextmanager
def _quiet() -> Any:
    """Silence frameworks' warnings and log lines during a timed run (their stdout is captured anyway)."""
    names = ("lightning.pytorch", "pytorch_lightning", "lightning.fabric", "lightning_fabric")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def render(report: dict[str, Any]) -> str:
    """The markdown table of a report."""
    lines = [
        f"## {report['recipe']} (seed {report['seed_program']}) on {report['device']} "
        f"({report['device_name']})",
        "",
        f"{report['train_samples']} training and {report['test_samples']} test samples ({report['data']}), "
        f"batch {report['batch_size']}, {report['epochs']} epoch(s) per run "
        f"({report['warmup_epochs']} untimed), "
        f"{report['repeats']} interleaved repeat(s), medians (min..max); torch {report['torch']}, "
        f"{report['torch_threads']} threads, {report['date']}",
        "",
        "| loop | train samples/s | eval samples/s | epoch wall (s) | test accuracy (%) | train × seed "
        "| other load (%) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in report["loops"].items():
        t, e, w = row["train_samples_per_s"], row["eval_samples_per_s"], row["epoch_s"]
        accuracy, ratio = row["test_accuracy_pct"], row.get("train_ratio_to_seed")
        other = row["other_processes_cpu_pct"]
        lines.append(
            f"| {name} | {t['median']:,.0f} ({t['min']:,.0f}..{t['max']:,.0f}) | {e['median']:,.0f} "
            f"({e['min']:,.0f}..{e['max']:,.0f}) | {w['median']:.2f} ({w['min']:.2f}..{w['max']:.2f}) | "
            f"{accuracy['median']:.2f} | {'' if ratio is None else f'{ratio:.2f}'} | "
            f"{'' if other is None else round(other['median'])} |"
        )
    for name, reason in report["skipped"].items():
        lines.append(f"| {name} | skipped: {reason} | | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--recipe", choices=sorted(CONFIGS), default="fashion-mnist-mlp")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per run, train + test each (default: 1 on cpu; on cuda the warm-up + 1)")
    parser.add_argument("--warmup-epochs", type=int, default=None,
                        help="first epochs of each run left out of the figures: compilation, graph capture, "
                             "cuDNN autotuning (default: 0 on cpu, 1 on cuda)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats")
    parser.add_argument("--limit-samples", type=int, default=None, help="first N train and test samples")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--busy-above", type=float, default=10.0, metavar="PCT",
                        help="run again a run during which other processes used over PCT%% of the CPUs")
    parser.add_argument("--retries", type=int, default=2, help="at most this many re-runs of a busy run")
    parser.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: seed's)")
    parser.add_argument("--loops", default=None,
                        help=f"comma-separated subset of: {', '.join(LOOPS)} (default: all the device runs)")
    parser.add_argument("--data-root", default=None, help="dataset folder (default: ember's search order)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.loops is not None:
        args.loops = [name.strip() for name in args.loops.split(",") if name.strip()]
        unknown = sorted(set(args.loops) - set(LOOPS))
        if unknown or not args.loops:
            parser.error(f"unknown or no loop(s) {unknown}; choose from {', '.join(LOOPS)}")
    if args.warmup_epochs is None:
        args.warmup_epochs = 1 if args.device == "cuda" else 0
    if args.epochs is None:
        args.epochs = args.warmup_epochs + 1
    if args.epochs < 1 or args.repeats < 1 or not 0 <= args.warmup_epochs < args.epochs:
        parser.error("need --epochs >= 1, --repeats >= 1 and 0 <= --warmup-epochs < --epochs")
    if args.limit_samples is not None and args.limit_samples < 1:
        parser.error("--limit-samples must be positive")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but no CUDA GPU is available")
    try:
        report = measure(args)
    except DataNotFoundError as err:
        print(f"throughput: {err}", file=sys.stderr)
        return 2
    print(render(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
