"""The speed parts: the throughput benchmark's rows, the tutorial MLP's CUDA-graph epoch against the launch
limit, and the speed run's time to 92%."""

from __future__ import annotations

import contextlib
import io
import json
import re
import statistics
import sys
import time
from typing import Any

import torch

from benchmarks._report import spread
from benchmarks.gpu_check.parts import NO_CUDA, Context, call_main


class _Both(io.StringIO):
    """Keeps what is printed and passes it on to the log."""

    def __init__(self, stream: Any) -> None:
        super().__init__()
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(text)
        return super().write(text)


def _fmt(s: dict[str, float], digits: int = 0) -> str:
    return f"{s['median']:,.{digits}f} ({s['min']:,.{digits}f}..{s['max']:,.{digits}f})"


# --- the throughput benchmark ----------------------------------------------------------------------------------


def throughput(ctx: Context, recipe: str, batch_size: int) -> tuple[str, str, dict[str, Any]]:
    """benchmarks.throughput over the sizes' rows, one repeat of every row per round (so a slow spell of the
    machine hits them all), as many rounds as the sizes say; medians over the rounds. A round is two calls:
    the rows of `throughput_alone` (torch.compile's, whose first compilation may be long) run in a call of their
    own after the others, and each call's figures are saved as they come, so a part stopped at its limit
    keeps every row it finished."""
    from benchmarks.throughput import cli as bench

    rows = ctx.sizes.throughput_rows
    alone = ctx.sizes.throughput_alone
    calls = [[r for r in rows if r not in alone], [r for r in rows if r in alone]]
    common = ["--device", ctx.device, "--recipe", recipe, "--batch-size", str(batch_size), "--repeats", "1",
              "--retries", "0", "--limit-samples", str(ctx.sizes.throughput_samples)]
    runs: list[dict[str, Any]] = []
    data: dict[str, Any] = {}
    markdown = ""
    for repeat in range(ctx.sizes.throughput_repeats):
        for k, loops in enumerate(c for c in calls if c):
            path = ctx.scratch / f"repeat-{repeat}-{k}.json"
            code = call_main(bench.main, [*common, "--loops", ",".join(loops), "--json", str(path)])
            if code != 0:
                return f"failed: benchmarks.throughput exited with {code}", markdown, data
            got = json.loads(path.read_text())
            if k == 0:
                runs.append(got)
            else:
                runs[-1]["loops"].update(got["loops"])
                runs[-1]["skipped"].update(got["skipped"])
            data, markdown = _summarise(runs, [*common, "--loops", ",".join(rows)], calls[1])
            ctx.save("running", markdown, **data)
    return "measured", markdown, data


