"""End-to-end runs of every recipe through `ember train` on small datasets in the real file formats.

Each run goes through torchvision's own loaders (fake files from tests/fakedata.py), prints its seed's
lines, and leaves a checkpoint. Where a seed defines its own figures (seeds 002 and 004), the recipe's
printed numbers are compared with the seed's literal loop run on the same data.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from fakedata import accept_fake_cifar10, offline, write_cifar10, write_fashion_mnist, write_mnist
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms

from benchmarks.throughput.seed_loop import seed004_epoch
from ember.callbacks._output import loss_of
from ember.data import EpochSampler, load_dataset
from ember.engine import Events
from ember.recipes import RECIPES, fashion_mnist_cnn, mnist_mlp_plateau
from ember.recipes.cli import main
from ember.recipes.common import RunContext

FLOAT = r"\d+\.\d+(?:e-?\d+)?"


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    """Small FashionMNIST (Debian's flat .gz layout), MNIST (torchvision's layout) and CIFAR-10 folders."""
    root = tmp_path_factory.mktemp("data")
    write_fashion_mnist(root / "fashion", n_train=256, n_test=128)
    write_mnist(root / "mnist", n_train=256, n_test=128)
    write_cifar10(root / "cifar", n_train=250, n_test=100)
    return {"fashion-mnist": root / "fashion", "mnist": root / "mnist", "cifar10": root / "cifar"}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch, datasets):
    """Run in the test's folder, offline, with a private cache, and accept the fake CIFAR-10 files."""
    monkeypatch.chdir(tmp_path)
    offline(monkeypatch, tmp_path)
    with accept_fake_cifar10(datasets["cifar10"] / "cifar-10-batches-py"):
        yield


def train(capsys, datasets, name: str, *flags: str) -> tuple[int, str, str]:
    """`ember train name --data-root <its fake data> flags...`: exit status, stdout, stderr."""
    root = datasets[RECIPES[name].dataset]
    rc = main(["train", name, "--data-root", str(root), *flags])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def step_losses(monkeypatch) -> list[float]:
    """Every training step's loss of the next runs, recorded by a handler added just before `fit`."""
    losses: list[float] = []
    fit = RunContext.fit

    def recording_fit(self, trainer, loader, objects, **kwargs):
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(loss_of(e.state.output))))
        return fit(self, trainer, loader, objects, **kwargs)

    monkeypatch.setattr(RunContext, "fit", recording_fit)
    return losses


# Lines each recipe prints for one epoch (full-line regular expressions, in order).
SEED_LINES = {
    "fashion-mnist-mlp": [
        r"Epoch 1",
        r"-{31}",
        rf"loss: {FLOAT}  \[    0/  256\]",
        r"Test Error: ",
        rf" Accuracy: \d+\.\d%, Avg loss: {FLOAT} ",
        r"",
        r"Done!",
    ],
    "cifar10-cnn": [
        r"Epoch \[1/1\], Step \[100/125\], Loss: \d\.\d{4}",
        r"Epoch \[1/1\], Test Accuracy: \d+\.\d\d%, Test Loss: \d\.\d{4}",
    ],
    "mnist-mlp-plateau": [
        rf"Epoch 0\t Training Loss: {FLOAT}\t Validation Loss:{FLOAT}\t LR:0\.1",
        r"\t Validation Accuracy: \d+\.\d\d%",
    ],
    "mnist-lenet": [
        rf"Epoch:\[  0/  1\], step:\[    8/    8\], loss:\[{FLOAT}/{FLOAT}\], time:{FLOAT} ms, lr:0\.01000",
        rf"Epoch time: {FLOAT} ms, per step time: {FLOAT} ms, avg loss: \d\.\d{{3}}",
        r"Eval result: \{'acc': \d\.\d{4}, 'loss': \d\.\d{4}\}",
    ],
    "fashion-mnist-cnn": [
        rf"epoch: 0 total_correct: \d+ loss: {FLOAT}",
        r"test accuracy: \d\.\d{4} test loss: \d\.\d{4}",
    ],
}
# Flags making a short epoch print its lines: seed 001 prints the mean of every 100 steps.
EXTRA_FLAGS = {"cifar10-cnn": ["--batch-size", "2"]}
# Recipes whose fit gets extra arguments log to TensorBoard in this test; the others do not.
WITH_TENSORBOARD = {"mnist-mlp-plateau", "fashion-mnist-cnn"}


