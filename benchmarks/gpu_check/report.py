"""The GPU check's markdown report: the parts' statuses, the issue's goals, then each part's own section.

Standard library only (the runner writes the report even when no worker could import torch).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.gpu_check.parts import BY_NAME, read_record

SECTIONS = (("setup", "Set-up"), ("correctness", "Correctness"), ("speed", "Speed"), ("machine", "The machine"))


def _ratio(loops: dict[str, Any], a: str, b: str) -> float | None:
    try:
        return loops[a]["train_samples_per_s"]["median"] / loops[b]["train_samples_per_s"]["median"]
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def goals(records: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Issue 26's goals for an H100-class GPU: (goal, measured, met) for each, from the parts' data."""
    loops = (records.get("throughput-mlp") or {}).get("data", {}).get("loops", {})
    launch = (records.get("launch-limit") or {}).get("data", {})
    speed = (records.get("speedrun") or {}).get("data", {}).get("variants", {})

    def check(value: float | None, ok: bool | None, text: str) -> tuple[str, str]:
        if value is None or ok is None:
            return "not measured", "-"
        return text, "yes" if ok else "**no**"

    rows = []
    for goal, a, b, least in (("ember ≥ 10× the seed's loop (fashion-mnist-mlp)", "ember", "seed", 10.0),
                              ("ember ≥ 1.5× Ignite (fashion-mnist-mlp)", "ember", "ignite", 1.5),
                              ("ember-fast ≥ 2× ember (fashion-mnist-mlp)", "ember-fast", "ember", 2.0)):
        r = _ratio(loops, a, b)
        rows.append((goal, *check(r, None if r is None else r >= least, f"{r:.2f}×" if r else "")))
    ratio = launch.get("epoch_over_limit")
    rows.append(("CUDA-graph epoch of the tutorial MLP within 2× the launch limit",
                 *check(ratio, None if ratio is None else ratio <= 2.0, f"{ratio:.2f}× the limit" if ratio else "")))
    times = [v["time_to_target_s"]["median"] for v in speed.values() if v.get("time_to_target_s")]
    best = min(times) if times else None
    rows.append(("speed run to 92% in under 2 s of training",
                 *check(best, None if best is None else best < 2.0, f"{best:.2f} s" if best else "")))
    return rows


def write_report(out: Path, names: list[str], *, dry: bool, seconds: float, command: str) -> Path:
    """Write OUT/report.md from OUT/<part>.json; returns its path."""
    records = {name: read_record(out, name) or {"status": "error: no record written", "seconds": 0.0,
                                                "markdown": "", "data": {}} for name in names}
    machine = (records.get("machine") or records.get("setup") or {}).get("data", {})
    device = machine.get("gpu_name") or "no CUDA device"
    title = "CPU dry run (figures meaningless: tiny sizes)" if dry else device
    lines = [f"# ember GPU check: {title}", "",
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; commit {machine.get('commit', 'unknown')}; "
             f"`{command}`; {seconds:.0f} s for all parts.", ""]
    lines += ["| part | status | seconds | limit (s) |", "|---|---|---:|---:|"]
    for name in names:
        rec, part = records[name], BY_NAME[name]
        limit = part.dry_timeout_s if dry else part.timeout_s
        lines.append(f"| {name} | {rec['status']} | {rec['seconds']:.1f} | {limit} |")
    lines += ["", "## Goals (issue 26, for an H100-class GPU)", ""]
    if dry:
        lines.append("Not evaluated in a CPU dry run.")
    else:
        lines += ["| goal | measured | met |", "|---|---|---|"]
        lines += [f"| {g} | {m} | {ok} |" for g, m, ok in goals(records)]
    for section, heading in SECTIONS:
        members = [n for n in names if BY_NAME[n].section == section]
        if not members:
            continue
        lines += ["", f"## {heading}"]
        for name in members:
            rec = records[name]
            lines += ["", f"### {BY_NAME[name].title} (`{name}`): {rec['status']}", ""]
            lines.append(rec.get("markdown") or "(nothing recorded)")
    lines += ["", "Files: `<part>.json` for each part (status, seconds, data); `logs/` holds the workers' output."]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
