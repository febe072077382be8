"""The checkpoint-stall benchmark runs end to end on a small model, and its figures are plausible."""

import json
import math
import threading
import time

import pytest
import torch

from benchmarks import checkpoint_stall
from ember.checkpoint.folder import CheckpointFolder


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
        # each window's save is one write (a save on an epoch's last iteration would be written twice)
        assert report["writes"][mode] == report["repeats"], mode
    # a synchronous save call contains its whole write; an asynchronous one only the snapshot
    assert report["save_call_s"]["sync"]["min"] >= report["write_s"]["sync"]["min"]
    # a window holds its whole save: one whose background write outlasted the planned steps stepped on
    assert report["async_extra_steps"] >= 0
    assert report["async_write_done_in_window"] is (report["async_extra_steps"] == 0)
    stall = report["stall_s"]
    expected = stall["async"]["median"] / stall["sync"]["median"] if stall["sync"]["median"] > 0 else math.nan
    ratio = report["async_to_sync_stall_ratio"]
    assert ratio == expected or (math.isnan(ratio) and math.isnan(expected))
    assert not (tmp_path / "scratch").exists(), "the scratch folder is removed"


def test_a_window_steps_on_until_its_background_write_has_ended_and_counts_it(tmp_path, monkeypatch):
    """A background write slower than the planned window (here by 0.4 s of sleep in the writer thread, while
    steps take milliseconds) lengthens its window rather than leaving the write outside the measurement."""
    real_write = CheckpointFolder.write
    slow = 0.4
    slept: list[bool] = []  # per write: whether it ran in the background writer (and slept there)

    def write(self, *args, **kwargs):
        background = threading.current_thread() is not threading.main_thread()
        slept.append(background)
        if background:
            time.sleep(slow)
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(CheckpointFolder, "write", write)
    report = checkpoint_stall.measure(2e4, 1, str(tmp_path / "scratch"), torch.device("cpu"), window_steps=4)
    assert report["window_steps"] == 4
    assert report["write_s"]["async"]["min"] >= slow
    # calibration and measurement: one synchronous and one background write each, only the latter slowed
    assert sorted(slept) == [False, False, True, True]
    assert report["async_write_done_in_window"] is False
    (window,) = [w for w in report["windows"] if w["mode"] == "async"]
    assert report["async_extra_steps"] == window["steps"] - 4 >= 1
    assert window["window_s"] >= slow, "the window ended before its write did"


@pytest.mark.parametrize("argv, flag", [(["--threads", "0"], "--threads"), (["--parameters", "10"], "--parameters")])
def test_bad_arguments_get_one_line_in_terms_of_the_flags(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        checkpoint_stall.main([*argv, "--dir", "unused"])
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err
