"""Checkpoint(async_save=True): a snapshot in host memory, written in the background with every guarantee kept.

The writer is held back (its `save_file` waits on an Event) so that training demonstrably moves on while a
save is in flight; what the files hold is then compared with the state at the iteration each save was asked
for. The kill campaign with async saves is in tests/reliability/test_reliability_kill.py.
"""

from __future__ import annotations

import copy
import errno
import os
import random
import threading
from collections import OrderedDict

import numpy as np
import pytest
import torch
from harness import assert_same, checkpoint_files, load_payload, temp_files
from torch import nn
from torch.nn import functional as F

import ember.checkpoint.folder as folder_mod
from ember.callbacks import Checkpoint
from ember.checkpoint.async_writer import AsyncWriter, HostSnapshot
from ember.checkpoint.format import CheckpointError
from ember.data import DeviceLoader
from ember.engine import Events
from ember.engine.order import LAST
from ember.run.record import RUN_KEY, RunRecord
from ember.steps import create_trainer
from ember.utils.rng import get_rng_state


class Window:
    """A stateful handler whose state_dict hands out its live list (as many real handlers do)."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def __call__(self, engine) -> None:
        self.seen.append(float(engine.state.iteration))

    def state_dict(self) -> dict:
        return {"seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.seen = list(state["seen"])


def build(seed: int = 0):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    trainer = create_trainer(model, optimizer, F.cross_entropy)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (24, 1, 2, 3), generator=g, dtype=torch.uint8)
    loader = DeviceLoader((images, torch.arange(24) % 3), 4, shuffle=True, seed=2)
    window = Window()
    trainer.add_event_handler(Events.ITERATION_COMPLETED, window)
    objects = {"model": model, "optimizer": optimizer, "trainer": trainer, RUN_KEY: RunRecord("r1", {"lr": 0.01})}
    return objects, loader, window


@pytest.fixture
def held_writer(monkeypatch):
    """Makes every save_file wait until `gate` is set; `writing` is set when a write has begun."""
    gate, writing = threading.Event(), threading.Event()
    real = folder_mod.save_file

    def save_file(payload, path):
        writing.set()
        assert gate.wait(30), "the test never released the writer"
        real(payload, path)

    monkeypatch.setattr(folder_mod, "save_file", save_file)
    return gate, writing


def test_the_file_holds_the_state_of_the_iteration_the_save_was_asked_for(tmp_path, held_writer):
    gate, writing = held_writer
    objects, loader, window = build()
    model, optimizer, trainer = objects["model"], objects["optimizer"], objects["trainer"]
    ckpt = trainer.add(Checkpoint(objects, tmp_path, every_iterations=3, save_on_completed=False,
                                  keep_last=None, async_save=True))
    expected = {}

    def mutate_everything(engine) -> None:
        if engine.state.iteration != 3:
            return
        assert writing.wait(10) and not gate.is_set(), "the save should be in flight"
        expected["model"] = copy.deepcopy(model.state_dict())
        expected["optimizer"] = copy.deepcopy(optimizer.state_dict())
        expected["rng"] = get_rng_state()
        expected["window"] = list(window.seen)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        for state in optimizer.state.values():
            state["exp_avg"].fill_(7.0)
            state["exp_avg_sq"].fill_(9.0)
        torch.manual_seed(12345)
        random.seed(12345)
        np.random.seed(12345)
        window.seen.append(-1.0)
        objects[RUN_KEY].run_id = "changed"
        objects[RUN_KEY].config["lr"] = 99.0

    mutate_everything.ember_order = LAST  # after the Checkpoint's save of the same event
    trainer.add_event_handler(Events.ITERATION_COMPLETED, mutate_everything)
    # training runs on (iterations 4 and 5) while the save of iteration 3 is held
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=5), lambda: gate.set())
    trainer.run(loader, max_epochs=1)  # 6 iterations: saves at 3 and 6

    saved = load_payload(tmp_path / "checkpoint_000000003.pt")
    assert saved["step"] == 3 and saved["objects"]["trainer"]["iteration"] == 3
    assert_same(saved["objects"]["model"], expected["model"], "weights")
    assert_same(saved["objects"]["optimizer"], expected["optimizer"], "optimizer moments")
    assert_same(saved["rng"], expected["rng"], "RNG states")
    assert saved["objects"]["handlers"]["Window"]["seen"] == expected["window"] == [1.0, 2.0, 3.0]
    assert saved["objects"][RUN_KEY] == {"run_id": "r1", "config": {"lr": 0.01}}
    later = load_payload(tmp_path / "checkpoint_000000006.pt")  # the next save took the new values
    assert later["objects"][RUN_KEY]["run_id"] == "changed" and -1.0 in later["objects"]["handlers"]["Window"]["seen"]
    assert ckpt.last_path == str(tmp_path / "checkpoint_000000006.pt")


def test_one_save_in_flight_the_next_waits_and_the_memory_is_reported_once(tmp_path, held_writer, capsys):
    gate, writing = held_writer
    objects, loader, _ = build()
    trainer = objects["trainer"]
    ckpt = trainer.add(Checkpoint(objects, tmp_path, every_iterations=2, keep_last=None, async_save=True))
    events = []

    def record(e) -> None:
        events.append((e.state.iteration, ckpt._writer.busy, checkpoint_files(tmp_path)))

    record.ember_order = LAST
    trainer.add_event_handler(Events.ITERATION_COMPLETED, record)
    # the held write is let go 0.3 s after iteration 4 asks for the next save, which must wait for it
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=4), lambda: threading.Timer(0.3, gate.set).start())
    trainer.run(loader, max_epochs=1)
    # iteration 2's save is held: iterations 2 and 3 run with it in flight and nothing on disk yet; the save of
    # iteration 4 waits for it, so no second write ever overlaps the first
    assert events[1] == (2, True, []) and events[2] == (3, True, [])
    assert events[3][0] == 4 and events[3][2][:1] == ["checkpoint_000000002.pt"]
    assert ckpt._writer.waited > 0.2, "the save of iteration 4 should have waited for the held one"
    assert checkpoint_files(tmp_path) == [f"checkpoint_{s:09d}.pt" for s in (2, 4, 6)]
    reports = [line for line in capsys.readouterr().err.splitlines() if "host memory" in line]
    assert len(reports) == 1 and "asynchronous saves hold a snapshot of" in reports[0], reports
    assert threading.active_count() == 1 or not any(t.name == "ember-checkpoint-writer"
                                                   for t in threading.enumerate())


def test_a_failed_background_write_stops_the_run_at_the_next_iteration_and_claims_nothing(tmp_path, monkeypatch):
    real = folder_mod.save_file
    calls = []

    def full_disk(payload, path):
        calls.append(payload["step"])
        if payload["step"] == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(payload, path)

    monkeypatch.setattr(folder_mod, "save_file", full_disk)
    objects, loader, _ = build()
    trainer = objects["trainer"]
    ckpt = trainer.add(Checkpoint(objects, tmp_path, every_iterations=2, keep_last=None, save_on_exception=True,
                                  async_save=True))
    with pytest.raises(CheckpointError) as caught:
        trainer.run(loader, max_epochs=1)
    message = str(caught.value)
    assert "\n" not in message and "could not write checkpoint" in message and "at iteration 4" in message
    assert "the disk is full (No space left on device)" in message and "earlier checkpoints are untouched" in message
    assert trainer.state.iteration == 5, "reported at the step after the save"
    assert calls == [2, 4], "the failed save is not tried again at the exception"
    assert ckpt.last_path == str(tmp_path / "checkpoint_000000002.pt")
    assert checkpoint_files(tmp_path) == ["checkpoint_000000002.pt"] and temp_files(tmp_path) == []


def test_the_synchronous_policy_for_the_same_failure_is_the_same_error(tmp_path, monkeypatch):
    """The control of the test above: the synchronous save raises the same CheckpointError, in its own step."""
    real = folder_mod.save_file

    def full_disk(payload, path):
        if payload["step"] == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(payload, path)

    monkeypatch.setattr(folder_mod, "save_file", full_disk)
    objects, loader, _ = build()
    objects["trainer"].add(Checkpoint(objects, tmp_path, every_iterations=2, keep_last=None))
    with pytest.raises(CheckpointError, match="could not write checkpoint .* at iteration 4: the disk is full"):
        objects["trainer"].run(loader, max_epochs=1)
    assert objects["trainer"].state.iteration == 4


@pytest.mark.parametrize("how", ["completed", "terminate", "exception"])
def test_the_end_of_a_run_a_terminate_and_an_exception_wait_for_the_save_in_flight(tmp_path, held_writer, how):
    gate, _ = held_writer
    objects, loader, _ = build()
    trainer = objects["trainer"]
    ckpt = trainer.add(Checkpoint(objects, tmp_path, every_iterations=3, save_on_completed=False,
                                  async_save=True))

    def at_3(engine) -> None:
        if engine.state.iteration == 3:
            threading.Timer(0.3, gate.set).start()  # the write finishes well after the run would have ended
            if how == "terminate":
                engine.terminate()
            elif how == "exception":
                raise RuntimeError("a handler failed")

    at_3.ember_order = LAST
    trainer.add_event_handler(Events.ITERATION_COMPLETED, at_3)
    if how == "exception":
        with pytest.raises(RuntimeError, match="a handler failed"):
            trainer.run(loader, max_epochs=1)
    else:
        trainer.run(loader, max_epochs=1, epoch_length=6 if how == "terminate" else 3)
    assert not ckpt._writer.busy
    assert ckpt.last_path == str(tmp_path / "checkpoint_000000003.pt")
    assert load_payload(ckpt.last_path)["step"] == 3 and temp_files(tmp_path) == []


def test_resume_from_an_async_written_checkpoint_is_bit_exact(tmp_path):
    straight, loader, _ = build()
    straight["trainer"].run(loader, max_epochs=3)

    first, loader, _ = build()
    first["trainer"].add(Checkpoint(first, tmp_path, every_iterations=4, async_save=True))
    first["trainer"].add_event_handler(Events.ITERATION_COMPLETED(once=8), lambda e: e.terminate())
    first["trainer"].run(loader, max_epochs=3)

    resumed, loader, window = build(seed=7)  # other seeds: everything must come from the file
    assert Checkpoint.resume_latest(tmp_path, resumed).endswith("checkpoint_000000008.pt")
    resumed["trainer"].add(Checkpoint(resumed, tmp_path, every_iterations=4, async_save=True))
    resumed["trainer"].run(loader, max_epochs=3)
    assert resumed["trainer"].state.iteration == 18
    assert_same(resumed["model"].state_dict(), straight["model"].state_dict(), "weights")
    assert_same(resumed["optimizer"].state_dict(), straight["optimizer"].state_dict(), "optimizer")
    assert window.seen == [float(i) for i in range(1, 19)]


def test_retention_and_best_files_match_the_synchronous_saves(tmp_path):
    """Keep-last and best-k run in the writer after each file is in place, one save at a time: the files kept,
    and their contents, are those of synchronous saves, and no save's file is deleted before it is written."""
    scores = [0.5, 0.1, 0.9, 0.3, 0.95, 0.2]
    results = {}
    for background in (False, True):
        objects, loader, _ = build()
        folder = tmp_path / ("async" if background else "sync")
        objects["trainer"].add(Checkpoint(objects, folder, every_iterations=1, keep_last=2, keep_best=2,
                                          monitor=lambda e: scores[e.state.iteration - 1], async_save=background))
        objects["trainer"].run(loader, max_epochs=1)
        results[background] = {n: load_payload(folder / n)["objects"]["model"] for n in checkpoint_files(folder)}
    assert sorted(results[True]) == sorted(results[False]) == [
        "best_checkpoint_000000003_score=0.9.pt", "best_checkpoint_000000005_score=0.95.pt",
        "checkpoint_000000005.pt", "checkpoint_000000006.pt"]
    for name in results[False]:
        assert_same(results[True][name], results[False][name], name)


