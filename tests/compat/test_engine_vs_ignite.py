"""ember's Engine fires the same events, in the same order and with the same counters, as ignite's Engine."""

from collections.abc import Callable

import pytest
from ignite.engine import Engine as IgniteEngine
from ignite.engine import Events as IgniteEvents

from ember.engine import Engine, Events

NAMES = [
    "STARTED",
    "EPOCH_STARTED",
    "GET_BATCH_STARTED",
    "GET_BATCH_COMPLETED",
    "ITERATION_STARTED",
    "ITERATION_COMPLETED",
    "EPOCH_COMPLETED",
    "COMPLETED",
    "TERMINATE",
    "TERMINATE_SINGLE_EPOCH",
]


def record(engine, events, log: list) -> None:
    """Attach a recorder of (event, epoch, iteration) to every event."""
    for name in NAMES:
        engine.add_event_handler(
            getattr(events, name), lambda e, n=name, **_: log.append((n, e.state.epoch, e.state.iteration))
        )


def both(program: Callable) -> tuple[list, list]:
    """Run `program(EngineClass, EventsClass, log)` on ember and on ignite; return both logs."""
    logs = []
    for engine_cls, events in ((Engine, Events), (IgniteEngine, IgniteEvents)):
        log: list = []
        program(engine_cls, events, log)
        logs.append(log)
    return logs[0], logs[1]


def make(engine_cls, events, log, step=lambda e, b: b):
    engine = engine_cls(step)
    record(engine, events, log)
    return engine


def test_plain_run():
    def program(E, Ev, log):
        make(E, Ev, log).run(list(range(4)), max_epochs=3)

    ours, theirs = both(program)
    assert ours == theirs
    assert len(ours) > 40


