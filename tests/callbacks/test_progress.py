"""ProgressBar: what the bar shows, when it is on, and how rarely it reads the loss."""

from __future__ import annotations

import io
import re
import sys

import pytest
import torch

from ember.callbacks.progress_bar import ProgressBar
from ember.engine import Engine, Events


class CountingTensor(torch.Tensor):
    """A tensor that counts how often its value is read back with .item() (a device sync on a GPU)."""

    reads = 0

    def item(self) -> float:
        CountingTensor.reads += 1
        return super().item()


class FakeTTY(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def loss_engine() -> Engine:
    """An engine whose step returns the loss 0.01 * iteration as a counting tensor."""
    return Engine(lambda e, b: torch.tensor(0.01 * e.state.iteration).as_subclass(CountingTensor))


def renders(text: str) -> list[str]:
    """The successive states tqdm drew (it separates redraws with carriage returns and newlines)."""
    return [part.strip() for part in re.split(r"[\r\n]", text) if part.strip()]


def test_per_epoch_bars_show_final_count_and_loss() -> None:
    out = FakeTTY()
    engine = loss_engine()
    bar = engine.add(ProgressBar(enabled=True, file=out, refresh_every=10))
    engine.run(range(25), max_epochs=2)
    drawn = renders(out.getvalue())
    last_of_epoch = {e: [r for r in drawn if r.startswith(f"Epoch {e}/2")][-1] for e in (1, 2)}
    assert "25/25" in last_of_epoch[1] and "loss=0.2500" in last_of_epoch[1]
    assert "25/25" in last_of_epoch[2] and "loss=0.5000" in last_of_epoch[2]
    assert bar.bar is None


def test_per_run_bar_counts_epochs() -> None:
    out = FakeTTY()
    engine = loss_engine()
    engine.add(ProgressBar(per="run", enabled=True, file=out, refresh_every=4, desc="Training"))
    engine.run(range(6), max_epochs=3)
    final = renders(out.getvalue())[-1]
    assert final.startswith("Training") and "3/3" in final and "loss=0.1800" in final


def test_loss_is_read_only_when_refreshing() -> None:
    engine = loss_engine()
    engine.add(ProgressBar(enabled=True, file=io.StringIO(), refresh_every=10))
    CountingTensor.reads = 0
    engine.run(range(25), max_epochs=2)
    # global iterations 10, 20, 30, 40, 50, plus the last iteration of epoch 1 (25) when the bar finishes
    assert CountingTensor.reads == 6

    engine = loss_engine()
    engine.add(ProgressBar(per="run", enabled=True, file=io.StringIO(), refresh_every=25))
    CountingTensor.reads = 0
    engine.run(range(25), max_epochs=2)
    assert CountingTensor.reads == 2


def test_enabled_none_is_off_without_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    out = FakeTTY()
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    engine = loss_engine()
    bar = engine.add(ProgressBar(file=out))
    CountingTensor.reads = 0
    engine.run(range(30), max_epochs=2)
    assert out.getvalue() == "" and CountingTensor.reads == 0 and bar.bar is None

    monkeypatch.setattr(sys, "stdout", FakeTTY())
    engine = loss_engine()
    engine.add(ProgressBar(file=out))
    engine.run(range(30), max_epochs=1)
    assert "30/30" in renders(out.getvalue())[-1]


def test_resumed_epoch_starts_where_it_stopped() -> None:
    out = FakeTTY()
    engine = loss_engine()
    engine.load_state_dict({"iteration": 15, "epoch_length": 10, "max_epochs": 2})
    engine.add(ProgressBar(enabled=True, file=out, refresh_every=1))
    engine.run(range(10))
    drawn = renders(out.getvalue())
    assert drawn[0].startswith("Epoch 2/2") and "5/10" in drawn[0]
    assert "10/10" in drawn[-1] and "loss=0.2000" in drawn[-1]


def test_bar_closes_when_the_run_raises() -> None:
    out = FakeTTY()
    engine = loss_engine()
    bar = engine.add(ProgressBar(enabled=True, file=out, refresh_every=1))

    @engine.on(Events.ITERATION_COMPLETED(once=7))
    def fail(_: Engine) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        engine.run(range(10))
    assert bar.bar is None
    assert "7/10" in renders(out.getvalue())[-1]


def test_bad_arguments_are_explained() -> None:
    with pytest.raises(ValueError, match="per must be"):
        ProgressBar(per="iteration")
    with pytest.raises(ValueError, match="refresh_every"):
        ProgressBar(refresh_every=0)


class FakeClock:
    """time.monotonic for the bar: each reading is one second after the previous one."""

    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        self.t += 1.0
        return self.t


def test_samples_per_s_counts_the_samples_of_a_partial_last_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    import ember.callbacks.progress_bar as progress_bar

    clock = FakeClock()
    monkeypatch.setattr(progress_bar, "time", clock)
    batches = [torch.zeros(64, 2)] * 9 + [torch.zeros(16, 2)]  # 592 samples, the last batch partial
    out = FakeTTY()
    engine = Engine(lambda e, b: torch.tensor(1.0))
    engine.add(ProgressBar(enabled=True, file=out, refresh_every=100))
    engine.run(batches, max_epochs=1)
    final = renders(out.getvalue())[-1]
    # opened at t=1, read at t=2 when the epoch's bar finishes: 592 samples in one second (not 10 x 16 = 160)
    assert "10/10" in final and "samples/s=592" in final, final


def test_forced_bar_on_a_pipe_writes_one_whole_line_per_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    out, printed = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", printed)
    engine = loss_engine()

    @engine.on(Events.EPOCH_COMPLETED)
    def say(e: Engine) -> None:
        print(f"epoch {e.state.epoch} done")

    engine.add(ProgressBar(enabled=True, file=out, refresh_every=3))
    engine.run(range(10), max_epochs=2)
    lines = out.getvalue().split("\n")
    assert "\r" not in out.getvalue() and lines[-1] == ""
    assert [line.split(":")[0] for line in lines[:-1]] == ["Epoch 1/2", "Epoch 2/2"]
    assert all("10/10" in line and "loss=" in line for line in lines[:-1]), lines
    assert printed.getvalue() == "epoch 1 done\nepoch 2 done\n"  # not redirected above a bar: untouched


def test_a_stopped_run_leaves_the_bar_at_the_last_iteration_done() -> None:
    out = FakeTTY()
    engine = loss_engine()
    bar = engine.add(ProgressBar(enabled=True, file=out, refresh_every=5))
    engine.add_event_handler(Events.ITERATION_COMPLETED(once=7), lambda e: e.terminate())
    engine.run(range(10))
    final = renders(out.getvalue())[-1]
    assert bar.bar is None and "7/10" in final and "loss=0.0700" in final, final


@pytest.mark.parametrize("columns", [60, 80, 120])
def test_the_loss_is_whole_at_every_width(columns: int) -> None:
    out = FakeTTY()
    engine = Engine(lambda e, b: torch.tensor(2.3456789))
    engine.add(ProgressBar(enabled=True, file=out, refresh_every=10, ncols=columns, desc="Epoch"))
    engine.load_state_dict({"iteration": 9 * 938, "epoch_length": 938, "max_epochs": 10})  # the last epoch only
    engine.run([torch.zeros(64, 1)] * 938)
    for drawn in renders(out.getvalue()):
        assert len(drawn) <= columns, drawn
    final = renders(out.getvalue())[-1]
    assert final.startswith("Epoch 10/10") and "938/938" in final and "loss=2.3457" in final, final
    assert ("samples/s=" in final) == (columns >= ProgressBar.NARROWEST), final
    assert ("it/s" in final) == (columns >= ProgressBar.NARROW), final
