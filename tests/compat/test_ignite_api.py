"""Ignite's Engine API that ember lacked (issue 11, item 5), each compared with Ignite's own Engine."""

from __future__ import annotations

import ignite.engine
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import ember
from ember import Events

ENGINES = {"ember": ember.Engine, "ignite": ignite.engine.Engine}


def on_both(program):
    """Run `program(engine_cls) -> trace` on ember's and Ignite's Engine; return both traces."""
    return {name: program(cls) for name, cls in ENGINES.items()}


def test_run_max_iters():
    def program(cls):
        engine = cls(lambda e, b: b)
        seen = []
        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append((e.state.epoch, e.state.batch)))
        state = engine.run([0, 1, 2], max_iters=7)
        return seen, state.iteration, state.epoch, state.max_iters, state.max_epochs, dict(engine.state_dict())

    traces = on_both(program)
    assert traces["ember"] == traces["ignite"]
    assert traces["ember"][1:3] == (7, 3)


def test_interrupt_then_resume_continues_where_it_stopped():
    def program(cls):
        engine = cls(lambda e, b: None)
        seen, interrupts = [], []
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=11), lambda e: e.interrupt())
        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append((e.state.epoch, e.state.batch)))
        engine.add_event_handler(Events.INTERRUPT, lambda e: interrupts.append(e.state.iteration))
        stops = [engine.run(range(10), max_epochs=3).iteration for _ in range(3)]
        return seen, interrupts, stops

    traces = on_both(program)
    assert traces["ember"] == traces["ignite"]
    assert traces["ember"][2] == [11, 22, 30] and len(traces["ember"][0]) == 30


def test_set_data_and_dataloader_stop_iteration():
    def program(cls):
        engine = cls(lambda e, b: b)
        seen, stops = [], []
        engine.add_event_handler(Events.ITERATION_COMPLETED(once=5), lambda e: e.set_data([10, 11, 12, 13]))
        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.output))
        engine.add_event_handler(Events.DATALOADER_STOP_ITERATION, lambda e: stops.append(e.state.iteration))
        engine.run([0, 1, 2, 3], max_epochs=3)
        return seen, stops

    traces = on_both(program)
    assert traces["ember"] == traces["ignite"]
    assert traces["ember"][0][4:6] == [0, 10] and traces["ember"][1]


def test_state_dict_user_keys_last_event_name_and_logger():
    engine = ember.Engine(lambda e, b: None)
    engine.state_dict_user_keys.append("alpha")
    engine.add_event_handler(Events.STARTED, lambda e: setattr(e.state, "alpha", 0.5))
    names = []
    engine.add_event_handler(Events.ITERATION_STARTED, lambda e: names.append(e.last_event_name))
    engine.run([1, 2])
    assert names == [Events.ITERATION_STARTED] * 2 and engine.last_event_name == Events.COMPLETED
    assert engine.state_dict()["alpha"] == 0.5
    assert engine.logger.name == "ignite.engine.engine.Engine"
    fresh = ember.Engine(lambda e, b: None)
    fresh.state_dict_user_keys.append("alpha")
    with pytest.raises(ValueError, match="alpha"):
        fresh.load_state_dict({"iteration": 2, "max_epochs": 1, "epoch_length": 2})


def test_state_dict_format_is_ignites_both_ways():
    ours = ember.Engine(lambda e, b: None)
    ours.add_event_handler(Events.ITERATION_COMPLETED(once=5), lambda e: e.terminate())
    ours.run(range(4), max_epochs=3)
    theirs = ignite.engine.Engine(lambda e, b: None)
    theirs.add_event_handler(Events.ITERATION_COMPLETED(once=5), lambda e: e.terminate())
    theirs.run(range(4), max_epochs=3)
    assert ours.state_dict() == theirs.state_dict()
    loaded = ignite.engine.Engine(lambda e, b: None)
    loaded.load_state_dict(ours.state_dict())
    back = ember.Engine(lambda e, b: None)
    back.load_state_dict(theirs.state_dict())
    assert (loaded.state.iteration, loaded.state.epoch) == (back.state.iteration, back.state.epoch) == (5, 1)


def test_a_subclass_overriding_fire_event_sees_every_event():
    def program(cls):
        fired = []

        class Recording(cls):
            def _fire_event(self, event_name, *args, **kwargs):
                fired.append(str(event_name))
                super()._fire_event(event_name, *args, **kwargs)

        Recording(lambda e, b: None).run(range(3), max_epochs=2)
        return fired

    traces = on_both(program)
    assert traces["ember"] == traces["ignite"] and traces["ember"].count("Events.GET_BATCH_STARTED") == 6


def _mnist_like_program(factories):
    """Ignite's MNIST example in miniature, written against `factories` (a module-like namespace)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = factories.create_supervised_trainer(model, optimizer, F.cross_entropy)
    from ignite.metrics import Accuracy, Loss

    evaluator = factories.create_supervised_evaluator(model, metrics={"accuracy": Accuracy(),
                                                                      "nll": Loss(F.cross_entropy)})
    data = [(torch.randn(8, 4, 4), torch.randint(0, 10, (8,))) for _ in range(5)]
    losses, results = [], []

    @trainer.on(factories.Events.ITERATION_COMPLETED(every=2))
    def log_training_loss(engine):
        losses.append(f"{engine.state.output:.4f}")

    @trainer.on(factories.Events.EPOCH_COMPLETED)
    def log_validation_results(engine):
        evaluator.run(data)
        results.append(dict(evaluator.state.metrics))

    trainer.run(data, max_epochs=2)
    return trainer, losses, results, model[1].weight.detach().clone()


def test_ignite_example_runs_with_only_its_import_line_changed():
    ours = _mnist_like_program(ember)
    theirs = _mnist_like_program(ignite.engine)
    assert isinstance(ours[0], ember.Engine) and not isinstance(theirs[0], ember.Engine)
    assert ours[1:3] == theirs[1:3] and torch.equal(ours[3], theirs[3])
    assert isinstance(ours[0].state.output, torch.Tensor) and not ours[0].state.output.requires_grad


def test_supervised_training_steps_have_ignites_signatures():
    import inspect

    for name in ("supervised_training_step", "supervised_training_step_amp", "supervised_training_step_apex",
                 "supervised_training_step_tpu", "create_supervised_trainer", "create_supervised_evaluator"):
        ours, theirs = inspect.signature(getattr(ember, name)), inspect.signature(getattr(ignite.engine, name))
        assert list(ours.parameters) == list(theirs.parameters), name
    trainer = ember.create_supervised_trainer(nn.Linear(2, 1), torch.optim.SGD(nn.Linear(2, 1).parameters()),
                                              F.mse_loss, deterministic=True)
    assert isinstance(trainer, ember.DeterministicEngine) and isinstance(trainer, ignite.engine.DeterministicEngine)
