"""`python -m benchmarks.gpu_check.worker OUTDIR MODE PART...`: run the named parts in order, in this process.

The runner (cli.py) starts workers and enforces the time limits; a worker writes each part's record first as
"running" (the runner's cue that the part began) and then with its outcome. A part function returns
(status, markdown, data); an exception becomes the status "error: ..." with its traceback in the log.
"""

from __future__ import annotations

import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.gpu_check.parts import BY_NAME, CUDA_SIZES, DRY_SIZES, Context, record, write_record

PartFn = Callable[[Context], tuple[str, str, dict[str, Any]]]


def functions() -> dict[str, PartFn]:
    """Every part's function, by name (imported here: they import torch and ember)."""
    from benchmarks.gpu_check import correctness, machine, speed

    table: dict[str, PartFn] = {
        "setup": machine.setup,
        "cuda-tests": correctness.cuda_tests,
        "sync-free": correctness.sync_free,
        "graph-vs-eager": correctness.graph_vs_eager,
        "ddp-nccl": correctness.ddp_nccl,
        "throughput-mlp": speed.throughput_mlp,
        "throughput-cnn": speed.throughput_cnn,
        "launch-limit": speed.launch_limit,
        "speedrun": speed.speedrun,
        "machine": machine.machine,
    }
    return table


def run_part(fn: PartFn, ctx: Context) -> None:
    """Run one part and write its record; an exception is the part's error, never the worker's."""
    print(f"=== {ctx.part.name}: {ctx.part.title} ===", flush=True)
    ctx.save("running")
    try:
        status, markdown, data = fn(ctx)
    except Exception as exc:  # a part's failure is reported, and the next part runs
        traceback.print_exc()
        status, markdown, data = f"error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}", "", {}
    seconds = time.time() - ctx.started
    write_record(ctx.out, record(ctx.part, status, markdown, data, seconds, ctx.dry))
    print(f"=== {ctx.part.name}: {status} ({seconds:.1f} s) ===", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out, mode, names = Path(args[0]), args[1], args[2:]
    dry = mode == "cpu-dry-run"
    table = functions()
    with tempfile.TemporaryDirectory(prefix="ember-gpu-check-") as scratch:
        for name in names:
            part = BY_NAME[name]
            ctx = Context(part, out, Path(scratch) / name, dry, "cpu" if dry else "cuda",
                          DRY_SIZES if dry else CUDA_SIZES)
            ctx.scratch.mkdir()
            run_part(table[name], ctx)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
