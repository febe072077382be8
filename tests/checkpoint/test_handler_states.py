"""Handler state in checkpoints: a run stopped and resumed from its checkpoint prints and decides exactly what
the straight run prints and decides (EarlyStopping's patience, LossPrinter's and ThroughputMonitor's windows
mid-epoch, an Ignite parameter scheduler), and a handler added or removed between save and resume warns."""

from __future__ import annotations

import io

import pytest
import torch
from ignite.handlers import PiecewiseLinear
from torch import nn
from torch.nn import functional as F

from ember.callbacks import Checkpoint, EarlyStopping, LossPrinter, ThroughputMonitor
from ember.checkpoint.handler_states import HandlerStates
from ember.engine import Engine, Events
from ember.steps import create_trainer

EPOCH = 10  # batches per epoch


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 6, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(EPOCH)]


def build(out: io.StringIO, *, printer: bool = True, monitor: bool = False, schedule: bool = False):
    """Fresh objects as a new process makes them: seeded model and optimizer, trainer, handlers."""
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = create_trainer(model, optimizer, F.cross_entropy)
    handlers = {}
    if printer:
        handlers["printer"] = trainer.add(LossPrinter(every=4, window=True, fmt="{iteration} {loss:.9f}", file=out))
    if monitor:
        handlers["monitor"] = trainer.add(ThroughputMonitor(fmt="{epoch} {avg_loss:.9f}", file=out))
    if schedule:
        scheduler = PiecewiseLinear(optimizer, "lr", [(0, 0.1), (25, 0.01)])
        trainer.add_event_handler(Events.ITERATION_STARTED, scheduler)
        lrs = handlers["lrs"] = []
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: lrs.append(optimizer.param_groups[0]["lr"]))
    return {"model": model, "optimizer": optimizer, "trainer": trainer}, handlers


def stop_at(trainer: Engine, iteration: int) -> None:
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=iteration), lambda e: e.terminate())


def straight_and_resumed(tmp_path, stop: int, **kinds):
    """Run 3 epochs straight; run again stopped at `stop`, then resume in fresh objects. Returns both outputs."""
    straight = io.StringIO()
    objects, handlers = build(straight, **kinds)
    objects["trainer"].run(batches(), max_epochs=3)

    first = io.StringIO()
    objects, _ = build(first, **kinds)
    stop_at(objects["trainer"], stop)
    objects["trainer"].add(Checkpoint(objects, tmp_path, every_epochs=None, every_iterations=1000))
    objects["trainer"].run(batches(), max_epochs=3)
    assert objects["trainer"].state.iteration == stop

    second = io.StringIO()
    objects, resumed = build(second, **kinds)
    objects["trainer"].add(Checkpoint(objects, tmp_path, every_epochs=None, every_iterations=1000))
    assert Checkpoint.resume_latest(tmp_path, objects) is not None
    objects["trainer"].run(batches(), max_epochs=3)
    return straight.getvalue(), first.getvalue() + second.getvalue(), handlers, resumed


@pytest.mark.parametrize("stop", [6, 15, 20])
def test_loss_printer_window_resumes_mid_epoch_exactly(tmp_path, stop):
    straight, resumed, _, _ = straight_and_resumed(tmp_path, stop)
    assert resumed == straight
    assert len(straight.splitlines()) == 6  # steps 4 and 8 of each epoch


def test_throughput_monitor_epoch_continues_across_a_resume(tmp_path):
    straight, resumed, handlers, again = straight_and_resumed(tmp_path, 13, printer=False, monitor=True)
    assert resumed == straight  # the epoch's mean loss covers all of its steps, in both runs
    assert again["monitor"].samples == handlers["monitor"].samples == 4 * EPOCH
    assert again["monitor"]._count == EPOCH


def test_ignite_param_scheduler_state_is_saved_and_restored(tmp_path):
    straight = io.StringIO()
    objects, handlers = build(straight, printer=False, schedule=True)
    objects["trainer"].run(batches(), max_epochs=3)

    _, _, _, resumed = straight_and_resumed(tmp_path, 12, printer=False, schedule=True)
    assert resumed["lrs"] == handlers["lrs"][12:]


def epochs_with_scores(scores: list[float]) -> tuple[Engine, EarlyStopping, io.StringIO]:
    trainer = Engine(lambda e, b: torch.tensor(0.0))
    feed = dict(enumerate(scores, start=1))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.__setitem__("val/loss",
                                                                                             feed[e.state.epoch]))
    out = io.StringIO()
    stopper = trainer.add(EarlyStopping("val/loss", patience=3, file=out))
    return trainer, stopper, out


def test_early_stopping_patience_continues_across_a_resume(tmp_path):
    scores = [1.0, 0.8, 0.9, 0.85, 0.95, 0.7, 0.6, 0.5]
    trainer, _, straight = epochs_with_scores(scores)
    trainer.run([0, 1], max_epochs=8)
    assert trainer.state.epoch == 5

    trainer, _, first = epochs_with_scores(scores)
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=4), lambda e: e.terminate())
    trainer.add(Checkpoint({"trainer": trainer}, tmp_path))
    trainer.run([0, 1], max_epochs=8)
    assert first.getvalue() == ""

    trainer, stopper, second = epochs_with_scores(scores)
    Checkpoint.resume_latest(tmp_path, {"trainer": trainer})
    trainer.run([0, 1], max_epochs=8)
    assert trainer.state.epoch == 5  # a counter restarted at 0 would wait until epoch 7
    assert second.getvalue() == straight.getvalue()
    assert (stopper.best, stopper.best_epoch, stopper.counter) == (0.8, 2, 3)


def test_keys_name_handlers_by_class_and_name_not_position():
    trainer = Engine(lambda e, b: None)
    trainer.add_event_handler(Events.STARTED, lambda e: None)
    first = trainer.add(EarlyStopping("a", file=io.StringIO()))
    second = trainer.add(EarlyStopping("b", file=io.StringIO()))
    second.name = "fine-tune"
    third = trainer.add(EarlyStopping("c", file=io.StringIO()))
    found = HandlerStates(trainer).handlers()
    assert found == {"EarlyStopping": first, "EarlyStopping:fine-tune": second, "EarlyStopping#2": third}


def test_a_handler_added_or_removed_since_the_checkpoint_warns_and_nothing_fails(tmp_path):
    trainer, _, _ = epochs_with_scores([1.0, 0.9])
    trainer.add(Checkpoint({"trainer": trainer}, tmp_path))
    trainer.run([0], max_epochs=1)

    trainer = Engine(lambda e, b: torch.tensor(0.0))
    trainer.add(LossPrinter(every=1, window=True, fmt="{loss}", file=io.StringIO()))
    Checkpoint.resume_latest(tmp_path, {"trainer": trainer})
    with pytest.warns(RuntimeWarning) as caught:
        trainer.run([0], max_epochs=2)
    text = " ".join(str(w.message) for w in caught)
    assert "not in the checkpoint start afresh: LossPrinter" in text
    assert "no such handler attached, ignored: EarlyStopping" in text
    assert trainer.state.epoch == 2


def test_handler_states_can_be_left_out(tmp_path):
    trainer, _, _ = epochs_with_scores([1.0])
    trainer.add(Checkpoint({"trainer": trainer}, tmp_path, save_handlers=False))
    trainer.run([0], max_epochs=1)
    saved = torch.load(Checkpoint.latest(tmp_path), weights_only=True)
    assert "handlers" not in saved["objects"]
