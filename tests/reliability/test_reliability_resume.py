"""Promise 2: exact resume. Stopping at iteration k and resuming to N equals running N straight, bit for bit.

Engine level: a Dropout MLP whose batches are shifted by draws of Python's and NumPy's RNG, on shuffled
MNIST-format data through both data paths (DeviceLoader and DataLoader + EpochSampler), stopped mid-epoch
and at an epoch boundary, resumed in fresh objects after every RNG was scrambled: same parameters and
optimizer state, and the resumed run sees exactly the remaining batches of the epoch, each once. The trainer
steps an LR scheduler and a stateful handler at each epoch's end, so a file saved at an epoch's last iteration
before that end ran (a stop there, a save by `every_iterations`, a handler raising in the epoch end after the
save) must have the resumed run go through it, once.
Command line: `ember train mnist-lenet` (shuffled) stopped by the hidden `--max-iterations`, resumed twice
with `--resume`, on both data paths; resuming the finished run does nothing. (SIGKILL after a checkpoint,
then resume: tests/reliability/test_reliability_kill.py and test_reliability_signals.py.)
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from fakedata import offline
from harness import (
    assert_same,
    checkpoint_files,
    lenet_argv,
    load_payload,
    run_cli,
    write_tiny_mnist,
)
from torch import nn
from torch.nn import functional as F

from ember.callbacks import Checkpoint, LRScheduler
from ember.data import load_dataset, make_loader
from ember.engine import Events
from ember.steps import create_trainer

EPOCHS, BATCH = 3, 8  # 48 training images: 6 iterations per epoch, 18 in all
N_ITER = 18


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory) -> Path:
    return write_tiny_mnist(tmp_path_factory.mktemp("mnist"))


def noisy(batch, device, non_blocking):
    """Inputs shifted by Python's and NumPy's RNG, so a resume that did not restore them would differ."""
    x, y = batch
    return x + 0.01 * random.random() + 0.01 * float(np.random.rand()), y


def build(root: Path, path: str):
    """Fresh objects, as a new process would make them: seeded model, optimizer, trainer and loader."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    loader = make_loader(load_dataset("mnist", train=True, root=root), BATCH, shuffle=True, seed=3, path=path)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    trainer = create_trainer(model, optimizer, F.cross_entropy, prepare_batch=noisy)
    trainer.add(LRScheduler(torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.5)))
    trainer.add(EpochEnds())
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @trainer.on(Events.ITERATION_COMPLETED)
    def record(engine):
        k = engine.state.iteration
        assert k not in seen, f"iteration {k} ran twice"
        seen[k] = tuple(t.clone() for t in engine.state.batch)

    return {"model": model, "optimizer": optimizer, "trainer": trainer}, loader, seen


class EpochEnds:
    """A stateful handler of the epoch's end: the iterations at which it ran, each once."""

    def __init__(self) -> None:
        self.at: list[int] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.ended)

    def ended(self, engine) -> None:
        assert engine.state.iteration not in self.at, f"the end of epoch {engine.state.epoch} ran twice"
        self.at.append(engine.state.iteration)

    def state_dict(self) -> dict:
        return {"at": list(self.at)}

    def load_state_dict(self, state: dict) -> None:
        self.at = list(state["at"])


class Raised(Exception):
    pass


def scramble_rngs() -> None:
    random.seed(12345)
    np.random.seed(12345)
    torch.manual_seed(12345)


_straight: dict[str, tuple] = {}


def straight_run(root: Path, path: str):
    if path not in _straight:
        objects, loader, seen = build(root, path)
        objects["trainer"].run(loader, max_epochs=EPOCHS)
        _straight[path] = (objects, seen)
    return _straight[path]


def run_until(root: Path, path: str, folder: Path, stop_at: int | None, *, raise_at_epoch_end: bool = False,
              saved_there: bool = True) -> dict:
    """Resume from folder (if it has a checkpoint), run, terminate after iteration stop_at (None: run to the
    end); COMPLETED saves.
    With `raise_at_epoch_end`, stop_at is an epoch's last iteration, saved by `every_iterations` (unless not
    `saved_there`: then only by save_on_exception), and a handler raises in that epoch's end after the
    scheduler stepped."""
    objects, loader, seen = build(root, path)
    if Checkpoint.latest(folder) is not None:
        scramble_rngs()  # a new process would start from other RNG states: only the checkpoint may fix them
        assert Checkpoint.resume_latest(folder, objects) is not None
    start = objects["trainer"].state.iteration
    trainer = objects["trainer"]
    if raise_at_epoch_end:
        trainer.add(Checkpoint(objects, folder, every_iterations=stop_at if saved_there else None,
                               every_epochs=None, save_on_exception=True))

        def fail(engine):
            raise Raised("a handler failed in the epoch's end")

        fail.ember_order = 150  # after the scheduler and EpochEnds (DEFAULT), before the checkpoint
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_at // (N_ITER // EPOCHS)), fail)
        with pytest.raises(Raised):
            trainer.run(loader, max_epochs=EPOCHS)
    else:
        trainer.add(Checkpoint(objects, folder))
        if stop_at is not None:
            trainer.add_event_handler(Events.ITERATION_COMPLETED(once=stop_at), lambda e: e.terminate())
        trainer.run(loader, max_epochs=EPOCHS)
    return {"objects": objects, "seen": seen, "start": start}