@pytest.mark.parametrize("at", [1, 5, 8, 12])
def test_terminate_mid_epoch_and_at_boundaries(at):
    def program(E, Ev, log):
        engine = make(E, Ev, log)
        engine.add_event_handler(Ev.ITERATION_COMPLETED(once=at), lambda e: e.terminate())
        engine.run(list(range(4)), max_epochs=3)
        log.append(("state", engine.state.epoch, engine.state.iteration))

    ours, theirs = both(program)
    assert ours == theirs
    assert ("TERMINATE", (at - 1) // 4 + 1, at) in ours


@pytest.mark.parametrize("event", ["STARTED", "EPOCH_STARTED", "GET_BATCH_STARTED", "ITERATION_STARTED"])
def test_terminate_from_other_events(event):
    def program(E, Ev, log):
        engine = make(E, Ev, log)
        engine.add_event_handler(getattr(Ev, event), lambda e: e.terminate() if e.state.iteration >= 2 or
                                 event in ("STARTED", "EPOCH_STARTED") else None)
        engine.run(list(range(3)), max_epochs=2)

    ours, theirs = both(program)
    assert ours == theirs


@pytest.mark.parametrize("skip", [False, True])
def test_terminate_epoch(skip):
    def program(E, Ev, log):
        engine = make(E, Ev, log)
        engine.add_event_handler(Ev.ITERATION_COMPLETED(once=[2, 9]), lambda e: e.terminate_epoch(skip))
        engine.run(list(range(4)), max_epochs=3)

    ours, theirs = both(program)
    assert ours == theirs
    assert sum(1 for n, *_ in ours if n == "TERMINATE_SINGLE_EPOCH") == 2


def test_terminate_skip_completed():
    def program(E, Ev, log):
        engine = make(E, Ev, log)
        engine.add_event_handler(Ev.ITERATION_COMPLETED(once=3), lambda e: e.terminate(skip_completed=True))
        engine.run(list(range(4)), max_epochs=2)

    ours, theirs = both(program)
    assert ours == theirs
    assert "COMPLETED" not in [n for n, *_ in ours]


def test_epoch_length_shorter_than_data_continues_the_stream():
    def program(E, Ev, log):
        seen = []
        engine = make(E, Ev, log, step=lambda e, b: seen.append(b))
        engine.run(list(range(5)), max_epochs=4, epoch_length=3)
        log.append(("batches", tuple(seen), 0))

    ours, theirs = both(program)
    assert ours == theirs
    assert ours[-1] == ("batches", (0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1), 0)


def test_generator_data_with_and_without_epoch_length():
    def program(E, Ev, log):
        make(E, Ev, log).run(iter(range(7)), max_epochs=2, epoch_length=3)
        make(E, Ev, log).run((i for i in range(4)), max_epochs=1)

    ours, theirs = both(program)
    assert ours == theirs


def test_no_data_with_epoch_length():
    def program(E, Ev, log):
        make(E, Ev, log, step=lambda e, b: log.append(("batch", b, 0))).run(None, max_epochs=2, epoch_length=2)

    ours, theirs = both(program)
    assert ours == theirs
    assert ("batch", None, 0) in ours


def test_filters():
    def program(E, Ev, log):
        engine = E(lambda e, b: b)
        filters = {
            "every3": Ev.ITERATION_COMPLETED(every=3),
            "once": Ev.ITERATION_COMPLETED(once=[2, 7]),
            "once_int": Ev.EPOCH_COMPLETED(once=2),
            "between": Ev.ITERATION_STARTED(before=9, after=4),
            "custom": Ev.ITERATION_COMPLETED(event_filter=lambda e, n: n in (1, 4, 10)),
            "epoch_every": Ev.EPOCH_STARTED(every=2),
            "or": Ev.STARTED | Ev.COMPLETED | Ev.EPOCH_COMPLETED(every=3),
        }
        for name, ev in filters.items():
            engine.add_event_handler(ev, lambda e, n=name: log.append((n, e.state.epoch, e.state.iteration)))
        engine.run(list(range(4)), max_epochs=4)

    ours, theirs = both(program)
    assert ours == theirs
    assert [x for x in ours if x[0] == "once"] == [("once", 1, 2), ("once", 2, 7)]


def test_resume_after_terminate_and_after_finish():
    def program(E, Ev, log):
        engine = make(E, Ev, log)
        engine.add_event_handler(Ev.ITERATION_COMPLETED(once=6), lambda e: e.terminate())
        engine.run(list(range(4)), max_epochs=2)
        engine.run(list(range(4)), max_epochs=4)
        engine.run(list(range(4)), max_epochs=5)
        log.append(("state", engine.state.epoch, engine.state.iteration))

    ours, theirs = both(program)
    assert ours == theirs


@pytest.mark.parametrize("iteration", [0, 4, 6, 11])
def test_resume_from_state_dict(iteration):
    def program(E, Ev, log):
        engine = make(E, Ev, log)
        engine.load_state_dict({"iteration": iteration, "max_epochs": 4, "epoch_length": 4})
        engine.run(list(range(4)))
        log.append(("state", engine.state.epoch, engine.state.iteration))

    ours, theirs = both(program)
    assert ours == theirs
    assert ours[-1] == ("state", 4, 16)


def test_custom_events_fire_with_counters():
    def program(E, Ev, log):
        engine = E(lambda e, b: e.fire_event("my_event") if b % 2 else None)
        engine.register_events("my_event", event_to_attr={"my_event": "my_count"})
        engine.add_event_handler(Ev.ITERATION_STARTED, lambda e: setattr(e.state, "my_count", e.state.iteration))
        engine.add_event_handler("my_event", lambda e: log.append(("my", e.state.epoch, e.state.iteration)))
        engine.add_event_handler(Ev.ITERATION_COMPLETED(every=2), lambda e: log.append(("it", 0, e.state.iteration)))
        engine.run(list(range(5)), max_epochs=2)

    ours, theirs = both(program)
    assert ours == theirs
    assert len([x for x in ours if x[0] == "my"]) == 4


class Flaky:
    """A step that raises once, at (epoch 1, iteration 3) of 5 batches, and records the batches it processed."""

    def __init__(self):
        self.done: list[int] = []
        self.raised = False

    def __call__(self, engine, batch):
        if (engine.state.epoch, engine.state.iteration) == (1, 3) and not self.raised:
            self.raised = True
            raise RuntimeError("flaky step")
        self.done.append(batch)
        return batch


def test_rerun_after_an_exception_finishes_the_epoch_where_ignite_does_not_run():
    """A run that raised at epoch 1, iteration 3 (5 batches, max_epochs=2) is called again with `run()`.

    Ignite's second `run()` returns None without running (its generator is spent). ember's finishes the failed run:
    epoch 1 completes with the batch whose step raised run again, then epoch 2; the events and counters of both
    calls together are those of one uninterrupted run on Ignite."""
    data = list(range(5))
    ignite_log: list = []
    ignite_step = Flaky()
    ignite_engine = make(IgniteEngine, IgniteEvents, ignite_log, ignite_step)
    with pytest.raises(RuntimeError, match="flaky step"):
        ignite_engine.run(data, max_epochs=2)
    seen = len(ignite_log)
    assert ignite_engine.run(data) is None and len(ignite_log) == seen
    assert (ignite_engine.state.epoch, ignite_engine.state.iteration) == (1, 3)

    uninterrupted: list = []
    make(IgniteEngine, IgniteEvents, uninterrupted).run(data, max_epochs=2)
    ours: list = []
    step = Flaky()
    engine = make(Engine, Events, ours, step)
    with pytest.raises(RuntimeError, match="flaky step"):
        engine.run(data, max_epochs=2)
    assert (engine.state.epoch, engine.state.iteration) == (1, 3)  # what it reports after raising: Ignite's
    failed = len(ours)
    state = engine.run(data)
    assert (state.epoch, state.iteration) == (2, 10)
    assert step.done == data + data  # every batch once, the one whose step raised included
    rest = ours[failed:]
    # the rerun starts as a resume from a state_dict saved at iteration 2 would (epoch 0 done, then epoch 1),
    # and from iteration 3's batch on it is the uninterrupted run, event for event
    assert rest[:2] == [("STARTED", 0, 2), ("EPOCH_STARTED", 1, 2)]
    restart = uninterrupted.index(("GET_BATCH_STARTED", 1, 2))
    assert rest[2:] == uninterrupted[restart:]
    assert ("EPOCH_COMPLETED", 1, 5) in rest and ("COMPLETED", 2, 10) in rest


def test_rerun_after_a_handler_raised_goes_on_with_the_next_batch():
    """When a handler raised (the step had run), the rerun does not run that batch again; epoch 1 completes."""
    data = list(range(5))
    done: list[int] = []
    engine = Engine(lambda e, b: done.append(b))
    epochs: list[tuple[int, int]] = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epochs.append((e.state.epoch, e.state.iteration)))
    raised: list[int] = []

    @engine.on(Events.ITERATION_COMPLETED(once=3))
    def fail(e):
        if not raised:
            raised.append(e.state.iteration)
            raise ValueError("handler failed")

    with pytest.raises(ValueError, match="handler failed"):
        engine.run(data, max_epochs=2)
    state = engine.run(data)
    assert done == data + data and epochs == [(1, 5), (2, 10)] and state.iteration == 10