def _summarise(runs: list[dict[str, Any]], argv: list[str], alone: list[str]) -> tuple[dict[str, Any], str]:
    """Medians (min..max) over the runs of each row's figures, its ratios to seed, ignite and ember."""
    first = runs[0]
    loops: dict[str, Any] = {}
    for name in dict.fromkeys(name for run in runs for name in run["loops"]):
        series = [run["loops"][name] for run in runs if name in run["loops"]]
        loops[name] = {key: spread([s[key]["median"] for s in series])
                       for key in ("train_samples_per_s", "eval_samples_per_s", "epoch_s", "test_accuracy_pct")}
    for row in loops.values():
        for peer in ("seed", "ignite", "ember"):
            if peer in loops:
                row[f"train_x_{peer}"] = (row["train_samples_per_s"]["median"]
                                          / loops[peer]["train_samples_per_s"]["median"])
    data = {"command": "python -m benchmarks.throughput " + " ".join(argv), "rounds": len(runs),
            "device_name": first["device_name"], "torch": first["torch"], "train_samples": first["train_samples"],
            "test_samples": first["test_samples"], "batch_size": first["batch_size"], "epochs": first["epochs"],
            "warmup_epochs": first["warmup_epochs"], "loops": loops, "skipped": first["skipped"],
            "runs": runs}
    lines = [f"`{data['command']}`: {len(runs)} round(s) of one repeat of every row (in a call of its own after "
             f"the others: {', '.join(alone) or 'none'}); {first['train_samples']} training and "
             f"{first['test_samples']} test samples, batch "
             f"{first['batch_size']}, {first['epochs']} epoch(s) per run of which {first['warmup_epochs']} untimed "
             f"(warm-up: graph capture, compilation); medians (min..max) over the rounds; {first['device_name']}.",
             "", "| loop | train samples/s | eval samples/s | epoch (s) | test acc. (%) | × seed | × ignite | "
             "× ember |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in loops.items():
        ratios = " | ".join(f"{row[f'train_x_{p}']:.2f}" if f"train_x_{p}" in row else "" for p in
                            ("seed", "ignite", "ember"))
        lines.append(f"| {name} | {_fmt(row['train_samples_per_s'])} | {_fmt(row['eval_samples_per_s'])} | "
                     f"{_fmt(row['epoch_s'], 2)} | {row['test_accuracy_pct']['median']:.2f} | {ratios} |")
    lines += [f"| {name} | skipped: {reason} | | | | | | |" for name, reason in first["skipped"].items()]
    return data, "\n".join(lines)


def throughput_mlp(ctx: Context) -> tuple[str, str, dict[str, Any]]:
    return throughput(ctx, "fashion-mnist-mlp", 64)


def throughput_cnn(ctx: Context) -> tuple[str, str, dict[str, Any]]:
    return throughput(ctx, "fashion-mnist-cnn", 100)


# --- the tutorial MLP's CUDA-graph epoch and the launch limit ----------------------------------------------------


def _launch_latency_us(launches: int = 20000, nodes: int = 1000, replays: int = 20) -> tuple[float, float]:
    """Microseconds per empty kernel: launched back to back from Python, and as nodes of a replayed CUDA graph."""
    for _ in range(100):
        torch.cuda._sleep(0)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(launches):
        torch.cuda._sleep(0)
    torch.cuda.synchronize()
    eager = (time.perf_counter() - t) / launches * 1e6
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(nodes):
            torch.cuda._sleep(0)
    graph.replay()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(replays):
        graph.replay()
    torch.cuda.synchronize()
    return eager, (time.perf_counter() - t) / (replays * nodes) * 1e6


def _setup(ctx: Context, cuda_graph: bool) -> tuple[Any, Any]:
    """The tutorial's set-up (seed 000: MLP 784-512-512-10, SGD lr 1e-3, batch 64, unshuffled) on the fast path."""
    from torch import nn
    from torch.utils.data import Subset

    from ember.data import load_dataset, make_loader
    from ember.recipes.fashion_mnist_mlp import NeuralNetwork
    from ember.steps import create_trainer

    dataset = load_dataset("fashion-mnist", True, download=False)
    if ctx.sizes.launch_samples is not None:
        dataset = Subset(dataset, range(min(ctx.sizes.launch_samples, len(dataset))))
    loader = make_loader(dataset, 64, device=ctx.device)
    torch.manual_seed(0)
    model = NeuralNetwork().to(ctx.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    return create_trainer(model, optimizer, nn.functional.cross_entropy, ctx.device, cuda_graph=cuda_graph), loader


def _sync(ctx: Context) -> None:
    if ctx.device == "cuda":
        torch.cuda.synchronize()


def kernels_per_iteration(ctx: Context) -> tuple[float, str]:
    """GPU kernels (and copies) of one eager iteration, batching included, from the profiler; on the CPU the
    aten ops instead."""
    from torch.profiler import ProfilerActivity, profile

    from ember.engine import Events

    trainer, loader = _setup(ctx, cuda_graph=False)
    trainer.run(loader, max_epochs=1, epoch_length=min(3, len(loader)))  # warm-up: allocations, cuBLAS handles
    n = min(ctx.sizes.profile_iterations, len(loader))
    counts: list[int] = []
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.device == "cuda" else [])
    _sync(ctx)
    with profile(activities=activities) as prof:
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: counts.append(1))
        trainer.run(loader, max_epochs=1, epoch_length=n)
        _sync(ctx)
    events = prof.events()
    if ctx.device == "cuda":
        found = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        return len(found) / len(counts), "GPU kernels and copies (torch.profiler, eager iterations)"
    found = [e for e in events if e.name.startswith("aten::")]
    return len(found) / len(counts), "aten ops on the CPU (dry run)"


def launch_limit(ctx: Context) -> tuple[str, str, dict[str, Any]]:
    """Epoch time of the tutorial MLP with the whole step as one CUDA graph, against kernels per iteration ×
    the launch latency of an empty kernel (and × an empty graph node's time)."""
    from ember.engine import Events

    cuda = ctx.device == "cuda"
    trainer, loader = _setup(ctx, cuda_graph=cuda)
    times: list[float] = []
    start = [0.0]

    def began(_: Any) -> None:
        _sync(ctx)
        start[0] = time.perf_counter()

    def ended(_: Any) -> None:
        _sync(ctx)
        times.append(time.perf_counter() - start[0])

    trainer.add_event_handler(Events.EPOCH_STARTED, began)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, ended)
    trainer.run(loader, max_epochs=1 + ctx.sizes.launch_epochs)  # the first epoch warms up and captures
    epoch = spread(times[1:])
    iterations = len(loader)
    kernels, counted = kernels_per_iteration(ctx)
    data: dict[str, Any] = {"iterations_per_epoch": iterations, "epoch_s": epoch, "warmup_epoch_s": times[0],
                            "kernels_per_iteration": kernels, "counted": counted, "cuda_graph": cuda}
    lines = [f"Seed 000's set-up (MLP 784-512-512-10, SGD lr 1e-3, batch 64, {iterations} iterations an epoch, "
             f"fast data path), {'the whole step as one CUDA graph' if cuda else 'eager (dry run)'}: training "
             f"epoch {_fmt(epoch, 4)} s over {len(times) - 1} epoch(s) after a warm-up epoch of {times[0]:.3f} s.",
             "", f"Per iteration: {kernels:.1f} {counted}."]
    if not cuda:
        lines.append("\nDry run: no launch latency without CUDA.")
        return NO_CUDA, "\n".join(lines), data
    eager_us, node_us = _launch_latency_us()
    limit = iterations * kernels * eager_us * 1e-6
    node_limit = iterations * kernels * node_us * 1e-6
    data.update(launch_us=eager_us, graph_node_us=node_us, launch_limit_s=limit, graph_node_limit_s=node_limit,
                epoch_over_limit=epoch["median"] / limit, epoch_over_graph_node_limit=epoch["median"] / node_limit)
    lines += ["", "| | per kernel (µs) | limit for an epoch (s) | epoch / limit |", "|---|---:|---:|---:|",
              f"| empty kernels launched back to back (`torch.cuda._sleep(0)`) | {eager_us:.2f} | {limit:.4f} | "
              f"{data['epoch_over_limit']:.2f} |",
              f"| empty kernels as nodes of one replayed CUDA graph | {node_us:.2f} | {node_limit:.4f} | "
              f"{data['epoch_over_graph_node_limit']:.2f} |"]
    return "measured", "\n".join(lines), data