def test_the_snapshot_reuses_its_buffers_and_keeps_types_and_ties():
    snapshot = HostSnapshot()
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    model[1].weight = model[0].weight  # tied
    state = model.state_dict()
    first = snapshot.take({"model": state, "list": [torch.ones(2)], "t": (1, "a")})
    assert isinstance(first["model"], OrderedDict) and first["model"]._metadata == state._metadata
    assert first["model"]["0.weight"] is first["model"]["1.weight"], "a tied tensor is copied once"
    assert first["t"] == (1, "a") and first["model"]["0.weight"].data_ptr() != state["0.weight"].data_ptr()
    pointer = first["model"]["0.bias"].data_ptr()
    with torch.no_grad():
        model[0].bias.add_(1.0)
    second = snapshot.take({"model": model.state_dict(), "list": [torch.ones(5)], "t": (1, "a")})
    assert second["model"]["0.bias"].data_ptr() == pointer, "the buffer is reused"
    assert torch.equal(second["model"]["0.bias"], model[0].bias)
    assert snapshot.nbytes == sum(t.numel() * 4 for t in (model[0].weight, model[0].bias, model[1].bias)) + 5 * 4


def test_the_writer_reports_an_error_once_and_runs_one_write_at_a_time():
    writer = AsyncWriter()
    order = []
    gate = threading.Event()

    def slow(x):
        gate.wait(10)
        order.append(x)

    writer.submit(1, slow)
    assert writer.busy
    threading.Timer(0.2, gate.set).start()
    writer.submit(2, slow)  # waits for the first
    writer.wait()
    assert order == [1, 2] and writer.waited > 0.1
    writer.submit(3, lambda x: (_ for _ in ()).throw(OSError("denied")))
    with pytest.raises(OSError, match="denied"):
        writer.wait()
    writer.wait()  # reported once
    writer.raise_failure()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_snapshot_is_pinned_and_holds_the_values_of_the_time_it_was_taken():
    snapshot = HostSnapshot()
    weights = torch.arange(1 << 20, dtype=torch.float32, device="cuda")
    copied = snapshot.take({"w": weights})
    weights.mul_(-1.0)  # queued after the copy on the same stream
    snapshot.ready()
    assert copied["w"].is_pinned() and snapshot.pinned
    assert torch.equal(copied["w"], torch.arange(1 << 20, dtype=torch.float32))
