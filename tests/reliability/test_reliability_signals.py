"""Promise 3: graceful stop, and SIGKILL after a checkpoint, through `ember train` in child processes.

SIGTERM (to the process, or to the whole process group as scancel does) and SIGINT (to the whole process
group, DataLoader workers included, as a terminal's Ctrl-C does) finish the current iteration, write a
checkpoint, flush and close TensorBoard and exit with 128 + the signal; a second SIGINT aborts at once; after
SIGKILL the checkpoint of the last reported iteration is there. Each interrupted run is resumed with
`--resume` and equals an uninterrupted one bit for bit. The five children of the module's fixture are
started together so that their start-up (Python + torch) overlaps.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from harness import Child, assert_same, load_payload, python, run_cli, write_tiny_mnist
from torch import nn
from torch.nn import functional as F

from ember.callbacks import Checkpoint, GracefulStop
from ember.engine import Events
from ember.steps import create_trainer

STEPS = 12  # mnist-lenet on 48 images, batch 8, 2 epochs


def lenet_args(root: Path, folder: Path, path: str = "fast", *extra: str) -> list[str]:
    return [
        "train", "mnist-lenet", "--data-root", str(root), "--epochs", "2", "--batch-size", "8",
        "--checkpoint-dir", str(folder), "--no-progress", "--device", "cpu", "--data-path", path, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def setting(tmp_path_factory, offline_data_for_module):
    """Data, the five children (started at once), and uninterrupted runs of both data paths."""
    yield from _setting(tmp_path_factory)


def _setting(tmp_path_factory):
    base = tmp_path_factory.mktemp("signals")
    root = write_tiny_mnist(base / "mnist")
    cli = ("cli_child.py",)
    # Each child pauses until its test, which may come minutes later on a loaded machine, stops or kills it.
    specs = {
        "sigterm": ((*cli, "--pause-at", "8", "--pause", "600", "--"),
                    lenet_args(root, base / "sigterm", "fast", "--logdir", str(base / "tb")), False),
        "sigkill": ((*cli, "--pause-at", "5", "--pause", "600", "--stuck", "--"),
                    lenet_args(root, base / "sigkill", "fast", "--checkpoint-every", "1", "--no-tensorboard"), False),
        "sigint_group": ((*cli, "--pause-at", "3", "--pause", "600", "--"),
                         lenet_args(root, base / "sigint_group", "dataloader", "--num-workers", "2",
                                    "--no-tensorboard"), True),
        "sigterm_group": ((*cli, "--pause-at", "3", "--pause", "600", "--"),
                          lenet_args(root, base / "sigterm_group", "dataloader", "--num-workers", "2",
                                     "--no-tensorboard"), True),
        # Started with the others but reached last: its stuck handler must outlast the module's earlier tests.
        "double_sigint": ((*cli, "--pause-at", "3", "--pause", "900", "--stuck", "--"),
                          lenet_args(root, base / "double_sigint", "fast", "--checkpoint-every", "2",
                                     "--no-tensorboard"), True),
    }
    children = {name: Child(python(*prog, *argv), new_session=group) for name, (prog, argv, group) in specs.items()}
    try:
        straight = {}
        for path in ("fast", "dataloader"):
            code, out, err = run_cli(lenet_args(root, base / f"straight-{path}", path, "--no-tensorboard"))
            assert code == 0, err
            straight[path] = load_payload(Checkpoint.latest(base / f"straight-{path}"))
            assert straight[path]["step"] == STEPS
        yield {"base": base, "root": root, "children": children, "straight": straight}
    finally:
        for child in children.values():
            child.close()


def resume_and_compare(setting, name: str, path: str, *extra: str) -> None:
    """`--resume` the interrupted run in this process; the result must equal the uninterrupted run's."""
    folder = setting["base"] / name
    code, out, err = run_cli(lenet_args(setting["root"], folder, path, "--resume", "--no-tensorboard", *extra))
    assert code == 0 and "Resumed from" in out, out + err
    resumed = load_payload(Checkpoint.latest(folder))
    straight = setting["straight"][path]
    assert resumed["step"] == STEPS
    for part in ("model", "optimizer", "trainer"):
        assert_same(straight["objects"][part], resumed["objects"][part], f"{name}: {part}")


def test_sigterm_finishes_the_iteration_checkpoints_closes_tensorboard_and_exits_143(setting):
    child = setting["children"]["sigterm"]
    child.wait_for(lambda line: line == "PAUSE 8")
    child.signal(signal.SIGTERM)
    assert child.wait() == 143, child.describe()
    assert "Stopped by SIGTERM at epoch 2, iteration 8" in child.stdout, child.describe()
    assert "Traceback" not in child.stderr, child.describe()
    assert load_payload(Checkpoint.latest(setting["base"] / "sigterm"))["step"] == 8

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(setting["base"] / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("epoch/time_s")] == [6], "epoch 1's scalars were not flushed"
    assert [e.step for e in events.Scalars("epoch/accuracy/val")] == [6]
    assert not events.Tags()["tensors"], "a run stopped to be resumed writes its hparams only when it finishes"
    resume_and_compare(setting, "sigterm", "fast")


