"""LossPrinter, TerminateOnNan, ThroughputMonitor and TensorBoardLogger read tensor values only on the
iterations they fire."""

import io
import warnings

import pytest
import torch
from torch import nn

from ember.callbacks.correct_counter import CorrectCounter
from ember.callbacks.loss_printer import LossPrinter
from ember.callbacks.tensorboard_logger import TensorBoardLogger
from ember.callbacks.terminate_on_nan import TerminateOnNan
from ember.callbacks.throughput_monitor import ThroughputMonitor
from ember.engine import Events
from ember.recipes.formats import SEED001_FMT, SEED003_FMT
from ember.steps import create_trainer

SYNCING = ("item", "tolist", "__float__", "__int__", "__bool__")


@pytest.fixture
def trainer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    return create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.05), nn.CrossEntropyLoss())


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(240, 4, generator=g), torch.randint(0, 2, (240,), generator=g)
    # a plain list: creating a DataLoader iterator draws a seed with .item(), which is not our business here
    return list(zip(x.split(8), y.split(8)))  # 30 iterations per epoch


def record_syncs(monkeypatch, trainer) -> list:
    """Patch the Tensor methods that read a value on the host; return the list of iterations they ran on."""
    seen: list = []
    for name in SYNCING:
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, _original=original, **kwargs):
            seen.append(trainer.state.iteration)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return seen


def test_plain_training_step_does_not_sync(monkeypatch, trainer, data):
    seen = record_syncs(monkeypatch, trainer)
    trainer.run(data, max_epochs=2)
    assert seen == []


def test_loss_printer_reads_only_when_printing(monkeypatch, trainer, data):
    trainer.add(LossPrinter(every=10, size=240, file=io.StringIO()))
    seen = record_syncs(monkeypatch, trainer)
    trainer.run(data, max_epochs=2)
    assert seen == [1, 11, 21, 31, 41, 51]


def test_windowed_loss_printer_reads_only_when_printing(monkeypatch, trainer, data):
    trainer.add(LossPrinter(every=10, fmt=SEED001_FMT, window=True, file=io.StringIO()))
    seen = record_syncs(monkeypatch, trainer)
    trainer.run(data, max_epochs=2)
    assert seen == [10, 20, 30, 40, 50, 60]


def test_terminate_on_nan_reads_only_every_check_every_steps(monkeypatch, trainer, data):
    trainer.add(TerminateOnNan(check_every=7))
    seen = record_syncs(monkeypatch, trainer)
    trainer.run(data, max_epochs=2)
    # every 7 steps, plus the last step of each epoch (30, 60)
    assert seen == [7, 14, 21, 28, 30, 37, 44, 51, 58, 60]
    assert trainer.state.terminated_on_nan is None


def test_throughput_monitor_reads_once_per_epoch(monkeypatch, trainer, data):
    trainer.add(ThroughputMonitor(fmt=SEED003_FMT, file=io.StringIO()))
    seen = record_syncs(monkeypatch, trainer)
    trainer.run(data, max_epochs=3)
    assert seen == [30, 60, 90]


def counting_trainer():
    """A trainer whose loss function also counts right predictions (the recipes' set-up for TensorBoard)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    counter = CorrectCounter(nn.CrossEntropyLoss())
    return create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.05), counter), counter


def test_tensorboard_logger_reads_only_at_logging_steps_and_epoch_ends(monkeypatch, data, tmp_path):
    trainer, counter = counting_trainer()
    trainer.add(TensorBoardLogger(tmp_path, log_every=10, correct=counter))
    seen = record_syncs(monkeypatch, trainer)
    trainer.run(data, max_epochs=2)
    # one read per logged iteration (loss, gradient norm, LR together), one per epoch (loss and accuracy sums)
    assert seen == [10, 20, 30, 30, 40, 50, 60, 60]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_cuda_device_syncs_happen_only_on_firing_iterations(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).cuda()
    trainer = create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.05), nn.CrossEntropyLoss(), "cuda")
    data = [(torch.randn(8, 4, device="cuda"), torch.randint(0, 2, (8,), device="cuda")) for _ in range(30)]
    trainer.add(LossPrinter(every=10, size=240, file=io.StringIO()))
    trainer.add(LossPrinter(every=10, fmt=SEED001_FMT, window=True, file=io.StringIO()))
    trainer.add(TerminateOnNan(check_every=7))
    monitor = trainer.add(ThroughputMonitor(fmt=SEED003_FMT, file=io.StringIO()))
    trainer.add(TensorBoardLogger(tmp_path, log_every=10))
    allowed = {1, 11, 21, 31, 41, 51} | {10, 20, 30, 40, 50, 60} | {7, 14, 21, 28, 30, 37, 44, 51, 58, 60}
    synced: list = []

    def collect(engine, caught):
        synced.extend([engine.state.iteration] * len(caught))
        caught.clear()

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.add_event_handler(Events.ITERATION_COMPLETED, collect, caught=caught)
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.run(data, max_epochs=2)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert set(synced) <= allowed, sorted(set(synced) - allowed)
    assert 0 < monitor.step_ms < 1000 and 0 < monitor.epoch_s < 60
    assert trainer.state.metrics["throughput/samples_per_s"] > 0
