"""What `import ember` costs over `import ignite.engine`, which it builds on: fresh interpreters, interleaved.

Each repeat starts one fresh `python -X importtime -c "import M"` per module (the order alternates between
repeats) and records three figures: the process's wall time, its CPU time (user + system, which other load on
the machine disturbs less), and the import time Python itself reports (the sum of the top-level entries of
`-X importtime`). The figure that matters is the difference, ember minus ignite.engine, per repeat; the table
gives medians with min..max. `python -c pass` is the interpreter's own start-up, for scale.
Run: python -m benchmarks.import_time [--repeats 7] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import date
from typing import Any

from benchmarks._report import add_json_option, markdown_table, publish, spread

MODULES = ("ember", "ignite.engine", "pass")
GOAL_S = 0.2
"""ember's goal: `import ember` within this many seconds of `import ignite.engine`."""


def importtime_s(stderr: str) -> float:
    """Seconds of importing, from `-X importtime` output: the sum of its top-level (unindented) entries."""
    total_us = 0
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = line.split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue  # the header line
        name = parts[2]
        if name.startswith(" ") and not name.startswith("  "):  # one space: a top-level import
            total_us += int(parts[1])
    return total_us / 1e6


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(module: str) -> tuple[float, float, float]:
    """(wall, CPU, -X importtime) seconds of one fresh interpreter importing `module` ("pass": nothing)."""
    code = "pass" if module == "pass" else f"import {module}"
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    start, cpu = time.perf_counter(), _children_cpu_s()
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, env=env)
    wall, cpu = time.perf_counter() - start, _children_cpu_s() - cpu
    if done.returncode != 0:
        raise RuntimeError(f"`python -c {code!r}` failed: {done.stderr.strip().splitlines()[-1:]}")
    return wall, cpu, importtime_s(done.stderr)


def run(repeats: int) -> dict[str, Any]:
    """The report: per module its wall, CPU and import-time series, and ember minus ignite.engine per repeat."""
    series: dict[str, dict[str, list[float]]] = {m: {"wall": [], "cpu": [], "importtime": []} for m in MODULES}
    measure("ember")  # warm the file cache once, so the first repeat is not the only cold one
    for r in range(repeats):
        for module in MODULES if r % 2 == 0 else reversed(MODULES):
            for kind, value in zip(("wall", "cpu", "importtime"), measure(module)):
                series[module][kind].append(value)
    extra = {kind: [e - g for e, g in zip(series["ember"][kind], series["ignite.engine"][kind])]
             for kind in ("wall", "cpu", "importtime")}
    return {
        "machine": platform.platform(), "python": platform.python_version(), "date": date.today().isoformat(),
        "repeats": repeats, "goal_s": GOAL_S,
        "modules": {m: {k: v for kind, values in series[m].items() for k, v in spread(values, f"_{kind}_s").items()}
                    for m in MODULES},
        "ember_minus_ignite_engine": {k: v for kind, values in extra.items()
                                      for k, v in spread(values, f"_{kind}_s").items()},
    }


def render(report: dict[str, Any]) -> str:
    rows = []
    for module, fig in report["modules"].items():
        rows.append((f"`{'python -c pass' if module == 'pass' else 'import ' + module}`",
                     f"{fig['median_wall_s']:.3f}", f"{fig['min_wall_s']:.3f}..{fig['max_wall_s']:.3f}",
                     f"{fig['median_cpu_s']:.3f}", f"{fig['median_importtime_s']:.3f}"))
    extra = report["ember_minus_ignite_engine"]
    rows.append(("ember − ignite.engine (per repeat)", f"{extra['median_wall_s']:.3f}",
                 f"{extra['min_wall_s']:.3f}..{extra['max_wall_s']:.3f}", f"{extra['median_cpu_s']:.3f}",
                 f"{extra['median_importtime_s']:.3f}"))
    lines = [f"{report['repeats']} interleaved repeats (medians), {report['machine']}, {report['date']}", ""]
    lines += markdown_table(["command", "wall (s)", "wall min..max (s)", "CPU (s)", "-X importtime (s)"], rows,
                            ["l", "r", "l", "r", "r"])
    lines += ["", f"goal: import ember within {report['goal_s']} s of import ignite.engine: " + ", ".join(
        f"{kind} {'met' if extra[f'median_{kind}_s'] <= report['goal_s'] else 'NOT met'}"
        for kind in ("wall", "cpu", "importtime"))]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats (default: 7)")
    add_json_option(parser)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    report = run(args.repeats)
    publish(render(report), report, args.json)


if __name__ == "__main__":
    main()
