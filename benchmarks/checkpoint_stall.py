"""Training time lost per checkpoint save: synchronous vs asynchronous (`Checkpoint(async_save=True)`) saves.

One run of ember's trainer on an MLP of `--parameters` weights (SGD with momentum, so the optimizer state is as
big as the model) is cut into windows of the same number of steps. In a `sync` window the first step saves
synchronously, in an `async` window it saves in the background, in a `none` window nothing is saved; the
windows are interleaved (the order rotates each repeat) and the writer is idle at each window's start. The
window is calibrated to outlast the background write; when a write takes longer than that (a busy disk or
CPU), its window goes on stepping until the write has ended, so that every window holds its whole save. The
stall of a save is its window's time minus as many steps of the `none` window of the same repeat: what
training lost, the waits for a save in flight and the steps slowed by the writer thread included
(`async_write_done_in_window` says whether every background write ended within the planned steps, and
`async_extra_steps` how many steps the windows added). Also reported: the save call's own time (what the
step blocks on) and the write's wall time (serialise, write, fsync, check, rename). Medians with min..max.
Run from the repository root:

    .venv/bin/python -m benchmarks.checkpoint_stall [--parameters 100e6] [--repeats 3] [--device cpu|cuda]
        [--threads N] [--dir bench-stall] [--json out.json]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # run as a script: import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from benchmarks._report import add_json_option, markdown_table, publish, spread  # noqa: E402
from ember.callbacks import Checkpoint  # noqa: E402
from ember.engine import Events  # noqa: E402
from ember.steps import create_trainer  # noqa: E402

MODES = ("none", "sync", "async")
BATCH = 8
DEPTH = 6  # Linear layers of width x width


def make_model(parameters: float) -> nn.Sequential:
    """DEPTH square Linear layers (with ReLU between them) holding about `parameters` weights in all."""
    width = max(4, round(math.sqrt(parameters / DEPTH)))
    layers: list[nn.Module] = []
    for index in range(DEPTH):
        layers.append(nn.Linear(width, width))
        if index < DEPTH - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Windows:
    """Drives the run from ITERATION_COMPLETED: the window plan, the saves, and the clock of each window."""

    def __init__(self, plan: list[str], steps: int, ckpts: dict[str, Checkpoint], device: torch.device) -> None:
        self.plan, self.steps, self.ckpts, self.device = plan, steps, ckpts, device
        self.index, self.step_in_window = 0, 0
        self.results: list[dict[str, Any]] = []
        self.start = 0.0
        self.save_call = 0.0

    def started(self, engine: Any) -> None:
        self.start = self.clock()

    def clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def __call__(self, engine: Any) -> None:
        if self.index >= len(self.plan):
            engine.terminate()
            return
        mode = self.plan[self.index]
        self.step_in_window += 1
        if self.step_in_window == 1 and mode != "none":
            begin = time.perf_counter()
            self.ckpts[mode].save(engine)
            self.save_call = time.perf_counter() - begin
        if self.step_in_window < self.steps:
            return
        writer = self.ckpts["async"]._writer
        if mode == "async" and writer is not None and writer.busy:
            return  # the window holds its whole save: it steps on until the background write has ended
        end = self.clock()
        self.results.append({"mode": mode, "window_s": end - self.start, "steps": self.step_in_window,
                             "save_call_s": self.save_call if mode != "none" else 0.0})
        for ckpt in self.ckpts.values():  # the writer idle before the next window starts its clock
            ckpt.wait()
        self.index += 1
        self.step_in_window, self.save_call = 0, 0.0
        self.start = self.clock()


def run(trainer: Any, windows: Windows, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Train over `batch` again and again until `windows` has timed its plan."""
    handles = [trainer.add_event_handler(Events.STARTED, windows.started),
               trainer.add_event_handler(Events.ITERATION_COMPLETED, windows)]
    trainer.state.max_epochs = None  # a fresh run each time
    # one epoch as long as the plan needs: a save on an epoch's last iteration is written again at the epoch's
    # end (docs/checkpoints.md, "Exact at an epoch's end"), and this measures the save of any other iteration
    trainer.run([batch], max_epochs=1, epoch_length=10**9)
    for handle in handles:
        handle.remove()


