"""The overhead benchmark harness runs end to end on a tiny configuration (its speed is not tested here)."""

import json

from benchmarks import overhead


def test_overhead_benchmark_prints_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "overhead.json"
    assert overhead.main(["--iterations", "400", "--repeats", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| ember |" in printed and "| ignite |" in printed and "| bare loop |" in printed
    report = json.loads(out.read_text())
    assert report["iterations"] == 400
    for case in report["cases"].values():
        assert {"ember", "ignite", "bare loop"} <= set(case)
        assert case["ember"]["median_s"] > 0 and case["ignite"]["per_iteration_us"] > 0