# --- the speed run ---------------------------------------------------------------------------------------------------

REACHED = re.compile(r"Reached (\d+)% test accuracy in ([\d.]+) s")
EPOCH = re.compile(r"Epoch (\d+)/\d+: test accuracy ([\d.]+)%, ([\d.]+) s since start")


def speedrun(ctx: Context) -> tuple[str, str, dict[str, Any]]:
    """`ember train fashion-mnist-speedrun` with and without --cuda-graph, interleaved; the recipe's own time to
    92% (from its start, data preparation included)."""
    from ember.recipes.cli import main as ember_cli

    variants = {"eager": [], "cuda-graph": ["--cuda-graph"]}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    skipped = {"cuda-graph": "needs CUDA"} if ctx.dry else {}
    for repeat in range(ctx.sizes.speedrun_repeats):
        for name, flags in variants.items():
            if name in skipped:
                continue
            argv = ["train", "fashion-mnist-speedrun", "--device", ctx.device, "--no-tensorboard", "--checkpoint-dir",
                    str(ctx.scratch / f"{name}-{repeat}"), *ctx.sizes.speedrun_flags, *flags]
            capture = _Both(sys.stdout)
            t = time.perf_counter()
            with contextlib.redirect_stdout(capture):
                code = call_main(ember_cli, argv)
            text = capture.getvalue()
            reached = REACHED.search(text)
            runs[name].append({"exit_code": code, "wall_s": time.perf_counter() - t,
                               "time_to_target_s": float(reached.group(2)) if reached else None,
                               "epochs": [{"epoch": int(e), "accuracy_pct": float(a), "since_start_s": float(s)}
                                          for e, a, s in EPOCH.findall(text)]})
            ctx.save("running", "", runs=runs)
    variants_data: dict[str, Any] = {}
    lines = ["`ember train fashion-mnist-speedrun --no-tensorboard [--cuda-graph]` "
             f"{' '.join(ctx.sizes.speedrun_flags)}, {ctx.sizes.speedrun_repeats} interleaved run(s) each; time "
             "to 92% as the recipe prints it (from the recipe's start: data preparation, warm-up and evaluation "
             "included).", "", "| variant | time to 92% (s) | reached in | final accuracy (%) | wall (s) |",
             "|---|---:|---|---:|---:|"]
    for name, done in runs.items():
        if name in skipped:
            lines.append(f"| {name} | skipped: {skipped[name]} | | | |")
            continue
        reached = [r["time_to_target_s"] for r in done if r["time_to_target_s"] is not None]
        last = [r["epochs"][-1]["accuracy_pct"] for r in done if r["epochs"]]
        variants_data[name] = {"runs": done, "time_to_target_s": spread(reached) if reached else None,
                               "reached": f"{len(reached)}/{len(done)} runs",
                               "final_accuracy_pct": statistics.median(last) if last else None}
        v = variants_data[name]
        final = "" if v["final_accuracy_pct"] is None else f"{v['final_accuracy_pct']:.2f}"
        lines.append(f"| {name} | {_fmt(v['time_to_target_s'], 2) if reached else 'not reached'} | {v['reached']} "
                     f"| {final} | {statistics.median(r['wall_s'] for r in done):.1f} |")
    data = {"variants": variants_data, "skipped": skipped}
    failed = [f"{name} exited with {r['exit_code']}" for name, done in runs.items() for r in done if r["exit_code"]]
    if failed:
        return "failed: " + "; ".join(failed), "\n".join(lines), data
    return "measured", "\n".join(lines), data
