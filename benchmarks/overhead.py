"""The engine's own cost per iteration: ember vs ignite vs a bare loop, trivial step, in-memory data.

Interleaved repeats, medians; overhead = (loop time - bare loop time) / iterations, where the bare loop makes the
same handler calls and filter tests inline. The last case attaches two of Ignite's own handlers to both engines:
there the bare loop runs the step only, and what matters is that ember costs no more than Ignite.
Run: python benchmarks/overhead.py [--iterations 200000] [--repeats 7] [--json out.json]
     (or python -m benchmarks.overhead ...)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a script: import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from ignite.engine import Engine as IgniteEngine  # noqa: E402
from ignite.engine import Events as IgniteEvents  # noqa: E402
from ignite.handlers import TerminateOnNan  # noqa: E402
from ignite.metrics import RunningAverage  # noqa: E402

from benchmarks._report import add_json_option, markdown_table, publish, spread  # noqa: E402
from ember.engine import Engine, Events  # noqa: E402


def step(engine: object, batch: int) -> int:
    """A trivial process function: the benchmark measures the loop around it."""
    return batch


def handler(engine: object) -> None:
    """A trivial handler: the benchmark measures the dispatch around it."""


def every_seventh(engine: object, event: int) -> bool:
    """A custom event filter (`event_filter=`), called on every iteration."""
    return event % 7 == 0


def bare(data: list, epochs: int, case: str) -> None:
    """The floor: a plain for loop doing the same calls and filter tests as the case's handlers, inline."""
    iteration = 0
    for _ in range(epochs):
        for batch in data:
            iteration += 1
            if case == FIVE and iteration % 50 == 0:
                handler(None)
            step(None, batch)
            if case == FIVE:
                handler(None)
                if every_seventh(None, iteration):
                    handler(None)
            if case in (ONE, FIVE) and iteration % 100 == 0:
                handler(None)
        if case == FIVE:
            handler(None)


def attach(engine: object, events: type, case: str) -> None:
    """The case's handlers on `engine`, through the Ignite API that both engines share."""
    if case == FIVE:
        engine.add_event_handler(events.ITERATION_COMPLETED, handler)
        engine.add_event_handler(events.ITERATION_STARTED(every=50), handler)
        engine.add_event_handler(events.ITERATION_COMPLETED(event_filter=every_seventh), handler)
        engine.add_event_handler(events.EPOCH_COMPLETED, handler)
    if case == IGNITE_HANDLERS:
        RunningAverage(output_transform=float).attach(engine, "avg")
        engine.add_event_handler(events.ITERATION_COMPLETED, TerminateOnNan(output_transform=float))
    elif case != NONE:
        engine.add_event_handler(events.ITERATION_COMPLETED(every=100), handler)


def with_engine(engine_cls: type, events: type) -> Callable[[list, int, str], None]:
    def run(data: list, epochs: int, case: str) -> None:
        engine = engine_cls(step)
        attach(engine, events, case)
        engine.run(data, max_epochs=epochs)

    return run


NONE = "no handlers"
ONE = "one handler on ITERATION_COMPLETED(every=100)"
FIVE = ("five handlers: ITERATION_COMPLETED, ITERATION_COMPLETED(every=100), ITERATION_STARTED(every=50), "
        "ITERATION_COMPLETED(event_filter=fn), EPOCH_COMPLETED")
IGNITE_HANDLERS = "Ignite's RunningAverage and TerminateOnNan (bare loop: the step only)"
CASES = (NONE, ONE, FIVE, IGNITE_HANDLERS)
RUNNERS: dict[str, Callable[[list, int, str], None]] = {
    "bare loop": bare,
    "ember": with_engine(Engine, Events),
    "ignite": with_engine(IgniteEngine, IgniteEvents),
}


def measure(iterations: int, repeats: int, epochs: int = 4) -> dict:
    """Time every runner `repeats` times, interleaved, in every case; return per-iteration figures."""
    results: dict = {}
    for case in CASES:
        # Ignite's own handlers cost about 100x the loop: a twentieth of the iterations measures them as well.
        data = list(range(iterations // epochs // (20 if case == IGNITE_HANDLERS else 1)))
        n = len(data) * epochs
        times: dict[str, list[float]] = {name: [] for name in RUNNERS}
        for _ in range(repeats):
            for name, runner in RUNNERS.items():
                t0 = time.perf_counter()
                runner(data, epochs, case)
                times[name].append(time.perf_counter() - t0)
        floor = statistics.median(times["bare loop"])
        results[case] = {
            "iterations": n,
            **{name: {
                **spread(t, "_s"),
                "per_iteration_us": statistics.median(t) / n * 1e6,
                "overhead_us": max(statistics.median(t) - floor, 0.0) / n * 1e6,
            }
            for name, t in times.items()},
        }
        ours, theirs = results[case]["ember"]["overhead_us"], results[case]["ignite"]["overhead_us"]
        results[case]["ember/ignite overhead ratio"] = ours / theirs if theirs else None
    return {"iterations": iterations, "repeats": repeats, "machine": platform.platform(),
            "python": sys.version.split()[0],
            "date": time.strftime("%Y-%m-%d"), "cases": results}


def table(report: dict) -> str:
    lines = [f"{report['iterations']} iterations, {report['repeats']} interleaved repeats (medians), "
             f"{report['machine']}, {report['date']}", ""]
    for case, rows in report["cases"].items():
        lines += [f"### {case} ({rows['iterations']} iterations)", ""]
        cells = []
        for name in RUNNERS:
            r = rows[name]
            cells.append([name, f"{r['per_iteration_us']:.3f}", f"{r['overhead_us']:.3f}",
                          f"{r['min_s']:.3f}..{r['max_s']:.3f}"])
        lines += markdown_table(["loop", "per iteration (µs)", "overhead vs bare loop (µs)", "min..max (s)"], cells,
                                "lrrl")
        ratio = rows["ember/ignite overhead ratio"]
        lines += ["", f"ember overhead / ignite overhead: {ratio:.3f}" if ratio is not None else "", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200_000, help="iterations per run (default: 200000)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats (default: 7)")
    add_json_option(parser)
    args = parser.parse_args(argv)
    if args.iterations < 80 or args.repeats < 1:
        parser.error("--iterations must be >= 80 and --repeats >= 1")
    report = measure(args.iterations, args.repeats)
    publish(table(report), report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