def test_a_new_state_after_an_exception_starts_from_zero():
    """Resetting `max_epochs` (Ignite's way to start over) or loading a state_dict ignores the failed run."""
    step = Flaky()
    engine = Engine(step)
    with pytest.raises(RuntimeError):
        engine.run(list(range(5)), max_epochs=2)
    engine.state.max_epochs = None
    state = engine.run(list(range(5)), max_epochs=1)
    assert (state.epoch, state.iteration) == (1, 5)

    again = Engine(Flaky())
    with pytest.raises(RuntimeError):
        again.run(list(range(5)), max_epochs=2)
    again.load_state_dict({"iteration": 5, "epoch_length": 5, "max_epochs": 2})
    state = again.run(list(range(5)))
    assert (state.epoch, state.iteration) == (2, 10)


@pytest.mark.parametrize("name", ["GET_BATCH_STARTED", "GET_BATCH_COMPLETED", "ITERATION_STARTED",
                                  "ITERATION_COMPLETED", "EPOCH_COMPLETED", "STARTED"])
def test_a_handler_added_while_its_event_fires_runs_in_that_firing(name):
    """As on Ignite: a handler that a handler of the same event adds runs in that same firing (after the others),
    and one it adds in turn too; filtered ones keep their filter."""

    def program(E, Ev, log):
        event = getattr(Ev, name)
        engine = E(lambda e, b: b)
        tag = lambda label: lambda e: log.append((label, e.state.epoch, e.state.iteration))  # noqa: E731

        def nested(e):
            log.append(("nested", e.state.epoch, e.state.iteration))
            if not any(entry[0] == "deeper" for entry in log):
                e.add_event_handler(event, tag("deeper"))

        def adder(e):
            log.append(("adder", e.state.epoch, e.state.iteration))
            if not any(entry[0] == "nested" for entry in log):
                e.add_event_handler(event, nested)
                e.add_event_handler(event(every=2), tag("every2"))

        engine.add_event_handler(event, adder)
        engine.add_event_handler(event, tag("after"))
        engine.run([0, 1, 2, 3], max_epochs=2)

    ours, theirs = both(program)
    assert ours == theirs
    labels = [entry[0] for entry in ours]
    assert labels[:3] == ["adder", "after", "nested"]  # one firing: the adder's handlers, then what it added
    assert "deeper" in labels[3:5] and "every2" in labels


def test_a_handler_placed_before_the_running_one_runs_once_in_that_firing():
    """ember places a handler with a lower `ember_order` before the running one; it runs in the same firing and the
    running handler does not run twice (a position-based walk of the list, like Ignite's, would run it again)."""
    from ember.engine.order import ordered

    calls: list[str] = []
    engine = Engine(lambda e, b: None)

    @ordered(-5)
    def early(e):
        calls.append("early")

    def adder(e):
        calls.append("adder")
        if "early" not in calls:
            e.add_event_handler(e.last_event_name, early)

    for event in (Events.EPOCH_COMPLETED, Events.ITERATION_COMPLETED):
        calls.clear()
        engine = Engine(lambda e, b: None)
        engine.add_event_handler(event, adder)
        engine.run([0], max_epochs=2)
        assert calls == ["adder", "early", "early", "adder"]


def test_an_interrupted_run_dropped_for_a_new_state_does_not_count_as_a_failed_one():
    """Ignite's own test_engine_interrupt_restart: the dropped generator gets GeneratorExit, which is no failure."""

    def program(E, Ev, log):
        engine = make(E, Ev, log)
        engine.add_event_handler(Ev.ITERATION_COMPLETED(once=6), lambda e: e.interrupt())
        engine.run(list(range(4)), max_epochs=3)
        engine.state.max_epochs = None
        state = engine.run(list(range(4)), max_epochs=2)
        log.append(("end", state.epoch, state.iteration))

    ours, theirs = both(program)
    assert ours == theirs and ours[-1] == ("end", 2, 6)
