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

Before every timed run, the bare floor: one pass of the model's own forward pass, and of its training step
(forward, backward, optimizer step), over ready-made batches of the same data; the best pass counts. No loop
can evaluate faster than the bare forward pass or train faster than the bare step: a row that does (beyond
FP32_SLACK, or FAST_SLACK for rows that change the arithmetic) is reported as implausible, its clock is wrong.

The loops live one per framework in this package; this module measures them and prints the report.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from benchmarks._report import add_json_option, publish, spread
from benchmarks.throughput.ember_loop import run_ember
from benchmarks.throughput.ignite_loop import run_ignite
from benchmarks.throughput.job import Clock, Job
from benchmarks.throughput.lightning_loop import lightning_module, run_lightning
from benchmarks.throughput.machine import OtherLoad, cpu_name, native_bf16_cpu
from benchmarks.throughput.seed_loop import run_seed
from benchmarks.throughput.setups import CONFIGS, Config, load_splits, make_loaders
from ember.data import DataNotFoundError
from ember.recipes import RECIPES

LOOPS = ("seed", "ignite", "lightning", "ember-dataloader", "seed-inmemory", "ember", "ember-fast",
         "ember-fast-compile")
CUDA_ONLY = ("ember-fast-compile",)
FAST_ROWS = ("ember-fast", "ember-fast-compile")
FP32_SLACK = 5.0
"""How far above the bare floor an fp32 row's median may be before it is implausible (timing noise on a
loaded machine; a clock that stops in the wrong place is off by orders of magnitude)."""
FAST_SLACK = 50.0
"""The same for rows with bf16, CUDA graphs or torch.compile, which may beat an eager fp32 step."""


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


class BareFloor:
    """The fastest samples/s seen of the model's bare training step and bare forward pass on ready-made batches.

    `measure()` runs one pass over up to `max_batches` batches of each split; the benchmark runs one before
    every timed run, so the best pass is an upper bound for every loop's rates even on a loaded machine.
    """

    def __init__(self, cfg: Config, loaders: dict[str, Any], device: torch.device, lr: float,
                 max_batches: int = 20) -> None:
        self.cfg, self.clock = cfg, Clock(device)
        torch.manual_seed(0)
        self.model = cfg.model().to(device)
        self.optimizer = cfg.optimizer(self.model.parameters(), lr)
        self.batches = {split: [b for _, b in zip(range(max_batches), loaders[split])] for split in ("train", "test")}
        self.best = {"train_samples_per_s": 0.0, "eval_samples_per_s": 0.0}

    def measure(self) -> None:
        t0 = self.clock.now()
        for x, y in self.batches["train"]:
            loss = self.cfg.loss_fn(self.model(x), y)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        t1 = self.clock.now()
        with torch.no_grad():
            for x, _y in self.batches["test"]:
                self.model(x)
        t2 = self.clock.now()
        for key, seconds, split in (("train_samples_per_s", t1 - t0, "train"), ("eval_samples_per_s", t2 - t1, "test")):
            samples = sum(len(y) for _x, y in self.batches[split])
            self.best[key] = max(self.best[key], samples / max(seconds, 1e-9))


def implausible(report: dict[str, Any]) -> list[str]:
    """The rows whose median rate beats the bare floor by more than the slack: their clock is wrong."""
    floor = report.get("bare_floor")
    if not floor:
        return []
    problems = []
    for name, row in report["loops"].items():
        slack = FAST_SLACK if name in FAST_ROWS else FP32_SLACK
        for key, what in (("train_samples_per_s", "bare training step"), ("eval_samples_per_s", "bare forward pass")):
            rate, bound = row[key]["median"], floor[key]
            if rate > slack * bound:
                problems.append(f"{name}: {key} {rate:,.0f} is over {slack:g}x the {what}'s {bound:,.0f} "
                                f"on the same data: the loop's clock is wrong")
    return problems


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
    floor = BareFloor(cfg, loaders["fast"], device, recipe.lr)
    timed = slice(args.warmup_epochs, None)
    results = {name: {k: [] for k in ("train", "eval", "epoch", "acc", "other", "reruns")} for name in active}
    for r in range(args.repeats):
        order = active[r % len(active):] + active[:r % len(active)]
        for name in order:
            res = results[name]
            path, run = table[name]
            for attempt in range(args.retries + 1):
                floor.measure()
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
        loops[name] = {"train_samples_per_s": spread(res["train"]), "eval_samples_per_s": spread(res["eval"]),
                       "epoch_s": spread(res["epoch"]), "test_accuracy_pct": spread(res["acc"]),
                       "other_processes_cpu_pct": spread(res["other"]) if res["other"] else None,
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
        "loops": loops, "skipped": skipped, "bare_floor": floor.best,
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
    floor = report.get("bare_floor")
    if floor:
        lines += ["", f"Bare floor on ready-made batches (best pass): training step "
                      f"{floor['train_samples_per_s']:,.0f} samples/s, forward pass "
                      f"{floor['eval_samples_per_s']:,.0f} samples/s."]
    lines += [f"IMPLAUSIBLE: {problem}" for problem in implausible(report)]
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
    add_json_option(parser)
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
    publish(render(report), report, args.json)
    return 0
