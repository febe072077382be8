"""What the four benchmark programs share: medians with min..max, markdown tables, the `--json` report file.

Every program times interleaved repeats, summarises each series as its median with min..max, prints a
markdown table and, with `--json FILE`, writes the whole report (figures and machine) as indented JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Iterable, Sequence
from typing import Any, Literal


def spread(values: Sequence[float], suffix: str = "") -> dict[str, float]:
    """The median, min and max of a series of repeats, keyed `median`, `min`, `max` (each + `suffix`)."""
    return {f"median{suffix}": statistics.median(values), f"min{suffix}": min(values), f"max{suffix}": max(values)}


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]],
                   align: Sequence[Literal["l", "r"]]) -> list[str]:
    """The lines of a markdown table: `header`, then one line per row; `align` is "l" or "r" per column."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return lines


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """The `--json FILE` option every benchmark takes."""
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")


def publish(text: str, report: dict[str, Any], json_path: str | None) -> None:
    """Print the report's table; write the report to `json_path` as indented JSON when one is given."""
    print(text)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=2)