def test_every_recipe_is_tested():
    # fashion-mnist-speedrun reproduces no seed; tests/recipes/test_speedrun.py checks its lines.
    assert set(SEED_LINES) | {"fashion-mnist-speedrun"} == set(RECIPES)


@pytest.mark.parametrize("name", list(SEED_LINES))
def test_recipe_prints_its_seed_lines_and_checkpoints(name, capsys, datasets, tmp_path):
    flags = ["--epochs", "1", "--checkpoint-dir", "ckpt", *EXTRA_FLAGS.get(name, [])]
    if name not in WITH_TENSORBOARD:
        flags.append("--no-tensorboard")
    rc, out, err = train(capsys, datasets, name, *flags)
    assert rc == 0, err
    lines = out.splitlines()
    assert len(lines) == len(SEED_LINES[name]), out
    for line, pattern in zip(lines, SEED_LINES[name]):
        assert re.fullmatch(pattern, line), f"{line!r} does not match {pattern!r}"
    assert list((tmp_path / "ckpt").glob("*.pt")), "no checkpoint written"
    runs = list((tmp_path / "runs" / name).glob("*/events.out.tfevents.*"))
    assert bool(runs) == (name in WITH_TENSORBOARD)


def test_missing_data_is_one_line_naming_the_files_and_the_flag(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = main(["train", "mnist-lenet", "--data-root", str(empty), "--no-tensorboard"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == ""
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "train-images-idx3-ubyte" in err and "t10k-labels-idx1-ubyte" in err
    assert str(empty) in err and "--data-root" in err


@pytest.mark.parametrize(
    "name, flags",
    [
        ("fashion-mnist-mlp", ["--batch-size", "32"]),  # unshuffled, as its seed
        ("fashion-mnist-cnn", ["--batch-size", "32"]),  # unshuffled, dict output
        ("mnist-lenet", []),  # shuffled, resized to 32x32 and normalized
    ],
)
def test_fast_path_and_dataloader_train_identically(name, flags, capsys, datasets, step_losses):
    common = ["--epochs", "1", "--no-tensorboard", *flags]
    assert train(capsys, datasets, name, *common, "--checkpoint-dir", "a")[0] == 0
    fast = list(step_losses)
    step_losses.clear()
    assert train(capsys, datasets, name, *common, "--checkpoint-dir", "b", "--data-path", "dataloader")[0] == 0
    assert len(fast) == 8
    assert step_losses == fast


@pytest.mark.parametrize("name", ["cifar10-cnn", "mnist-lenet", "fashion-mnist-cnn"])
def test_cnn_recipes_train_alike_in_channels_last(name, capsys, datasets, step_losses):
    # 20 steps are enough to compare the arithmetic (cifar10-cnn's epoch is 125 steps of 2 images)
    common = ["--epochs", "1", "--max-iterations", "20", "--no-tensorboard", *EXTRA_FLAGS.get(name, [])]
    assert train(capsys, datasets, name, *common, "--checkpoint-dir", "a")[0] == 0
    plain = list(step_losses)
    step_losses.clear()
    rc, out, err = train(capsys, datasets, name, *common, "--checkpoint-dir", "b", "--channels-last")
    assert rc == 0, err
    assert 0 < len(plain) <= 20
    assert step_losses == pytest.approx(plain, rel=1e-4, abs=1e-5)  # other kernels, same arithmetic


def test_fashion_mnist_cnn_prints_the_seed_loop_figures(capsys, datasets):
    rc, out, err = train(capsys, datasets, "fashion-mnist-cnn", "--epochs", "2", "--no-tensorboard")
    assert rc == 0, err
    printed = re.findall(r"^epoch: (\d+) total_correct: (\d+) loss: (\S+)$", out, re.M)

    # The seed's loop, as deeplizard writes it, on the same files.
    torch.manual_seed(0)
    network = fashion_mnist_cnn.Network()
    train_set = load_dataset("fashion-mnist", train=True, root=datasets["fashion-mnist"],
                             transform=transforms.ToTensor())
    train_loader = DataLoader(train_set, batch_size=100)
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    expected = []
    for epoch in range(2):
        total_loss, total_correct = seed004_epoch(network, train_loader, optimizer)
        expected.append((str(epoch), str(total_correct), str(total_loss)))
    assert printed == expected


def test_mnist_mlp_plateau_prints_the_seed_figures(capsys, datasets):
    rc, out, err = train(capsys, datasets, "mnist-mlp-plateau", "--epochs", "2", "--no-tensorboard")
    assert rc == 0, err
    printed = [line for line in out.splitlines() if line.startswith("Epoch ")]

    # The seed's loop on the same files; only the shuffled order is ember's (seeded by epoch).
    torch.manual_seed(0)
    model = mnist_mlp_plateau.Net()
    train_set = load_dataset("mnist", train=True, root=datasets["mnist"], transform=transforms.ToTensor())
    valid = load_dataset("mnist", train=False, root=datasets["mnist"], transform=transforms.ToTensor())
    trainloader = DataLoader(train_set, batch_size=32, sampler=EpochSampler(len(train_set), shuffle=True, seed=0))
    validloader = DataLoader(valid, batch_size=32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.CrossEntropyLoss()
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, "min", patience=5)
    expected = []
    for e in range(2):
        train_loss, valid_loss = 0.0, 0.0
        model.train()
        for data_, label in trainloader:
            optimizer.zero_grad()
            target = model(data_)
            train_step_loss = loss(target, label)
            train_step_loss.backward()
            optimizer.step()
            train_loss += train_step_loss.item() * data_.size(0)
        model.eval()
        for data_, label in validloader:
            target = model(data_)
            valid_step_loss = loss(target, label)
            valid_loss += valid_step_loss.item() * data_.size(0)
        curr_lr = optimizer.param_groups[0]["lr"]
        expected.append(f"Epoch {e}\t Training Loss: {train_loss / len(trainloader)}\t "
                        f"Validation Loss:{valid_loss / len(validloader)}\t LR:{curr_lr}")
        scheduler.step(valid_loss / len(validloader))
    assert printed == expected


def test_scheduler_flag_builds_the_seed_schedulers_and_steps_after_printing(capsys, datasets):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    built = {name: make(optimizer) for name, make in mnist_mlp_plateau.SCHEDULERS.items()}
    assert (built["plateau"].mode, built["plateau"].patience) == ("min", 5)
    assert (built["step"].step_size, built["step"].gamma) == (10, 0.1)
    assert (sorted(built["multistep"].milestones), built["multistep"].gamma) == ([10, 30], 0.1)
    assert built["exponential"].gamma == 0.1

    rc, out, err = train(capsys, datasets, "mnist-mlp-plateau", "--epochs", "3", "--scheduler", "exponential",
                         "--no-tensorboard", "--batch-size", "128")
    assert rc == 0, err
    lrs = [float(lr) for lr in re.findall(r"LR:(\S+)$", out, re.M)]
    assert lrs == pytest.approx([0.1, 0.01, 0.001])


def test_progress_bar_runs_over_epochs(capsys, datasets):
    rc, _, err = train(capsys, datasets, "mnist-mlp-plateau", "--epochs", "2", "--progress", "--no-tensorboard",
                       "--batch-size", "128")
    assert rc == 0
    assert re.search(r"Epochs: 100%.*\| 2/2 ", err), err


def test_resume_continues_at_the_next_epoch_and_then_has_nothing_to_do(capsys, datasets):
    def run(*flags: str) -> str:
        rc, out, err = train(capsys, datasets, "mnist-mlp-plateau", "--no-tensorboard", *flags)
        assert rc == 0, err
        return out

    straight = run("--epochs", "2", "--checkpoint-dir", "straight")
    first = run("--epochs", "1", "--checkpoint-dir", "ckpt")
    assert "Epoch 0\t" in first and "Epoch 1\t" not in first

    resumed = run("--epochs", "2", "--checkpoint-dir", "ckpt", "--resume")
    assert re.search(r"^Resumed from ckpt/\S+\.pt at epoch 1, iteration 8\.$", resumed, re.M), resumed
    assert "Epoch 0\t" not in resumed
    epoch1 = [line for line in resumed.splitlines() if line.startswith("Epoch 1\t")]
    assert epoch1 == [line for line in straight.splitlines() if line.startswith("Epoch 1\t")]

    again = run("--epochs", "2", "--checkpoint-dir", "ckpt", "--resume")
    assert again.startswith("Resumed from") and "Nothing to do" in again
    assert not re.search(r"^Epoch ", again, re.M)


@pytest.mark.parametrize("name", list(RECIPES))
def test_show_plan_prints_each_recipes_real_handlers_in_their_declared_order(capsys, datasets, name):
    _, out, err = train(capsys, datasets, name, "--show-plan", "--epochs", "2", "--max-iterations", "1",
                        "--checkpoint-every", "50", "--batch-size", "64", "--no-progress")
    assert "error" not in err  # the speed run exits 1 when one iteration does not reach its target: not an error
    lines = out.splitlines()
    events = [line for line in lines if line and not line.startswith(" ") and line.isupper()]
    assert events[0] == "STARTED" and "ITERATION_COMPLETED" in events and "COMPLETED" in events

    def handlers(event: str) -> list[str]:
        start = lines.index(event) + 1
        block = []
        for line in lines[start:]:
            if not line.startswith("  "):
                break
            block.append(line.split()[1])
        return block

    per_iteration = handlers("ITERATION_COMPLETED")
    assert per_iteration[0] == "TerminateOnNan._iteration_completed"
    assert per_iteration.index("Checkpoint._on_event") < per_iteration.index("GracefulStop._stop_if_asked")
    per_epoch = handlers("EPOCH_COMPLETED")
    if "Evaluate.evaluate" in per_epoch:
        assert per_epoch.index("Evaluate.evaluate") < per_epoch.index("TensorBoardLogger._log_epoch")
    assert per_epoch[-1] == "Checkpoint._on_event"
    orders = [int(line.split()[0]) for line in lines[lines.index("EPOCH_COMPLETED") + 1:] if line.startswith("  ")]
    assert orders[: len(per_epoch)] == sorted(orders[: len(per_epoch)])


def _resumable_state(folder: Path) -> dict:
    """What must match bit for bit between a straight and a resumed run: every saved object but the run
    record and the handlers' windows of wall-clock times, with the schedulers' states."""
    from harness import load_payload  # tests/ is on the path (conftest)

    from ember.callbacks import Checkpoint

    payload = load_payload(Checkpoint.latest(folder))
    objects = {k: v for k, v in payload["objects"].items() if k not in ("run", "handlers")}
    handlers = payload["objects"].get("handlers", {})
    objects["schedulers"] = {k: v for k, v in handlers.items() if k.startswith("LRScheduler")}
    return {"step": payload["step"], "objects": objects, "rng": payload["rng"]}


@pytest.mark.parametrize(("name", "how"), [*((name, "max-iterations") for name in RECIPES),
                                            ("mnist-mlp-plateau", "checkpoint-every")])
def test_a_save_at_an_epochs_last_iteration_resumes_like_the_straight_run(name, how, capsys, datasets):
    """Issue 25 item 1: a checkpoint at epoch 1's last iteration (by --max-iterations, or by --checkpoint-every
    then a kill-like stop: the run is cut there and the epoch end is not in the file) resumes to the straight
    run's weights, optimizer, counters, schedulers and RNG."""
    from harness import assert_same, load_payload

    base = ["--epochs", "2", "--batch-size", "64", "--no-tensorboard", "--no-progress"]
    rc, _, err = train(capsys, datasets, name, *base, "--checkpoint-dir", "straight")
    assert rc in (0, 1), err  # the speed run exits 1 when it does not reach its target
    straight = _resumable_state(Path("straight"))
    per_epoch = straight["step"] // 2
    cut = ["--checkpoint-dir", "cut", "--max-iterations", str(per_epoch)]
    if how == "checkpoint-every":
        cut += ["--checkpoint-every", str(per_epoch)]
    assert train(capsys, datasets, name, *base, *cut)[0] in (0, 1)
    assert load_payload(Path("cut") / f"checkpoint_{per_epoch:09d}.pt")["epoch_end_pending"] is True
    rc, out, err = train(capsys, datasets, name, *base, "--checkpoint-dir", "cut", "--resume")
    assert rc in (0, 1) and "Resumed from" in out and "Traceback" not in err, out + err
    resumed = _resumable_state(Path("cut"))
    assert_same(straight, resumed, name)
