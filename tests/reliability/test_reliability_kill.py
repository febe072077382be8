"""Promise 1: whole checkpoints under kill -9.

A fork server (programs/kill_server.py) runs a small shuffled Dropout training that checkpoints
every iteration; the test SIGKILLs it 5 times per keep setting at seeded moments (random times, and inside a
save: half-way through writing the temp file, before the rename, between the rename and the eviction, just after
the save) under three keep settings (keep-last 1; keep-last 1 + best-2 by a score with NaN/Inf; best-1 only). After
each kill every file with a checkpoint's name loads whole, `Checkpoint.latest` finds the newest save that
had returned, and the next run resumes from it and removes the dead run's temp files; the runs that finish
equal an uninterrupted run bit for bit. The campaign and the fsync order run twice: with synchronous saves and
with `async_save=True`, where the kills stop the background writer thread while training goes on. `make test`
runs one keep setting with each kind of save (10 kills); the multiprocess_long marker runs the other four pairs.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
import warnings
from pathlib import Path

import pytest
import torch
from harness import (
    Child,
    assert_same,
    checkpoint_files,
    load_payload,
    python,
    temp_files,
)
from torch import nn
from torch.nn import functional as F

import ember.callbacks.checkpoint as ckmod
from ember.callbacks import Checkpoint
from ember.steps import create_trainer

KINDS = ("write", "rename", "evict", "saved", "time")
TOTAL_ITERATIONS = 32


class KillServer:
    """Drives kill_server.py: one forked run per `start`."""

    def __init__(self, child: Child, background: bool = False) -> None:
        self.child = child
        self.background = background

    def start(self, dirname: Path, config: str, **cmd: object) -> tuple[int, dict]:
        cmd = {"async": self.background, **cmd}
        self.child.send({"dir": str(dirname), "config": config, **cmd})
        pid = self.child.events(ev="child")["pid"]
        return pid, self.child.events(ev="started", pid=pid)

    def finish(self, dirname: Path, config: str, out: Path, background: bool | None = None) -> dict:
        pid, _ = self.start(dirname, config, out=str(out),
                            **({"async": background} if background is not None else {}))
        self.child.events(ev="done", pid=pid)
        exit_event = self.child.events(ev="exit", pid=pid)
        assert exit_event["code"] == 0, self.child.describe()
        return torch.load(out, weights_only=True)


def check_folder(dirname: Path) -> str | None:
    """Every checkpoint-named file loads whole; latest() warns about nothing; returns latest."""
    for name in checkpoint_files(dirname):
        payload = load_payload(dirname / name)
        assert payload["format"] == ckmod.FORMAT, name
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return Checkpoint.latest(dirname)


def step_of(path: str | None) -> int | None:
    return None if path is None else int(load_payload(path)["step"])


LONG = pytest.mark.multiprocess_long
# Each keep setting gets the five kinds of kill with either kind of save: `make test` runs one setting per kind
# of save, the multiprocess_long marker the other four (30 kills in all).
CAMPAIGNS = [
    pytest.param(False, ("best",), id="sync-best"),
    pytest.param(True, ("best_only",), id="async-best_only"),
    pytest.param(False, ("last", "best_only"), id="sync-last-best_only", marks=LONG),
    pytest.param(True, ("last", "best"), id="async-last-best", marks=LONG),
]


@pytest.mark.parametrize("background, configs", CAMPAIGNS)
def test_sigkill_at_random_moments_never_loses_or_corrupts_a_checkpoint(tmp_path, background, configs):
    rng = random.Random(20240611)
    kills = 0
    with Child(python("kill_server.py"), stdin=True) as child:
        server = KillServer(child, background)
        straight = server.finish(tmp_path / "straight", "last", tmp_path / "straight.pt", background=False)
        assert straight["iteration"] == TOTAL_ITERATIONS
        for config in configs:
            folder = tmp_path / config
            kinds = list(KINDS)
            rng.shuffle(kinds)
            expected_resume, newest_saved, dead_temp = 0, None, []
            for kind in kinds:
                hook, after = kind, rng.randint(1, 3)
                if kind == "time":  # killed after a random delay; a pause before the end makes sure it is killed
                    hook, after = "saved", max(1, min(10, TOTAL_ITERATIONS - expected_resume - 1))
                pid, started = server.start(folder, config, hook=hook, hook_after=after, pace=0.004)
                where = f"{config}, kill {kind} #{kills + 1}"
                assert started["step"] == expected_resume, f"{where}: resumed at {started['step']}"
                assert set(dead_temp) <= set(started["stray"]), f"{where}: {dead_temp} vs {started['stray']}"
                assert started["left"] == [], f"{where}: temp files of dead runs not removed: {started['left']}"
                if kind == "time":
                    time.sleep(rng.uniform(0.0, 0.25))
                else:
                    hooked = child.events(ev=("hook", "exit"), pid=pid)
                    assert hooked["ev"] == "hook", f"{where}: the run ended before reaching the hook"
                os.kill(pid, signal.SIGKILL)
                exit_event = child.events(ev="exit", pid=pid)
                if exit_event["signal"] != signal.SIGKILL:
                    pytest.fail(f"{where}: the run ended before the kill: {exit_event}\n{child.describe()}")
                kills += 1
                saved = [e for e in map(_event, child.lines) if e.get("ev") == "saved" and e["pid"] == pid]
                if saved:
                    newest_saved = saved[-1]["step"]
                    writer = "ember-checkpoint-writer" if background else "MainThread"
                    assert {e["thread"] for e in saved} == {writer}, f"{where}: written by {saved}"
                latest = check_folder(folder)
                if newest_saved is not None:
                    assert latest is not None, f"{where}: no checkpoint after {newest_saved} was saved"
                    assert step_of(latest) >= newest_saved, f"{where}: latest {latest} older than {newest_saved}"
                if kind in ("write", "rename"):
                    # Killed while writing step s: the newest loadable file is older, or, when this write was
                    # the rewrite of step s after its epoch end (see Checkpoint's epoch_end_pending), s's first file.
                    rewrite = newest_saved == hooked["step"]
                    assert step_of(latest) is None or step_of(latest) < hooked["step"] + rewrite, where
                    dead_temp = [n for n in temp_files(folder) if f"-{pid}-" in n]
                    assert dead_temp, f"{where}: expected the killed run's temp file, found {os.listdir(folder)}"
                    if kind == "write":
                        with pytest.raises(Exception):  # noqa: B017 - any error: the half file must not load
                            load_payload(folder / dead_temp[0])
                else:
                    dead_temp = [n for n in temp_files(folder) if f"-{pid}-" in n]
                if kind in ("evict", "saved"):
                    assert step_of(latest) == hooked["step"], f"{where}: {latest} is not the new file"
                expected_resume = step_of(latest) or 0
            finished = server.finish(folder, config, tmp_path / f"{config}.pt")
            assert_same(straight, finished, f"{config}: resumed after {len(kinds)} kills vs uninterrupted")
    assert kills == len(KINDS) * len(configs)


def _event(line: str) -> dict:
    return json.loads(line) if line.startswith("{") else {}


def _tiny_trainer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = create_trainer(model, optimizer, F.mse_loss)
    data = [(torch.randn(3, 4), torch.randn(3, 2)) for _ in range(4)]
    return model, optimizer, trainer, data


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="maps file descriptors to paths through /proc")
@pytest.mark.parametrize("background", [False, True], ids=["sync", "async"])
def test_file_and_folder_are_fsynced_and_renamed_before_the_old_file_is_deleted(tmp_path, monkeypatch, background):
    log: list[tuple[str, str]] = []
    real_fsync, real_replace, real_unlink, real_link = os.fsync, os.replace, os.unlink, os.link

    def fsync(fd: int) -> None:
        log.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        real_replace(src, dst)
        log.append(("rename", os.fspath(dst)))

    def unlink(path) -> None:
        log.append(("delete", os.fspath(path)))
        real_unlink(path)

    model, optimizer, trainer, data = _tiny_trainer()
    scores = iter([0.1, 0.5, 0.2, 0.9, 0.3, 0.8, 0.4, 0.7])
    ckpt = Checkpoint({"model": model, "optimizer": optimizer}, tmp_path, every_iterations=1, keep_last=1,
                      monitor=lambda e: next(scores), keep_best=1, async_save=background)
    real_write = ckpt.folder.write

    def write(*args, **kwargs):  # the whole save: in the training thread, or the writer's (async_save)
        path = real_write(*args, **kwargs)
        log.append(("returned", path))
        return path

    ckpt.folder.write = write
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(os, "link", real_link)
    trainer.add(ckpt)
    trainer.run(data, max_epochs=2)
    folder = str(tmp_path)

    returns = [i for i, entry in enumerate(log) if entry[0] == "returned" and entry[1]]
    assert len(returns) == 10  # 8 saves, and the files of iterations 4 and 8 again after their epoch's end
    start = 0
    for end in returns:
        save_log = log[start:end]
        start = end + 1
        final = log[end][1]
        renames = [i for i, e in enumerate(save_log) if e == ("rename", final)]
        assert renames, save_log
        rename = renames[0]
        file_syncs = [i for i, (op, p) in enumerate(save_log) if op == "fsync" and ".tmp-" in p]
        dir_syncs = [i for i, (op, p) in enumerate(save_log) if op == "fsync" and p == folder]
        assert file_syncs and file_syncs[0] < rename, f"temp file not fsynced before its rename: {save_log}"
        assert any(i > rename for i in dir_syncs), f"folder not fsynced after the rename: {save_log}"
        deletes = [i for i, (op, p) in enumerate(save_log) if op == "delete" and ".tmp-" not in p]
        assert all(i > rename for i in deletes), f"an old checkpoint was deleted before the new one: {save_log}"
    assert sorted(os.listdir(tmp_path)) == ["best_checkpoint_000000004_score=0.9.pt", "checkpoint_000000008.pt"]


@pytest.mark.parametrize("background", [False, True], ids=["sync", "async"])
def test_latest_uses_the_recorded_step_and_falls_back_past_a_corrupt_newest_file(tmp_path, background):
    model, optimizer, trainer, data = _tiny_trainer()
    trainer.add(Checkpoint({"model": model}, tmp_path, every_iterations=1, keep_last=None, async_save=background))
    trainer.run(data, max_epochs=1)
    names = checkpoint_files(tmp_path)
    assert names == [f"checkpoint_{s:09d}.pt" for s in (1, 2, 3, 4)]
    now = time.time()
    for age, name in enumerate(names):  # the oldest file gets the newest modification time
        os.utime(tmp_path / name, (now - age * 100, now - age * 100))
    os.rename(tmp_path / names[2], tmp_path / "checkpoint_000000099.pt")  # a name that lies about the step
    assert Checkpoint.latest(tmp_path).endswith(names[3])
    newest = tmp_path / names[3]
    newest.write_bytes(newest.read_bytes()[:-100])
    with pytest.warns(RuntimeWarning, match=str(newest)):
        assert Checkpoint.latest(tmp_path).endswith("checkpoint_000000099.pt")  # recorded step 3
    fresh, _, fresh_trainer, _ = _tiny_trainer()
    with pytest.warns(RuntimeWarning, match=str(newest)):
        path = Checkpoint.resume_latest(tmp_path, {"model": fresh, "trainer": fresh_trainer})
    assert path.endswith("checkpoint_000000099.pt") and fresh_trainer.state.iteration == 3


PREPARE_SLOWLY = """
import shutil, sys, time
import ember.data.datasets as data