@pytest.mark.parametrize("path", ["fast", "dataloader"])
@pytest.mark.parametrize("stops", [(9,), (12,), (4, 12), (6, 18)],
                         ids=["mid-epoch", "epoch-boundary", "twice", "at-the-last-epoch-end"])
def test_stop_and_resume_equals_a_straight_run(mnist_root, tmp_path, path, stops):
    straight, straight_seen = straight_run(mnist_root, path)
    assert sorted(straight_seen) == list(range(1, N_ITER + 1))
    done = 0
    for stop_at in (*stops, None):
        run = run_until(mnist_root, path, tmp_path, stop_at)
        stop = stop_at or N_ITER
        assert run["start"] == done and run["objects"]["trainer"].state.iteration == stop
        assert sorted(run["seen"]) == list(range(done + 1, stop + 1)), "each remaining batch exactly once"
        for k, batch in run["seen"].items():
            assert_same(straight_seen[k], batch, f"batch of iteration {k} after resuming at {done}")
        assert checkpoint_files(tmp_path) == [f"checkpoint_{stop:09d}.pt"]
        done = stop
    for name in ("model", "optimizer", "trainer"):
        assert_same(straight[name].state_dict(), run["objects"][name].state_dict(), name)
    assert run["objects"]["optimizer"].param_groups[0]["lr"] == 0.05 * 0.5**EPOCHS
    assert load_payload(tmp_path / f"checkpoint_{N_ITER:09d}.pt")["epoch_end_pending"] is False


@pytest.mark.parametrize("path", ["fast", "dataloader"])
@pytest.mark.parametrize("saved_there", [True, False], ids=["saved-at-the-iteration", "saved-on-exception"])
def test_a_handler_raising_in_the_epoch_end_after_the_save_resumes_through_that_end(mnist_root, tmp_path, path,
                                                                                     saved_there):
    """The file is the one saved at the epoch's last iteration, or (save_on_exception) the state as the epoch
    end began, not the state half-way through it (the scheduler had stepped when the handler raised)."""
    straight, straight_seen = straight_run(mnist_root, path)
    run_until(mnist_root, path, tmp_path, 6, raise_at_epoch_end=True, saved_there=saved_there)
    saved = load_payload(tmp_path / "checkpoint_000000006.pt")
    assert saved["epoch_end_pending"] is True and saved["step"] == 6
    run = run_until(mnist_root, path, tmp_path, None)
    assert run["start"] == 6 and sorted(run["seen"]) == list(range(7, N_ITER + 1))
    for name in ("model", "optimizer", "trainer"):
        assert_same(straight[name].state_dict(), run["objects"][name].state_dict(), name)
    handlers = load_payload(tmp_path / f"checkpoint_{N_ITER:09d}.pt")["objects"]["handlers"]
    assert handlers["EpochEnds"] == {"at": [6, 12, 18]}


def test_a_save_at_an_epochs_last_iteration_is_written_again_after_the_epoch_end(mnist_root, tmp_path):
    objects, loader, _ = build(mnist_root, "fast")
    written: list[tuple[int, bool]] = []
    saver = Checkpoint(objects, tmp_path, every_iterations=3, every_epochs=None, keep_last=None)
    objects["trainer"].add(saver)

    def look(engine):
        written.append((engine.state.iteration, load_payload(saver.last_path)["epoch_end_pending"]))

    look.ember_order = 500  # after the checkpoint
    objects["trainer"].add_event_handler(Events.ITERATION_COMPLETED(every=3), look)
    objects["trainer"].run(loader, max_epochs=1)
    assert written == [(3, False), (6, True)]  # the file of iteration 6 was written before the epoch's end
    final = load_payload(tmp_path / "checkpoint_000000006.pt")
    assert final["epoch_end_pending"] is False and final["objects"]["handlers"]["EpochEnds"] == {"at": [6]}
    assert final["objects"]["optimizer"]["param_groups"][0]["lr"] == 0.025


