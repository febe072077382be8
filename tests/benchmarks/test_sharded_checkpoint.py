"""benchmarks/sharded_checkpoint.py's figures are plausible: a small model, 2 processes, one repeat of each
variant (two torchrun jobs; marked `multiprocess_long`)."""

from __future__ import annotations

import pytest

from benchmarks.sharded_checkpoint import VARIANTS, measure, table

pytestmark = pytest.mark.multiprocess_long


def test_the_figures_are_plausible_and_the_table_shows_them() -> None:
    report = measure([2], params=4e5, layers=4, repeats=1, timeout=300)
    figures = report["figures"]["2"]
    for variant in VARIANTS:
        f = figures[variant]
        assert f["params"] == 4 * 316 * 316  # 4 square layers of the width that gives about 4e5 parameters
        assert 0 < f["save_s"]["median"] < 120 and 0 < f["load_s"]["median"] < 120
        assert f["peak_mb"]["median"] > 50  # a Python process with torch imported
        # The weights and the momentum in float32, plus the format's overhead:
        assert 2 * 4 * f["params"] <= f["bytes"] < 2 * 4 * f["params"] + 2**20
    ratio = figures["ratio_sharded_over_single"]
    assert ratio["save_s"] == figures["sharded"]["save_s"]["median"] / figures["single"]["save_s"]["median"]
    text = table(report)
    assert "| 2 | sharded / single |" in text and f"{ratio['load_s']:.2f}x" in text
