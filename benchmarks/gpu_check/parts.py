"""The GPU check's parts in running order, their time limits and sizes, and what a part function is handed.

Standard library only: the runner (cli.py) reads this without importing torch.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NO_CUDA = "skipped: no CUDA device"


def call_main(main: Any, argv: list[str]) -> int:
    """A command line's `main(argv)` called in this process: its exit status, also when it exits by SystemExit
    (argparse's errors), so that a refused flag fails the part instead of ending the worker."""
    try:
        return int(main(argv) or 0)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1


@dataclass(frozen=True)
class Part:
    """One part: its name (also its JSON file's), report section, title, time limits and whether it needs CUDA.

    `timeout_s` is the limit on a CUDA machine, `dry_timeout_s` in the CPU dry run (a loaded 2-core machine
    may take that long to import torch). A `cuda_only` part reports NO_CUDA in the dry run, after running what
    of its code can run on the CPU at tiny sizes.
    """

    name: str
    section: str
    title: str
    timeout_s: int
    dry_timeout_s: int
    cuda_only: bool


PARTS: tuple[Part, ...] = (
    Part("setup", "setup", "Set-up: Python, packages, CUDA, data", 45, 120, False),
    Part("cuda-tests", "correctness", "The tests that need a CUDA device", 45, 120, True),
    Part("sync-free", "correctness", "No host-device sync on quiet iterations (sync debug mode)", 45, 120, True),
    Part("graph-vs-eager", "correctness", "CUDA-graph step vs eager step", 35, 90, True),
    Part("ddp-nccl", "correctness", "Two-process DDP over NCCL", 60, 30, True),
    Part("throughput-mlp", "speed", "Throughput: fashion-mnist-mlp (batch 64)", 120, 150, False),
    Part("throughput-cnn", "speed", "Throughput: fashion-mnist-cnn (batch 100)", 100, 150, False),
    Part("launch-limit", "speed", "Tutorial MLP: CUDA-graph epoch vs the launch limit", 35, 90, True),
    Part("speedrun", "speed", "ember train fashion-mnist-speedrun: time to 92%", 45, 90, False),
    Part("machine", "machine", "The machine", 15, 60, False),
)
BY_NAME = {p.name: p for p in PARTS}
BUDGET_S = 450  # all parts together on a CUDA machine: under 8 minutes with the set-up around them


@dataclass(frozen=True)
class Sizes:
    """How much each part runs: the CUDA sizes, or tiny ones for the CPU dry run."""

    sync_iterations: int  # iterations watched under the sync debug mode
    graph_iterations: int  # iterations of each of the CUDA-graph and eager runs compared
    throughput_repeats: int  # interleaved repeats of every throughput row
    throughput_samples: int  # --limit-samples of the throughput runs
    throughput_rows: tuple[str, ...]  # the throughput benchmark's rows (--loops)
    throughput_alone: tuple[str, ...]  # rows run in a call of their own, after the others, in every round
    launch_epochs: int  # timed epochs of the tutorial MLP (after one warm-up epoch)
    launch_samples: int | None  # training samples of those epochs (None: all 60,000)
    profile_iterations: int  # eager iterations profiled to count kernels per iteration
    speedrun_repeats: int  # interleaved runs of each speed-run variant
    speedrun_flags: tuple[str, ...]  # extra flags of every speed run
    ddp_iterations: int


ALL_ROWS = ("seed", "ignite", "lightning", "ember-dataloader", "ember", "ember-fast", "ember-fast-compile")
CUDA_SIZES = Sizes(sync_iterations=100, graph_iterations=200, throughput_repeats=3, throughput_samples=20000,
                   throughput_rows=ALL_ROWS, throughput_alone=("ember-fast-compile",), launch_epochs=3,
                   launch_samples=None, profile_iterations=20, speedrun_repeats=2, speedrun_flags=(), ddp_iterations=50)
# The dry run keeps every code path but the slowest rows to set up (Lightning's, the DataLoader's ember row);
# a CPU row runs alone there (the benchmark has nothing to run in a call of CUDA rows only on a CPU).
DRY_SIZES = Sizes(sync_iterations=2, graph_iterations=3, throughput_repeats=1, throughput_samples=64,
                  throughput_rows=("seed", "ignite", "ember", "ember-fast-compile"), throughput_alone=("ember",),
                  launch_epochs=1, launch_samples=64, profile_iterations=2, speedrun_repeats=1,
                  speedrun_flags=("--epochs", "1", "--max-iterations", "2"), ddp_iterations=2)


@dataclass
class Context:
    """What a part function gets: where to write, the device, the sizes, a scratch folder, and `save`.

    `save(status, markdown, **data)` writes the part's JSON at once, so that a part stopped at its time
    limit keeps what it had measured; the worker writes the final record from the part's return value.
    """

    part: Part
    out: Path
    scratch: Path
    dry: bool
    device: str  # "cuda" or "cpu"
    sizes: Sizes
    started: float = field(default_factory=time.time)

    def save(self, status: str, markdown: str = "", **data: Any) -> None:
        write_record(self.out, record(self.part, status, markdown, data, time.time() - self.started, self.dry))


def record(part: Part, status: str, markdown: str, data: dict[str, Any], seconds: float, dry: bool) -> dict[str, Any]:
    """A part's JSON record."""
    return {"part": part.name, "section": part.section, "title": part.title, "status": status,
            "seconds": round(seconds, 2), "mode": "cpu-dry-run" if dry else "cuda", "markdown": markdown,
            "data": data}


def write_record(out: Path, rec: dict[str, Any]) -> None:
    """Write OUT/<part>.json under a temporary name, then rename it: a reader never sees half a file."""
    path = out / f"{rec['part']}.json"
    temp = out / f".{rec['part']}.json.{os.getpid()}.tmp"
    temp.write_text(json.dumps(rec, indent=2, default=str) + "\n")
    os.replace(temp, path)


def read_record(out: Path, name: str) -> dict[str, Any] | None:
    """OUT/<name>.json, or None when it is missing or unreadable."""
    try:
        return json.loads((out / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
