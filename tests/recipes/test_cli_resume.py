"""`ember train --resume` through the run folder: what it accepts (a run id, a run folder, a checkpoint file, the
run's TensorBoard folder), what it refuses in one line without writing anything, how often it reads the newest
checkpoint, the folder's lock, TensorBoard folders as unique as checkpoint folders, and runs that fail at start."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fakedata import offline, write_fashion_mnist

from ember.recipes.cli import main
from ember.run import RunFolder

TOOLS = Path(__file__).resolve().parents[2] / "tools"
MLP = "fashion-mnist-mlp"  # 256 training images at batch 64: 4 iterations an epoch
QUIET = ["--data-root", "fashion", "--device", "cpu", "--no-progress"]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    write_fashion_mnist(tmp_path / "fashion", n_train=256, n_test=64)
    monkeypatch.chdir(tmp_path)
    offline(monkeypatch, tmp_path)


def train(capsys, *flags: str) -> tuple[int, str, str]:
    rc = main(["train", MLP, *QUIET, *flags])
    out, err = capsys.readouterr()
    return rc, out, err


def files(folder: str | Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.name != ".lock"}


def tree(folder: str | Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def resumed_from(out: str) -> str:
    (line,) = [x for x in out.splitlines() if x.startswith("Resumed from ")]
    return line.removeprefix("Resumed from ").split(" at epoch")[0]


def test_the_resume_path_reads_the_newest_checkpoint_twice_and_lists_the_folder_once_to_scan(capsys):
    spec = importlib.util.spec_from_file_location("resume_reads", TOOLS / "resume_reads.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    opened, listed = tool.count()  # counted until the resumed run's training starts
    # the run folder's scan peeks at each file's metadata once, the restore reads (and verifies) the newest
    # once, and the Checkpoint handler's tidy-up of a resumed folder (keep_last after a kill) peeks again
    assert opened == {"checkpoint_000000006.pt": 3, "checkpoint_000000004.pt": 2}, opened
    assert listed == 3, listed  # the run folder's one scan; the handler's stale-temp-file sweep and tidy-up


def test_resume_takes_a_run_id_a_run_folder_a_checkpoint_file_or_the_runs_tensorboard_folder(capsys):
    assert train(capsys, "--epochs", "2", "--max-iterations", "2")[0] == 0
    (folder,) = Path("checkpoints", MLP).iterdir()
    logdir = Path("runs", MLP, folder.name)
    for flags in (["--resume", folder.name], ["--resume", str(folder)], ["--resume", str(logdir)]):
        rc, out, err = train(capsys, *flags, "--max-iterations", "3")
        assert rc == 0 and resumed_from(out) == str(folder / "checkpoint_000000002.pt"), flags + [out, err]
        (folder / "checkpoint_000000003.pt").unlink()
    rc, out, err = train(capsys, "--resume", str(folder / "checkpoint_000000002.pt"), "--max-iterations", "4")
    assert rc == 0 and resumed_from(out) == str(folder / "checkpoint_000000002.pt"), out + err


def test_resume_file_uses_exactly_that_file_and_refuses_a_file_that_is_not_an_ember_checkpoint(capsys):
    assert train(capsys, "--epochs", "2", "--no-tensorboard", "--checkpoint-dir", "ck", "--keep-last", "5")[0] == 0
    assert sorted(files("ck")) == [f"checkpoint_00000000{i}.pt" for i in (4, 8)]
    rc, out, err = train(capsys, "--resume", "ck/checkpoint_000000004.pt", "--max-iterations", "5")
    assert rc == 0 and resumed_from(out) == "ck/checkpoint_000000004.pt", out + err
    assert "checkpoint_000000005.pt" in files("ck")

    Path("plain").mkdir()
    torch.save(torch.nn.Linear(2, 2).state_dict(), "plain/model.pt")
    before = tree(".")
    rc, out, err = train(capsys, "--resume", "plain/model.pt")
    assert rc == 1 and out == "" and err.count("\n") == 1, out + err
    assert "--resume plain/model.pt: plain/model.pt loads, but is not an ember checkpoint" in err, err
    assert tree(".") == before


@pytest.mark.parametrize("kind", ["empty", "other files", "missing", "tensorboard folder without its run"])
def test_resume_of_a_folder_without_a_checkpoint_is_refused_in_one_line_and_writes_nothing(capsys, kind):
    target = Path("somewhere")
    if kind != "missing":
        target.mkdir()
    if kind == "other files":
        (target / "notes.txt").write_text("hello")
    if kind.startswith("tensorboard"):
        (target / "events.out.tfevents.1.host").write_bytes(b"x")
    before = tree(".")
    rc, out, err = train(capsys, "--resume", str(target))
    assert rc == 1 and out == "" and err.count("\n") == 1 and "Traceback" not in err, out + err
    expected = {"empty": "somewhere holds no run to resume: it is empty; nothing was written",
                "other files": "it holds no checkpoint (only notes.txt)",
                "missing": "--resume somewhere: no such run id, run folder or checkpoint file",
                "tensorboard folder without its run": "it holds no checkpoint (only events.out.tfevents.1.host)"}[kind]
    assert expected in err, err
    assert tree(".") == before and not Path("checkpoints").exists() and not Path("runs").exists()


def test_resume_with_max_iterations_already_reached_has_nothing_to_do(capsys):
    assert train(capsys, "--epochs", "2", "--no-tensorboard", "--checkpoint-dir", "ck", "--max-iterations", "5")[0] == 0
    before = files("ck")
    for n in ("5", "3"):
        rc, out, err = train(capsys, "--resume", "ck", "--max-iterations", n)
        assert rc == 0 and "Nothing to do: the run in ck is already at iteration 5" in out, out + err
        assert "Epoch" not in out and files("ck") == before, out


def test_a_run_folder_in_use_is_refused_naming_the_pid_and_freed_when_its_process_dies(capsys):
    assert train(capsys, "--epochs", "1", "--no-tensorboard", "--checkpoint-dir", "ck", "--max-iterations", "1")[0] == 0
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from ember.run import RunFolder; r = RunFolder.open(sys.argv[1]); "
                               "r.lock(); print('locked', flush=True); sys.stdin.read()", "ck"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
            sys.path)})
    try:
        assert holder.stdout.readline() == "locked\n"
        before = files("ck")
        for flags in (["--checkpoint-dir", "ck", "--resume"], ["--resume", "ck"], ["--checkpoint-dir", "ck"]):
            rc, out, err = train(capsys, "--no-tensorboard", *flags)
            assert rc == 1 and out == "" and err.count("\n") == 1, flags + [out, err]
            assert f"ck is in use by another run (pid {holder.pid})" in err, err
            assert files("ck") == before
    finally:
        holder.kill()  # the kernel lets go of its lock
        holder.wait()
    rc, out, err = train(capsys, "--no-tensorboard", "--resume", "ck", "--max-iterations", "2")
    assert rc == 0 and resumed_from(out) == "ck/checkpoint_000000001.pt", out + err


def test_two_runs_on_one_folder_at_once_one_is_refused(capsys):
    first = RunFolder.open("ck")
    first.lock()
    try:
        rc, out, err = train(capsys, "--no-tensorboard", "--checkpoint-dir", "ck")
        assert rc == 1 and f"(pid {os.getpid()})" in err, err  # a second lock is refused even in one process
    finally:
        first.close()
    assert not Path("ck").exists()  # made for a run that never saved: removed


def test_checkpoint_folders_with_one_name_get_their_own_tensorboard_folders(capsys):
    for parent in ("a", "b"):
        rc, out, err = train(capsys, "--epochs", "1", "--max-iterations", "1", "--checkpoint-dir", f"{parent}/exp")
        assert rc == 0, err
        if parent == "a":
            first = tree("runs")
    logdirs = sorted(Path("runs", MLP).iterdir())
    assert len(logdirs) == 2 and all(p.name.startswith("exp-") for p in logdirs), logdirs
    assert all(tree("runs")[name] == data for name, data in first.items())  # the first run's events untouched
    rc, out, err = train(capsys, "--resume", "a/exp", "--epochs", "1", "--max-iterations", "2")  # same folder again
    assert rc == 0 and sorted(Path("runs", MLP).iterdir()) == logdirs, out + err


def test_a_new_run_refuses_a_tensorboard_folder_holding_another_runs_events(capsys):
    assert train(capsys, "--epochs", "1", "--max-iterations", "1", "--logdir", "tb")[0] == 0
    before = tree("tb")
    rc, out, err = train(capsys, "--epochs", "1", "--max-iterations", "1", "--logdir", "tb")
    assert rc == 1 and err.count("\n") == 1 and "--logdir tb already holds the TensorBoard events" in err, err
    assert tree("tb") == before


def test_a_run_that_fails_before_its_first_step_leaves_no_folder(capsys):
    rc = main(["train", MLP, "--data-root", "nowhere", "--device", "cpu", "--no-progress"])
    assert rc == 2
    assert not Path("checkpoints", MLP).exists() or not any(Path("checkpoints", MLP).iterdir())
