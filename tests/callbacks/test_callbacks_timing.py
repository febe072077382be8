"""Timer and ThroughputMonitor store step/epoch times and samples/s, and print seed 003's MindSpore lines."""

import io
import re
import time

import pytest
import torch
from torch import nn

from ember.callbacks.throughput_monitor import ThroughputMonitor
from ember.callbacks.timer import Timer
from ember.engine import Engine, Events
from ember.recipes.formats import SEED003_FMT
from ember.steps import create_trainer


def sleepy_engine(seconds: float) -> Engine:
    def step(engine, batch):
        time.sleep(seconds)
        return torch.tensor(float(engine.state.iteration))

    return Engine(step)


def batches(n: int, size: int = 8) -> list:
    return [(torch.zeros(size, 3), torch.zeros(size)) for _ in range(n)]


def test_timer_metrics_exclude_epoch_completed_handlers():
    engine = sleepy_engine(0.004)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: time.sleep(0.3))  # e.g. an evaluation
    timer = engine.add(Timer())
    steps_ms = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: steps_ms.append(e.state.metrics["time/step_ms"]))
    engine.run(batches(5), max_epochs=1)
    m = engine.state.metrics
    assert len(steps_ms) == 5 and all(4 <= ms < 300 for ms in steps_ms)
    assert 0.02 <= m["time/epoch_s"] < 0.3  # 5 steps of >= 4 ms; the 0.3 s handler is not counted
    assert m["time/step_avg_ms"] == pytest.approx(m["time/epoch_s"] * 1000 / 5)
    assert m["time/step_ms"] == timer.step_ms >= 4


def test_throughput_from_batch_length_or_given_batch_size():
    engine = sleepy_engine(0.003)
    monitor = engine.add(ThroughputMonitor())
    engine.run(batches(6, size=8), max_epochs=1)
    assert monitor.samples == 48
    m = engine.state.metrics
    assert m["throughput/samples_per_s"] == pytest.approx(48 / m["time/epoch_s"])
    assert 0 < m["throughput/samples_per_s"] <= 8 / 0.003

    engine = sleepy_engine(0.0)
    monitor = engine.add(ThroughputMonitor(batch_size=32))
    engine.run([None] * 3, max_epochs=1)
    assert monitor.samples == 96


def test_seed003_lines_with_exact_losses():
    out = io.StringIO()
    engine = sleepy_engine(0.001)
    engine.optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    engine.add(ThroughputMonitor(fmt=SEED003_FMT, file=out))
    engine.run(batches(4), max_epochs=10)
    lines = out.getvalue().splitlines()
    assert len(lines) == 20
    # losses are the iteration numbers: epoch 1 has 1..4 (last 4, mean 2.5); epoch 10 has 37..40
    first = re.fullmatch(r"Epoch:\[  0/ 10\], step:\[    4/    4\], loss:\[4\.000/2\.500\], "
                         r"time:(\d+\.\d{3}) ms, lr:0\.01000", lines[0])
    assert first, lines[0]
    assert float(first[1]) >= 1.0
    second = re.fullmatch(r"Epoch time: (\d+\.\d{3}) ms, per step time: (\d+\.\d{3}) ms, avg loss: 2\.500", lines[1])
    assert second, lines[1]
    assert float(second[2]) == pytest.approx(float(second[1]) / 4, abs=1e-3)
    assert lines[18].startswith("Epoch:[  9/ 10], step:[    4/    4], loss:[40.000/38.500], ")
    assert lines[19].endswith("avg loss: 38.500")


def test_seed003_with_a_real_trainer_and_lr_from_metrics():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    trainer = create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), nn.CrossEntropyLoss())
    out = io.StringIO()
    trainer.add(ThroughputMonitor(fmt=SEED003_FMT, file=out))
    data = [(torch.randn(4, 3), torch.randint(0, 2, (4,))) for _ in range(5)]
    trainer.run(data, max_epochs=2)
    pattern = (r"Epoch:\[  [01]/  2\], step:\[    5/    5\], loss:\[\d\.\d{3}/\d\.\d{3}\], time:\d+\.\d{3} ms, "
               r"lr:0\.01000\nEpoch time: \d+\.\d{3} ms, per step time: \d+\.\d{3} ms, avg loss: \d\.\d{3}\n")
    assert re.fullmatch(f"({pattern}){{2}}", out.getvalue()), out.getvalue()

    engine = sleepy_engine(0.0)  # no optimizer attribute: the LR comes from state.metrics
    engine.add_event_handler(Events.STARTED, lambda e: e.state.metrics.__setitem__("lr", 0.5))
    out = io.StringIO()
    engine.add(ThroughputMonitor(fmt="{lr:.2f} {samples_per_s:.0f}", file=out))
    engine.run([None], max_epochs=1)
    assert out.getvalue().startswith("0.50 0")


def test_epoch_length_unknown_until_the_first_pass_ends():
    out = io.StringIO()
    engine = sleepy_engine(0.0)
    engine.add(ThroughputMonitor(fmt="{epoch}: {step}/{steps} {avg_loss:.1f}", file=out))
    engine.run(iter(batches(3)), max_epochs=1)
    assert out.getvalue() == "1: 3/3 2.0\n"
