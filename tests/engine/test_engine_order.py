"""Declared handler order: lower `ember_order` first, ties in attachment order; ember's handlers default to levels that
put computing before reading and the checkpoint after the handlers whose state it saves; the printable plan."""

from __future__ import annotations

import io

import ignite.engine
import pytest
import torch

from ember.callbacks import Checkpoint, EarlyStopping, Evaluate, LossPrinter, TerminateOnNan
from ember.engine import Engine, Events
from ember.engine import order as levels


def named(calls: list[str], name: str, order: int | None = None):
    def handler(engine):
        calls.append(name)

    handler.__qualname__ = name
    if order is not None:
        handler.ember_order = order
    return handler


def test_lower_order_runs_first_and_ties_keep_attachment_order():
    calls: list[str] = []
    engine = Engine(lambda e, b: None)
    for name, order in [("a", None), ("late", 50), ("b", None), ("early", -50), ("c", 0), ("late2", 50)]:
        engine.add_event_handler(Events.ITERATION_COMPLETED, named(calls, name, order))
    engine.run([0], max_epochs=1)
    assert calls == ["early", "a", "b", "c", "late", "late2"]


def test_order_holds_for_filtered_events_and_callback_objects():
    calls: list[str] = []
    engine = Engine(lambda e, b: None)

    class Callback:
        def attach(self, engine):
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=2), self.run)

        def run(self, engine):
            calls.append("callback")

    engine.add_event_handler(Events.ITERATION_COMPLETED, named(calls, "plain"))
    engine.add(Callback(), order=-10)
    engine.run([0, 1], max_epochs=1)
    assert calls == ["plain", "callback", "plain"]


def test_a_handlers_own_order_attribute_is_not_ember_order():
    """An `order` a handler has for its own reasons (a polynomial feature's degree, say) leaves it in attachment
    order, as on Ignite; only `ember_order` (set by `@ordered`, by `engine.add(order=)` or by hand) places it."""
    calls: list[str] = []

    class Polynomial:
        def __init__(self, order):
            self.order = order

        def __call__(self, engine):
            calls.append(f"poly{self.order}")

        def attach(self, engine):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def own_order(engine):
        calls.append("fn")

    own_order.order = -5
    for engine in (Engine(lambda e, b: None), ignite.engine.Engine(lambda e, b: None)):
        engine.add_event_handler(Events.ITERATION_COMPLETED, named(calls, "first"))
        engine.add_event_handler(Events.ITERATION_COMPLETED, Polynomial(3))
        engine.add_event_handler(Events.ITERATION_COMPLETED, own_order)
        engine.add_event_handler(Events.ITERATION_COMPLETED, Polynomial(-2).__call__)
        engine.run([0], max_epochs=1)
    assert calls == ["first", "poly3", "fn", "poly-2"] * 2

    calls.clear()
    engine = Engine(lambda e, b: None)
    engine.add_event_handler(Events.ITERATION_COMPLETED, named(calls, "first"))
    poly = engine.add(Polynomial(3), order=-1)
    engine.add_event_handler(Events.ITERATION_COMPLETED, levels.ordered(-2)(named(calls, "decorated")))
    engine.run([0], max_epochs=1)
    assert calls == ["decorated", "poly3", "first"]
    assert poly.order == 3 and poly.ember_order == -1


def test_ordered_declares_a_class_and_refuses_a_non_int():
    calls: list[str] = []

    @levels.ordered(levels.READ)
    class Reader:
        def attach(self, engine):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.read)

        def read(self, engine):
            calls.append("reader")

    engine = Engine(lambda e, b: None)
    engine.add(Reader())
    engine.add_event_handler(Events.EPOCH_COMPLETED, named(calls, "plain"))
    engine.run([0], max_epochs=1)
    assert calls == ["plain", "reader"]
    with pytest.raises(TypeError, match=r"ordered\(level\): level must be an int"):
        levels.ordered("100")


def test_handlers_without_order_keep_ignites_attachment_order():
    calls: list[str] = []
    ember_engine = Engine(lambda e, b: None)
    ignite_engine = ignite.engine.Engine(lambda e, b: None)
    for engine in (ember_engine, ignite_engine):
        for name in "xyz":
            engine.add_event_handler(Events.EPOCH_COMPLETED, named(calls, name))
        engine.run([0], max_epochs=1)
    assert calls == list("xyzxyz")


def test_a_reader_attached_before_evaluate_reads_this_epochs_metrics():
    evaluator = Engine(lambda e, b: None)
    runs: list[int] = []
    evaluator.add_event_handler(Events.COMPLETED, lambda e: (runs.append(1), e.state.metrics.update(n=len(runs))))
    trainer = Engine(lambda e, b: torch.tensor(0.5))
    seen: list[int] = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(e.state.metrics["val/n"]))
    trainer.add(Evaluate(evaluator, [0]))
    trainer.run([0], max_epochs=2)
    assert seen == [1, 2]


def test_checkpoint_attached_first_still_saves_the_counter_early_stopping_just_updated(tmp_path):
    trainer = Engine(lambda e, b: torch.tensor(0.0))
    trainer.add(Checkpoint({"trainer": trainer}, tmp_path, keep_last=None))
    stopper = EarlyStopping("val/loss", patience=5, file=io.StringIO())
    feed = {1: 1.0, 2: 2.0, 3: 3.0}
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.__setitem__("val/loss",
                                                                                             feed[e.state.epoch]))
    trainer.add(stopper)
    trainer.run([0], max_epochs=3)
    saved = torch.load(tmp_path / "checkpoint_000000002.pt", weights_only=True)
    assert saved["objects"]["handlers"]["EarlyStopping"]["counter"] == 1


def test_describe_returns_the_plan_and_prints_nothing(capsys):
    """The docs say `print(trainer.describe())`: describe() gives the text, the caller prints it."""
    trainer = Engine(lambda e, b: b)
    trainer.add_event_handler(Events.EPOCH_COMPLETED(every=2), print)
    plan = trainer.describe()
    assert isinstance(plan, str) and plan.splitlines() == ["EPOCH_COMPLETED", "       0  print  [every=2]"]
    assert capsys.readouterr() == ("", "")


def test_plan_lists_each_event_in_running_order_with_filters_and_orders(tmp_path):
    trainer = Engine(lambda e, b: torch.tensor(0.0))
    trainer.add(Checkpoint({"trainer": trainer}, tmp_path, every_iterations=100))
    trainer.add(LossPrinter(every=100, fmt="{loss}", file=io.StringIO()))
    trainer.add(TerminateOnNan())

    def log_lr(engine):
        pass

    trainer.add_event_handler(Events.ITERATION_STARTED(once=[3, 5]), log_lr)
    plan = trainer.describe()
    lines = plan.splitlines()
    assert lines[0] == "STARTED"
    completed = lines[lines.index("ITERATION_COMPLETED") + 1: lines.index("EPOCH_COMPLETED")]
    assert [line.split()[:2] for line in completed] == [
        [str(levels.GUARD), "TerminateOnNan._iteration_completed"],
        [str(levels.READ), "LossPrinter._on_iteration"],
        [str(levels.CHECKPOINT), "Checkpoint._on_event"],
    ]
    assert completed[-1].endswith("[every=100]")
    name = "test_plan_lists_each_event_in_running_order_with_filters_and_orders.log_lr"
    assert f"       0  {name}  [once=[3, 5]]" in lines
    assert lines.index("STARTED") < lines.index("ITERATION_STARTED") < lines.index("ITERATION_COMPLETED")