def test_sigkill_after_a_checkpoint_then_resume(setting):
    child = setting["children"]["sigkill"]
    child.wait_for(lambda line: line == "PAUSE 5")  # printed after iteration 5's checkpoint was written
    child.signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    assert load_payload(Checkpoint.latest(setting["base"] / "sigkill"))["step"] == 5
    resume_and_compare(setting, "sigkill", "fast", "--checkpoint-every", "1")


def test_sigint_to_the_process_group_with_dataloader_workers(setting):
    child = setting["children"]["sigint_group"]
    child.wait_for(lambda line: line == "PAUSE 3")  # the two workers are running by now
    child.signal(signal.SIGINT, group=True)
    assert child.wait() == 130, child.describe()
    assert "Stopped by SIGINT at epoch 1, iteration 3" in child.stdout, child.describe()
    assert "Traceback" not in child.stderr and "exited unexpectedly" not in child.stderr, child.describe()
    assert child.stderr.count("SIGINT received") == 1, "only the main process may react to Ctrl-C"
    assert load_payload(Checkpoint.latest(setting["base"] / "sigint_group"))["step"] == 3
    resume_and_compare(setting, "sigint_group", "dataloader", "--num-workers", "2")


def test_sigterm_to_the_process_group_kills_the_workers_but_the_run_still_stops_cleanly(setting):
    """What scancel and preempting schedulers do: the DataLoader workers die of the SIGTERM too."""
    folder = setting["base"] / "sigterm_group"
    child = setting["children"]["sigterm_group"]
    child.wait_for(lambda line: line == "PAUSE 3")
    child.signal(signal.SIGTERM, group=True)
    assert child.wait() == 143, child.describe()
    assert "Stopped by SIGTERM at epoch 1, iteration 3" in child.stdout, child.describe()
    assert "Traceback" not in child.stderr and "worker" not in child.stderr, child.describe()
    assert load_payload(Checkpoint.latest(folder))["step"] == 3
    resume_and_compare(setting, "sigterm_group", "dataloader", "--num-workers", "2")


def test_a_second_sigint_aborts_at_once(setting):
    child = setting["children"]["double_sigint"]
    child.wait_for(lambda line: line == "PAUSE 3")  # a handler that will not return for 900 s
    child.signal(signal.SIGINT, group=True)
    deadline = time.monotonic() + 60
    while "SIGINT received" not in child.stderr and time.monotonic() < deadline:
        time.sleep(0.02)
    assert child.proc.poll() is None, "the first SIGINT must wait for the iteration to finish"
    sent = time.monotonic()
    child.signal(signal.SIGINT, group=True)
    assert child.wait() == 130, child.describe()
    assert time.monotonic() - sent < 20
    assert "ember: error" not in child.stderr and "aborted by a second interrupt" in child.stderr, child.describe()
    latest = Checkpoint.latest(setting["base"] / "double_sigint")
    assert load_payload(latest)["step"] in (2, 3)  # every 2 iterations, and iteration 3 had finished


def test_a_signal_before_the_step_ends_stops_after_that_step(tmp_path):
    """A signal landing in an ITERATION_STARTED handler must not checkpoint the new count with old weights."""

    def build():
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        trainer = create_trainer(model, optimizer, F.mse_loss)
        return model, optimizer, trainer

    data = [(torch.randn(4, 3), torch.randn(4, 2)) for _ in range(8)]
    model, optimizer, trainer = build()
    snapshots = {}
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: snapshots.update(
        {e.state.iteration: {k: v.clone() for k, v in model.state_dict().items()}}))
    trainer.run(data, max_epochs=1)

    model, optimizer, trainer = build()
    trainer.add(Checkpoint({"model": model, "optimizer": optimizer}, tmp_path))
    trainer.add_event_handler(Events.ITERATION_STARTED(once=5), lambda: os.kill(os.getpid(), signal.SIGTERM))
    stop = trainer.add(GracefulStop())
    with stop:
        trainer.run(data, max_epochs=1)
    assert stop.signum == signal.SIGTERM and trainer.state.iteration == 5
    saved = load_payload(Checkpoint.latest(tmp_path))
    assert saved["step"] == 5
    assert_same(snapshots[5], saved["objects"]["model"], "weights saved at iteration 5")