def measure(parameters: float, repeats: int, folder: str, device: torch.device,
            window_steps: int | None = None) -> dict[str, Any]:
    torch.manual_seed(0)
    model = make_model(parameters).to(device)
    count = sum(p.numel() for p in model.parameters())
    width = model[0].in_features
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    trainer = create_trainer(model, optimizer, F.mse_loss)
    batch = (torch.randn(BATCH, width, device=device), torch.randn(BATCH, width, device=device))
    objects = {"model": model, "optimizer": optimizer}
    ckpts = {mode: Checkpoint(objects, os.path.join(folder, mode), every_iterations=10**9, keep_last=1,
                              save_on_completed=False, include_rng=True, async_save=mode == "async")
             for mode in ("sync", "async")}
    for ckpt in ckpts.values():
        trainer.add(ckpt)
    writes: dict[str, list[float]] = {"sync": [], "async": []}
    for mode, ckpt in ckpts.items():  # the write's own wall time, in whichever thread it runs
        real_write = ckpt.folder.write

        def timed(*args: Any, _real: Any = real_write, _mode: str = mode, **kwargs: Any) -> str:
            begin = time.perf_counter()
            path = _real(*args, **kwargs)
            writes[_mode].append(time.perf_counter() - begin)
            return path

        ckpt.folder.write = timed  # type: ignore[method-assign]

    # calibration (also the warm-up: snapshot buffers, page cache, allocator): steps alone, then one save of each
    calibrate = Windows(["none", "sync", "async"], 3, ckpts, device)
    run(trainer, calibrate, batch)
    step_s = calibrate.results[0]["window_s"] / calibrate.results[0]["steps"]
    if window_steps is None:  # room for the background write (slower than alone, sharing the CPU) plus the save
        window_steps = max(4, min(400, math.ceil(3 * max(writes["sync"] + writes["async"]) / step_s) + 2))
    writes = {"sync": [], "async": []}
    plan = [mode for r in range(repeats) for mode in (MODES[r % 3:] + MODES[: r % 3])]
    windows = Windows(plan, window_steps, ckpts, device)
    run(trainer, windows, batch)

    by_mode = {mode: [r for r in windows.results if r["mode"] == mode] for mode in MODES}
    none = [r["window_s"] / r["steps"] for r in by_mode["none"]]  # a step's time without saves, per repeat
    stalls = {mode: [r["window_s"] - r["steps"] * n for r, n in zip(by_mode[mode], none)]
              for mode in ("sync", "async")}
    extra_steps = sum(r["steps"] - window_steps for r in by_mode["async"])
    report: dict[str, Any] = {
        "parameters": count, "device": str(device), "repeats": repeats, "window_steps": window_steps,
        "batch": BATCH, "optimizer": "SGD(momentum=0.9)",
        "checkpoint_bytes": os.path.getsize(ckpts["sync"].last_path or ""),
        "snapshot_bytes": ckpts["async"]._snapshot.nbytes,
        "step_s": spread(none),
        "stall_s": {mode: spread(v) for mode, v in stalls.items()},
        "save_call_s": {mode: spread([r["save_call_s"] for r in by_mode[mode]]) for mode in ("sync", "async")},
        "write_s": {mode: spread(v) for mode, v in writes.items()},
        "writes": {mode: len(v) for mode, v in writes.items()},  # one per window: each save written once
        "async_write_done_in_window": extra_steps == 0, "async_extra_steps": extra_steps,
        "windows": windows.results,
        "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.platform(), "cpus": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    sync, background = report["stall_s"]["sync"]["median"], report["stall_s"]["async"]["median"]
    report["async_to_sync_stall_ratio"] = background / sync if sync > 0 else float("nan")
    report["paired_ratio_median"] = statistics.median(a / s for a, s in zip(stalls["async"], stalls["sync"])
                                                      if s > 0) if any(s > 0 for s in stalls["sync"]) else float("nan")
    return report


def table(report: dict[str, Any]) -> str:
    def cell(figure: dict[str, float], scale: float = 1.0) -> str:
        return f"{figure['median'] * scale:.3f} ({figure['min'] * scale:.3f}..{figure['max'] * scale:.3f})"

    lines = [f"{report['parameters']:,} parameters on {report['device']}, checkpoint {report['checkpoint_bytes']:,} "
             f"bytes, snapshot {report['snapshot_bytes']:,} bytes; windows of {report['window_steps']} steps, step "
             f"{cell(report['step_s'])} s; {report['repeats']} interleaved repeats; {report['threads']} training "
             f"threads on {report['cpus']} CPUs", ""]
    rows = [[mode, cell(report["stall_s"][mode]), cell(report["save_call_s"][mode]), cell(report["write_s"][mode])]
            for mode in ("sync", "async")]
    lines += markdown_table(["save", "training time lost per save, s", "save call, s", "write, s"], rows, "lrrr")
    done = ("inside their windows" if report["async_write_done_in_window"] else
            f"after their windows' planned steps ({report['async_extra_steps']} steps added, counted in the stall)")
    lines += ["", f"async / sync stall (medians): {report['async_to_sync_stall_ratio']:.3f}; median of the paired "
                  f"ratios: {report['paired_ratio_median']:.3f}; the background writes ended {done}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parameters", type=float, default=100e6, help="model size in weights (default 100e6)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved windows per kind of save")
    parser.add_argument("--window-steps", type=int, default=None, help="steps per window (default: calibrated)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch's CPU threads for training (default: torch's own, one per core); fewer than the "
                             "cores leaves the writer a core, as training on a GPU does")
    parser.add_argument("--dir", default="bench-stall", help="scratch folder for the files (removed at the end)")
    add_json_option(parser)
    args = parser.parse_args(argv)
    if args.parameters < 100 or args.repeats < 1:
        parser.error("--parameters must be at least 100 and --repeats at least 1")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    try:
        report = measure(args.parameters, args.repeats, args.dir, device, args.window_steps)
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)
    publish(table(report), report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