def test_rng_restore_is_what_makes_dropout_resume_exact(mnist_root, tmp_path):
    """The control for the test above: without the RNG states, the same resume does differ."""
    straight, _ = straight_run(mnist_root, "fast")
    run_until(mnist_root, "fast", tmp_path, 9)
    objects, loader, _ = build(mnist_root, "fast")
    Checkpoint.resume_latest(tmp_path, objects)
    scramble_rngs()
    objects["trainer"].run(loader, max_epochs=EPOCHS)
    assert not torch.equal(straight["model"][1].weight, objects["model"][1].weight)


def lenet(root: Path, folder: Path, path: str, *extra: str) -> tuple[int, str, str]:
    return run_cli(lenet_argv(root, folder, "--data-path", path, *extra, epochs=2, batch_size=BATCH))


def final_checkpoint(folder: Path) -> dict:
    return load_payload(Checkpoint.latest(folder))


@pytest.mark.parametrize("path", ["fast", "dataloader"])
def test_cli_max_iterations_then_resume_twice_equals_a_straight_run(mnist_root, tmp_path, monkeypatch, path):
    offline(monkeypatch, tmp_path)
    code, out, err = lenet(mnist_root, tmp_path / "straight", path)
    assert code == 0, err
    straight = final_checkpoint(tmp_path / "straight")
    assert straight["step"] == 12

    folder = tmp_path / "stopped"
    code, out, err = lenet(mnist_root, folder, path, "--max-iterations", "4")  # mid-epoch 1
    assert code == 0 and final_checkpoint(folder)["step"] == 4, err
    code, out, err = lenet(mnist_root, folder, path, "--resume", "--max-iterations", "6")  # epoch boundary
    assert code == 0 and "Resumed from" in out and "iteration 4" in out, out + err
    assert final_checkpoint(folder)["step"] == 6
    code, out, err = lenet(mnist_root, folder, path, "--resume")
    assert code == 0 and "iteration 6" in out, out + err
    resumed = final_checkpoint(folder)
    for name in ("model", "optimizer", "trainer"):
        assert_same(straight["objects"][name], resumed["objects"][name], name)
    assert_same(straight["rng"], resumed["rng"], "rng")

    files = {name: (folder / name).read_bytes() for name in checkpoint_files(folder)}
    code, out, err = lenet(mnist_root, folder, path, "--resume")
    assert code == 0 and "Nothing to do" in out and "already finished 2 epochs" in out, out + err
    assert {name: (folder / name).read_bytes() for name in checkpoint_files(folder)} == files


def fit_run(folder: Path, *, resume: bool, **kwargs) -> dict:
    """`ember.fit` of a Dropout MLP with an epoch-stepped scheduler and EpochEnds, over a seeded DataLoader."""
    import ember

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(48, 6), torch.randint(0, 3, (48,)))
    loader = torch.utils.data.DataLoader(data, batch_size=8,
                                         generator=torch.Generator().manual_seed(0))
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer = create_trainer(model, optimizer, F.cross_entropy)
    trainer.add(LRScheduler(torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.5)))
    ends = trainer.add(EpochEnds())
    result = ember.fit(trainer, loader, max_epochs=EPOCHS, objects={"model": model, "optimizer": optimizer},
                       checkpoint_dir=folder, resume=resume, progress=False, **kwargs)
    return {"result": result, "model": model, "optimizer": optimizer, "trainer": trainer, "ends": ends}


@pytest.mark.parametrize("cut", [{"max_iterations": 6}, {"max_iterations": 8, "checkpoint_every": 6},
                                 {"max_iterations": 18}],
                         ids=["max-iterations-at-epoch-end", "checkpoint-every-at-epoch-end", "last-epoch-end"])
def test_ember_fit_resumes_a_save_at_an_epochs_last_iteration_like_the_straight_run(tmp_path, cut):
    straight = fit_run(tmp_path / "straight", resume=False)
    assert straight["ends"].at == [6, 12, 18]
    folder = tmp_path / "cut"
    fit_run(folder, resume=False, **cut)
    if "checkpoint_every" in cut:  # the run goes past 6: cut back to the file of iteration 6, as a kill would
        (folder / "checkpoint_000000008.pt").unlink()
        payload = load_payload(folder / "checkpoint_000000006.pt")
        assert payload["epoch_end_pending"] is False  # written again after epoch 1's end
    resumed = fit_run(folder, resume=True)
    assert resumed["result"].finished and resumed["result"].exit_status == 0
    for name in ("model", "optimizer", "trainer"):
        assert_same(straight[name].state_dict(), resumed[name].state_dict(), name)
    assert resumed["ends"].at == [6, 12, 18]