def slow(src, dst, length=0):
    dst.write(src.read(1000))
    dst.flush()
    print("WRITING", flush=True)
    time.sleep(60)

shutil.copyfileobj = slow
data.load_fashion_mnist(root=sys.argv[1], cache=sys.argv[2], download=False)
"""


@pytest.mark.slow
def test_a_kill_during_dataset_preparation_leaves_no_temp_file_after_the_next_run(tmp_path):
    from fakedata import write_fashion_mnist

    from ember.data import load_fashion_mnist

    fake = write_fashion_mnist(tmp_path / "deb", layout="debian", gz=True)  # gzipped: decompressed into the cache
    cache = tmp_path / "cache"
    raw = cache / "FashionMNIST" / "raw"
    with Child([python("harness.py")[0], "-c", PREPARE_SLOWLY, str(fake.folder), str(cache)]) as child:
        child.wait_for(lambda line: line == "WRITING")
        os.kill(child.proc.pid, signal.SIGKILL)
        child.wait()
    left = [n for n in os.listdir(raw) if n.startswith(".tmp-")]
    assert len(left) == 1 and f"-{child.proc.pid}-" in left[0], f"expected the killed run's temp file: {left}"
    live = raw / f".tmp-train-labels-idx1-ubyte-{os.getppid()}-abc12345"  # a live process's: left alone
    live.write_bytes(b"being written")
    dataset = load_fashion_mnist(root=fake.folder, cache=cache, download=False)
    assert len(dataset) == len(fake.train_labels)
    assert sorted(n for n in os.listdir(raw) if n.startswith(".")) == [".ember-prepared.json", live.name]
