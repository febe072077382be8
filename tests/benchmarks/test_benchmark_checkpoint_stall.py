"""The checkpoint-stall benchmark runs end to end on a small model, and its figures are plausible."""

import json
import math

from benchmarks import checkpoint_stall


def test_checkpoint_stall_figures_are_plausible(tmp_path, capsys):
    out = tmp_path / "stall.json"
    assert checkpoint_stall.main(["--parameters", "2e5", "--repeats", "1", "--dir", str(tmp_path / "scratch"),
                                  "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| sync |" in printed and "| async |" in printed and "async / sync stall" in printed
    report = json.loads(out.read_text())
    parameters = report["parameters"]
    assert abs(parameters - 2e5) / 2e5 < 0.05
    # the file holds the weights and SGD's momentum in float32; the snapshot as much, in host memory
    assert report["checkpoint_bytes"] > 8 * parameters and report["snapshot_bytes"] >= 8 * parameters
    assert report["window_steps"] >= 4 and report["step_s"]["median"] > 0
    for mode in ("sync", "async"):
        assert report["write_s"][mode]["min"] > 0, mode
    # a synchronous save call contains its whole write; an asynchronous one only the snapshot
    assert report["save_call_s"]["sync"]["min"] >= report["write_s"]["sync"]["min"]
    assert report["async_write_done_in_window"] is True
    stall = report["stall_s"]
    expected = stall["async"]["median"] / stall["sync"]["median"] if stall["sync"]["median"] > 0 else math.nan
    ratio = report["async_to_sync_stall_ratio"]
    assert ratio == expected or (math.isnan(ratio) and math.isnan(expected))
    assert not (tmp_path / "scratch").exists(), "the scratch folder is removed"
