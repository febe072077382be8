"""Sharded checkpoint (FSDP2, every rank writes its shards through DCP) vs today's single file (DDP, rank 0
gathers nothing but holds and writes the whole model), for N CPU processes under torchrun (gloo).

For each world size in `--procs` and each repeat (the two variants interleaved, the order alternating), one
torchrun job per variant builds the same model (`--params` parameters in `--layers` square Linear layers, SGD
with momentum: the optimizer state is as large as the model), takes one step, then times a save into
`--dir` (with everything ember does: fsync, checksums, manifest, rename) and a load back into the live objects
(`Checkpoint.load`: checks, then load). Rank 0 samples its resident memory every 2 ms during each; the
table gives medians with min..max of the save and load times and of rank 0's peak memory above what it held
before (the extra memory the operation needs), and the sharded/single ratios. Run from the repository root:

    .venv/bin/python -m benchmarks.sharded_checkpoint [--procs 2 4] [--params 50e6] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # run as a script: import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks._report import add_json_option, markdown_table, publish, spread  # noqa: E402

VARIANTS = ("single", "sharded")
REPO = Path(__file__).resolve().parents[1]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Rank 0's resident memory sampled every 2 ms while the block runs: `extra` is the peak above the start."""

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        self.extra = self.peak - self.start


def worker(variant: str, params: float, layers: int, folder: str) -> None:
    """One torchrun job: build, step, time a save and a load; rank 0 prints one JSON line."""
    import torch
    from torch import nn

    from ember import distributed as dist
    from ember.callbacks import Checkpoint
    from ember.checkpoint import sharded
    from ember.checkpoint.folder import save_file
    from ember.checkpoint.format import make_payload

    dist.init(backend="gloo")
    width = int((params / layers) ** 0.5)
    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Linear(width, width, bias=False) for _ in range(layers)])
    model = dist.wrap_model(net, "cpu", strategy="fsdp" if variant == "sharded" else "ddp")
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model(torch.randn(4, width)).sum().backward()
    optimizer.step()
    objects = {"model": model, "optimizer": optimizer}
    dist.barrier()
    with PeakMemory() as save_mem:
        start = time.perf_counter()
        if variant == "sharded":
            path = os.path.join(folder, "checkpoint_000000001.dcp")
            manifest = make_payload(step=1, epoch=1, score=None, monitor=None, objects={}) if dist.is_main() else None
            sharded.save_sharded(path, sharded.sharded_state(objects), manifest)
        else:
            path = os.path.join(folder, "checkpoint_000000001.pt")
            if dist.is_main():
                states = {"model": dist.unwrap(model).state_dict(), "optimizer": optimizer.state_dict()}
                save_file(make_payload(step=1, epoch=1, score=None, monitor=None, objects=states), path)
            dist.barrier()
        save_s = time.perf_counter() - start
    dist.barrier()
    with PeakMemory() as load_mem:
        start = time.perf_counter()
        Checkpoint.load(path, objects, restore_rng=False)
        dist.barrier()
        load_s = time.perf_counter() - start
    if dist.is_main():
        size = sum(p.stat().st_size for p in Path(path).rglob("*")) if os.path.isdir(path) else os.path.getsize(path)
        print("RESULT " + json.dumps({
            "save_s": save_s, "load_s": load_s, "save_extra_mb": save_mem.extra / 2**20,
            "load_extra_mb": load_mem.extra / 2**20, "peak_mb": max(save_mem.peak, load_mem.peak) / 2**20,
            "params": sum(p.numel() for p in net.parameters()) if variant == "single" else layers * width * width,
            "bytes": size,
        }), flush=True)
    dist.cleanup()


def launch(variant: str, procs: int, params: float, layers: int, timeout: float) -> dict[str, float]:
    folder = tempfile.mkdtemp(prefix="ember-sharded-bench-", dir=os.environ.get("BENCH_DIR"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
           "-m", "benchmarks.sharded_checkpoint", "--worker", variant, "--params", str(params),
           "--layers", str(layers), "--folder", folder]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    try:
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{variant} with {procs} processes failed (exit {done.returncode}):\n"
                           f"{(done.stdout + done.stderr)[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def measure(procs: list[int], params: float, layers: int, repeats: int, timeout: float) -> dict[str, Any]:
    runs: dict[str, dict[str, list[dict[str, float]]]] = {str(n): {v: [] for v in VARIANTS} for n in procs}
    for repeat in range(repeats):
        for n in procs:
            for variant in (VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]):
                runs[str(n)][variant].append(launch(variant, n, params, layers, timeout))
    figures: dict[str, Any] = {}
    for n, by_variant in runs.items():
        figures[n] = {}
        for variant, results in by_variant.items():
            figures[n][variant] = {key: spread([r[key] for r in results]) for key in
                                   ("save_s", "load_s", "save_extra_mb", "load_extra_mb", "peak_mb")}
            figures[n][variant]["bytes"] = results[0]["bytes"]
            figures[n][variant]["params"] = results[0]["params"]
        single, shard = figures[n]["single"], figures[n]["sharded"]
        figures[n]["ratio_sharded_over_single"] = {  # none where the single file needs under 1 MiB more
            key: shard[key]["median"] / single[key]["median"] if single[key]["median"] >= (1 if "mb" in key else 0)
            else None for key in ("save_s", "load_s", "save_extra_mb", "load_extra_mb")}
    return {"machine": f"{platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)",
            "date": time.strftime("%Y-%m-%d"), "params": params, "layers": layers, "repeats": repeats,
            "procs": procs, "figures": figures}


def _cell(s: dict[str, float], fmt: str) -> str:
    return f"{s['median']:{fmt}} ({s['min']:{fmt}}..{s['max']:{fmt}})"


def table(report: dict[str, Any]) -> str:
    rows = []
    for n, by in report["figures"].items():
        for variant in VARIANTS:
            f = by[variant]
            rows.append([n, variant, f"{f['bytes'] / 2**20:.0f}", _cell(f["save_s"], ".2f"), _cell(f["load_s"], ".2f"),
                         _cell(f["save_extra_mb"], ".0f"), _cell(f["load_extra_mb"], ".0f"),
                         _cell(f["peak_mb"], ".0f")])
        r = by["ratio_sharded_over_single"]
        rows.append([n, "sharded / single", "", f"{r['save_s']:.2f}x", f"{r['load_s']:.2f}x",
                     f"{r['save_extra_mb']:.2f}x" if r["save_extra_mb"] is not None else "-",
                     f"{r['load_extra_mb']:.2f}x" if r["load_extra_mb"] is not None else "-", ""])
    head = (f"Sharded vs single-file checkpoint, {report['params']:.3g} parameters + SGD momentum, "
            f"median (min..max) of {report['repeats']}, {report['machine']}, {report['date']}")
    lines = markdown_table(["procs", "checkpoint", "MiB on disk", "save s", "load s", "rank 0 extra MiB (save)",
                            "rank 0 extra MiB (load)", "rank 0 peak MiB"], rows, ["r", "l", *"rrrrrr"])
    return "\n".join([head, "", *lines])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--procs", type=int, nargs="+", default=[2, 4])
    p.add_argument("--params", type=float, default=50e6, help="model parameters (at least 50e6 for the docs)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=600, help="seconds for one torchrun job")
    p.add_argument("--worker", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    add_json_option(p)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.params, args.layers, args.folder)
        return
    report = measure(args.procs, args.params, args.layers, args.repeats, args.timeout)
    publish(table(report), report, args.json)


if __name__ == "__main__":
    main()
