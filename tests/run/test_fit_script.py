"""The run guarantees hold for a plain script: tests/run/programs/user_script.py, a user's own model and
DataLoader around `ember.fit`, run as child processes (started together so that their start-up overlaps).

Graceful stop on SIGTERM, SIGINT, SIGHUP and SIGUSR1 (finish the iteration, checkpoint, exit 128 + signal), exact
resume of the same run, a second Ctrl-C that aborts in one line, a signal during the last evaluation of a
finished run (exit 0), a NaN loss (exit 1, last good checkpoint kept), and a process-group SIGTERM with
DataLoader workers (4 runs in `make test`, 20 runs out of 20 under the multiprocess_long marker).
"""

from __future__ import annotations

import concurrent.futures
import random
import re
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from harness import Child, assert_same, load_payload
from torch import nn

import ember
from ember.callbacks import Checkpoint
from ember.run import RunError, RunRecord
from ember.steps import create_trainer

PROGRAMS = Path(__file__).resolve().parent / "programs"
STEPS = 12  # 48 samples, batch 8, 2 epochs
SIGNALS = {"SIGTERM": 143, "SIGINT": 130, "SIGHUP": 129, "SIGUSR1": 138}


def script(folder: Path, *flags: str) -> list[str]:
    return [sys.executable, str(PROGRAMS / "user_script.py"), str(folder), *flags]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("fit")
    specs = {
        "straight": (script(base / "straight"), False),
        **{name: (script(base / name, "--pause-at", "4"), False) for name in SIGNALS},
        "async": (script(base / "async", "--pause-at", "4", "--async-checkpoint"), False),
        "double": (script(base / "double", "--pause-at", "7", "--stuck"), True),
        "last_eval": (script(base / "last_eval", "--pause-in-last-epoch-end"), False),
        "nan": (script(base / "nan", "--nan-at", "8"), False),
    }
    children = {name: Child(cmd, new_session=group) for name, (cmd, group) in specs.items()}
    try:
        yield {"base": base, "children": children}
    finally:
        for child in children.values():
            child.close()


def final_state(folder: Path) -> dict:
    return load_payload(Checkpoint.latest(folder))


def rerun(folder: Path, *flags: str) -> Child:
    """user_script.py started again on `folder`, in a child process. Not in this process: its
    DataLoader workers would be forked from pytest's threads, and such a worker may hang, stalling whatever test
    collects the loader (40 s of worker joins)."""
    return Child(script(folder, *flags))


@pytest.fixture(scope="module")
def straight(runs) -> dict:
    """The final checkpoint of an uninterrupted run (started with the other children)."""
    child = runs["children"]["straight"]
    assert child.wait() == 0, child.describe()
    return final_state(runs["base"] / "straight")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SIGNALS))
def test_each_stop_signal_finishes_the_iteration_checkpoints_and_a_rerun_resumes_exactly(runs, straight, name):
    child = runs["children"][name]
    child.wait_for(lambda line: line == "PAUSE 4")
    child.signal(getattr(signal, name))
    assert child.wait() == SIGNALS[name], child.describe()
    assert f"Stopped by {name} at epoch 1, iteration 4" in child.stdout, child.describe()
    assert "Traceback" not in child.stderr, child.describe()
    folder = runs["base"] / name
    assert final_state(folder)["step"] == 4
    if name != "SIGTERM":
        return  # one rerun is enough to show the resume: the stop is the same for every signal

    again = rerun(folder)
    assert again.wait() == 0, again.describe()
    assert "Resumed from" in again.stdout and "epoch 1, iteration 4" in again.stdout, again.describe()
    resumed = final_state(folder)
    assert resumed["step"] == straight["step"] == STEPS
    for part in ("model", "optimizer", "trainer"):
        assert_same(straight["objects"][part], resumed["objects"][part], part)
    assert resumed["objects"]["run"]["config"] == {"lr": 0.1, "max_epochs": 2}


@pytest.mark.slow
def test_sigterm_with_async_checkpoints_waits_for_the_save_in_flight_and_resumes_exactly(runs, straight):
    child = runs["children"]["async"]
    child.wait_for(lambda line: line == "PAUSE 4")
    child.signal(signal.SIGTERM)
    assert child.wait() == 143, child.describe()
    folder = runs["base"] / "async"
    # the stop's message names the file only once the background write has finished
    assert f"Stopped by SIGTERM at epoch 1, iteration 4; checkpoint saved in {folder}" in child.stdout, \
        child.describe()
    assert "Traceback" not in child.stderr and child.stderr.count("asynchronous saves hold a snapshot") == 1
    assert final_state(folder)["step"] == 4
    again = rerun(folder, "--async-checkpoint")
    assert again.wait() == 0 and "Resumed from" in again.stdout, again.describe()
    resumed = final_state(folder)
    assert resumed["step"] == straight["step"] == STEPS
    for part in ("model", "optimizer", "trainer"):
        assert_same(straight["objects"][part], resumed["objects"][part], part)


@pytest.mark.slow
def test_a_second_ctrl_c_aborts_with_130_in_one_line(runs):
    child = runs["children"]["double"]
    child.wait_for(lambda line: line == "PAUSE 7")  # a handler that will not return
    child.signal(signal.SIGINT, group=True)
    deadline = time.monotonic() + 30
    while "SIGINT received" not in child.stderr and time.monotonic() < deadline:
        time.sleep(0.02)
    child.signal(signal.SIGINT, group=True)
    assert child.wait(timeout=20) == 130, child.describe()
    after = child.stderr.split("SIGINT received", 1)[1].strip().splitlines()[1:]
    assert after == ["ember: aborted by a second interrupt; the checkpoints saved so far are kept"], child.describe()
    assert final_state(runs["base"] / "double")["step"] == 6  # epoch 1's; the abort saves nothing


