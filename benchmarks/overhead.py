"""The engine's own cost per iteration: ember vs ignite vs a bare loop, trivial step, in-memory data.

Interleaved repeats, medians; overhead = (loop time - bare loop time) / iterations.
Run: python benchmarks/overhead.py [--iterations 200000] [--repeats 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable

from ignite.engine import Engine as IgniteEngine
from ignite.engine import Events as IgniteEvents

from ember.engine import Engine, Events


def step(engine: object, batch: int) -> int:
    """A trivial process function: the benchmark measures the loop around it."""
    return batch


def bare(data: list, epochs: int, with_handler: bool) -> None:
    """The floor: a plain for loop calling the same step and, optionally, the same handler check."""
    iteration = 0
    hits = 0
    for _ in range(epochs):
        for batch in data:
            iteration += 1
            step(None, batch)
            if with_handler and iteration % 100 == 0:
                hits += 1


def with_engine(engine_cls: type, events: type) -> Callable[[list, int, bool], None]:
    def run(data: list, epochs: int, with_handler: bool) -> None:
        engine = engine_cls(step)
        if with_handler:
            engine.add_event_handler(events.ITERATION_COMPLETED(every=100), lambda e: None)
        engine.run(data, max_epochs=epochs)

    return run


RUNNERS: dict[str, Callable[[list, int, bool], None]] = {
    "bare loop": bare,
    "ember": with_engine(Engine, Events),
    "ignite": with_engine(IgniteEngine, IgniteEvents),
}


def measure(iterations: int, repeats: int, epochs: int = 4) -> dict:
    """Time every runner `repeats` times, interleaved, for both handler settings; return per-iteration figures."""
    data = list(range(iterations // epochs))
    n = len(data) * epochs
    results: dict = {}
    for with_handler in (False, True):
        times: dict[str, list[float]] = {name: [] for name in RUNNERS}
        for _ in range(repeats):
            for name, runner in RUNNERS.items():
                t0 = time.perf_counter()
                runner(data, epochs, with_handler)
                times[name].append(time.perf_counter() - t0)
        floor = statistics.median(times["bare loop"])
        case = "one handler on ITERATION_COMPLETED(every=100)" if with_handler else "no handlers"
        results[case] = {
            name: {
                "median_s": statistics.median(t),
                "min_s": min(t),
                "max_s": max(t),
                "per_iteration_us": statistics.median(t) / n * 1e6,
                "overhead_us": max(statistics.median(t) - floor, 0.0) / n * 1e6,
            }
            for name, t in times.items()
        }
        ours, theirs = results[case]["ember"]["overhead_us"], results[case]["ignite"]["overhead_us"]
        results[case]["ember/ignite overhead ratio"] = ours / theirs if theirs else None
    return {"iterations": n, "repeats": repeats, "machine": platform.platform(), "python": sys.version.split()[0],
            "date": time.strftime("%Y-%m-%d"), "cases": results}


def table(report: dict) -> str:
    lines = [f"{report['iterations']} iterations, {report['repeats']} interleaved repeats (medians), "
             f"{report['machine']}, {report['date']}", ""]
    for case, rows in report["cases"].items():
        lines += [f"### {case}", "", "| loop | per iteration (µs) | overhead vs bare loop (µs) | min..max (s) |",
                  "|---|---:|---:|---|"]
        for name in RUNNERS:
            r = rows[name]
            lines.append(f"| {name} | {r['per_iteration_us']:.3f} | {r['overhead_us']:.3f} | "
                         f"{r['min_s']:.3f}..{r['max_s']:.3f} |")
        ratio = rows["ember/ignite overhead ratio"]
        lines += ["", f"ember overhead / ignite overhead: {ratio:.3f}" if ratio is not None else "", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200_000, help="iterations per run (default: 200000)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats (default: 7)")
    parser.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.iterations < 8 or args.repeats < 1:
        parser.error("--iterations must be >= 8 and --repeats >= 1")
    report = measure(args.iterations, args.repeats)
    print(table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