@pytest.mark.slow
def test_a_signal_during_the_last_evaluation_of_a_finished_run_exits_0(runs):
    child = runs["children"]["last_eval"]
    child.wait_for(lambda line: line == f"PAUSE {STEPS}")
    child.signal(signal.SIGTERM)
    assert child.wait() == 0, child.describe()
    assert "the run had finished" in child.stdout and "RESULT 0 finished=True" in child.stdout, child.describe()
    assert final_state(runs["base"] / "last_eval")["step"] == STEPS


@pytest.mark.slow
def test_a_nan_loss_exits_1_and_keeps_the_last_good_checkpoint(runs):
    child = runs["children"]["nan"]
    assert child.wait() == 1, child.describe()
    assert "RESULT 1 finished=False reason=nan" in child.stdout
    assert final_state(runs["base"] / "nan")["step"] == 6  # epoch 1's; iteration 8 onwards is NaN


def stop_runs_by_group_sigterm(child: Child, tries: int, seed: int) -> list[list[str]]:
    """Start `tries` runs in `child` one after the other, each stopped by a SIGTERM to its process group."""
    rng = random.Random(seed)
    results = []
    for k in range(tries):
        child.send(k)  # start run k
        child.wait_for(lambda line, k=k: line == f"READY {k}")
        time.sleep(rng.uniform(0, 0.03))
        child.signal(signal.SIGTERM, group=True)
        results.append(child.wait_for(lambda line, k=k: line.startswith(f"RESULT {k} ")).split()[2:])
    assert child.wait() == 0, child.describe()
    assert "Traceback" not in child.stderr and "exited unexpectedly" not in child.stderr, child.describe()
    return results


@pytest.mark.slow
@pytest.mark.parametrize("processes, tries, plain", [
    pytest.param(2, 2, False, id="make_loader-4-runs"),
    pytest.param(1, 1, True, id="plain-1-run"),
    pytest.param(4, 5, False, id="make_loader-20-runs", marks=pytest.mark.multiprocess_long),
    pytest.param(1, 2, True, id="plain-2-runs", marks=pytest.mark.multiprocess_long),
])
def test_process_group_sigterm_with_dataloader_workers_stops_every_run_with_a_checkpoint(tmp_path, processes, tries,
                                                                                         plain):
    """The workers die of the same SIGTERM (plain) or ignore it (make_loader's); either way 143. The runs are
    `processes` processes of `tries` runs each, driven at once (a stopped DataLoader may wait seconds for its
    workers, idle time that the other processes use): 4 runs in `make test`, 20 under multiprocess_long."""
    children = [Child([sys.executable, str(PROGRAMS / "group_sigterm.py"), str(tmp_path / f"group{g}"), str(tries),
                       *(["--plain"] if plain else [])], new_session=True, stdin=True) for g in range(processes)]
    try:
        with concurrent.futures.ThreadPoolExecutor(processes) as pool:
            results = [r for rs in pool.map(stop_runs_by_group_sigterm, children, [tries] * processes,
                                             range(processes)) for r in rs]
    finally:
        for child in children:
            child.close()
    assert len(results) == tries * processes
    assert all(status == "143" and stop == step for status, stop, step in results), results


def tiny_run(folder: Path, **kwargs) -> ember.RunResult:
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    trainer = create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.mse_loss)
    data = [(torch.randn(4, 2), torch.randn(4, 1)) for _ in range(3)]
    return ember.fit(trainer, data, objects={"model": model}, checkpoint_dir=folder, progress=False, **kwargs)


def test_a_fresh_run_never_writes_into_another_runs_folder(tmp_path, capsys):
    assert tiny_run(tmp_path, max_epochs=1, config={"lr": 0.1}).exit_status == 0
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(RunError, match=r"holds the checkpoints of another run \(run .+\); .* resume=True"):
        tiny_run(tmp_path, max_epochs=2, config={"lr": 0.1})
    with pytest.raises(RunError, match=r"lr=0.5 differs from the run being resumed in .+, which has lr=0.1"):
        tiny_run(tmp_path, max_epochs=2, config={"lr": 0.5}, resume=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files


def test_resume_with_fewer_epochs_than_done_changes_nothing(tmp_path, capsys):
    assert tiny_run(tmp_path, max_epochs=2).exit_status == 0
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    result = tiny_run(tmp_path, max_epochs=1, resume=True)
    assert result.exit_status == 0 and result.finished
    assert re.search(r"Nothing to do: .* already finished 2 epochs \(iteration 6\)", capsys.readouterr().out)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files
    more = tiny_run(tmp_path, max_epochs=3, resume=True)  # more epochs: applied
    assert more.exit_status == 0 and final_state(tmp_path)["step"] == 9


def test_each_run_gets_its_own_folder_and_records_its_identity(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = tiny_run(None, max_epochs=1), tiny_run(None, max_epochs=1)
    assert first.checkpoint_dir != second.checkpoint_dir
    assert Path(first.checkpoint_dir).parent == Path(second.checkpoint_dir).parent == Path("checkpoints")
    record = RunRecord("")
    Checkpoint.load(Checkpoint.latest(second.checkpoint_dir), {"run": record})
    assert record.run_id == second.run_id and record.config == {"max_epochs": 1}
