"""Engine API behaviour: handlers, removal, exceptions, state, resume, and the trainer/evaluator steps."""

import copy

import pytest
import torch
from ignite.engine import Engine as IgniteEngine
from ignite.metrics import Accuracy, ConfusionMatrix, Loss, TopKCategoricalAccuracy
from torch import nn

from ember.engine import Engine, Events, State, exception_observer
from ember.steps import create_evaluator, create_trainer


def test_handler_receives_engine_unless_it_takes_no_argument():
    engine = Engine(lambda e, b: b)
    seen = []
    engine.add_event_handler(Events.STARTED, lambda e, tag: seen.append((type(e).__name__, tag)), "a")
    engine.add_event_handler(Events.STARTED, lambda: seen.append("no-arg"))
    engine.add_event_handler(Events.COMPLETED, lambda e, x=0, y=0: seen.append(x + y), y=5)
    engine.run([1])
    assert seen == [("Engine", "a"), "no-arg", 5]


def test_bad_handler_signature_is_rejected_at_registration():
    engine = Engine(lambda e, b: b)
    with pytest.raises(ValueError, match="takes parameters .* but will be called with"):
        engine.add_event_handler(Events.STARTED, lambda a, b, c: None)


def test_unknown_event_names_the_fix():
    engine = Engine(lambda e, b: b)
    with pytest.raises(ValueError, match="register_events"):
        engine.add_event_handler("custom", lambda: None)


def test_handle_remove_and_remove_event_handler():
    engine = Engine(lambda e, b: b)
    calls = []

    def h(e):
        calls.append(e.state.iteration)

    handle = engine.add_event_handler(Events.ITERATION_COMPLETED, h)
    assert engine.has_event_handler(h) and engine.has_event_handler(h, Events.ITERATION_COMPLETED)
    engine.run([1, 2])
    handle.remove()
    handle.remove()
    assert not engine.has_event_handler(h)
    engine.run([1, 2])
    assert calls == [1, 2]
    engine.add_event_handler(Events.ITERATION_COMPLETED(every=2), h)
    engine.remove_event_handler(h, Events.ITERATION_COMPLETED)
    with pytest.raises(ValueError):
        engine.remove_event_handler(h, Events.ITERATION_COMPLETED)
    multi = engine.add_event_handler(Events.STARTED | Events.COMPLETED, h)
    multi.remove()
    assert not engine.has_event_handler(h)


def test_handler_removing_itself_while_firing_does_not_skip_others():
    engine = Engine(lambda e, b: b)
    calls = []
    handles = []
    handles.append(engine.add_event_handler(Events.ITERATION_COMPLETED, lambda: handles[0].remove()))
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: calls.append(e.state.iteration))
    engine.run([1, 2, 3])
    assert calls == [1, 2, 3]


def test_filter_arguments_are_validated():
    with pytest.raises(ValueError):
        Events.ITERATION_COMPLETED(every=0)
    with pytest.raises(ValueError):
        Events.ITERATION_COMPLETED(every=2, once=3)
    with pytest.raises(ValueError):
        Events.ITERATION_COMPLETED()
    with pytest.raises(TypeError):
        Events.ITERATION_COMPLETED(event_filter=3)


def test_exception_fires_exception_raised_and_a_handler_that_reraises_propagates_it_unchanged():
    boom = RuntimeError("boom")

    def step(e, b):
        if e.state.iteration == 3:
            raise boom
        return b

    engine = Engine(step)
    seen = []

    def reraise(e, exc):
        seen.append((e.state.iteration, exc))
        raise exc

    engine.add_event_handler(Events.EXCEPTION_RAISED, reraise)
    with pytest.raises(RuntimeError) as info:
        engine.run([1, 2, 3, 4])
    assert info.value is boom
    assert seen[0] == (3, boom)
    assert any("iteration 3" in note for note in boom.__notes__)


def test_a_handler_that_returns_has_handled_the_exception_as_in_ignite():
    def step(e, b):
        if e.state.iteration == 2:
            raise KeyboardInterrupt
        return b

    engine = Engine(step)
    seen = []
    engine.add_event_handler(Events.EXCEPTION_RAISED, lambda e, exc: (seen.append(type(exc)), e.terminate()))
    state = engine.run([1, 2, 3, 4], max_epochs=2)
    assert seen == [KeyboardInterrupt] and state.iteration == 2


@pytest.mark.parametrize("engine_cls", [Engine, IgniteEngine], ids=["ember", "ignite"])
def test_exception_observers_never_swallow_and_never_handle(engine_cls):
    calls = []

    class Observer:
        @exception_observer
        def on_exc(self, engine, exc):
            calls.append(exc)

    def step(e, b):
        raise ValueError("step")

    for user_handler in (False, True):
        engine = engine_cls(step)
        engine.add_event_handler(Events.EXCEPTION_RAISED, Observer().on_exc)
        engine.add_event_handler(Events.EXCEPTION_RAISED, Observer().on_exc)
        if user_handler:
            engine.add_event_handler(Events.EXCEPTION_RAISED, lambda e, exc: e.terminate())
            engine.run([1, 2])
            assert engine.should_terminate
        else:
            with pytest.raises(ValueError, match="step"):
                engine.run([1, 2])
    assert len(calls) == 4, "each observer runs once per exception"


def test_exception_without_handler_propagates():
    engine = Engine(lambda e, b: b)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        engine.run([1])


def test_state_has_documented_fields_and_user_attributes():
    engine = Engine(lambda e, b: b * 10)
    engine.state.alpha = 0.5
    state = engine.run([1, 2, 3], max_epochs=2)
    assert isinstance(state, State)
    assert (state.epoch, state.iteration, state.max_epochs, state.epoch_length) == (2, 6, 2, 3)
    assert state.output == 30 and state.batch == 3 and state.dataloader == [1, 2, 3]
    assert state.times["COMPLETED"] >= state.times["EPOCH_COMPLETED"] > 0
    assert state.alpha == 0.5 and state.metrics == {}


def test_state_dict_round_trip_and_resume_mid_epoch_sees_remaining_batches():
    seen = []
    engine = Engine(lambda e, b: seen.append(b))
    engine.state.seed = 7
    engine.add_event_handler(Events.ITERATION_COMPLETED(once=6), lambda e: e.terminate())
    engine.run(list(range(4)), max_epochs=3)
    sd = copy.deepcopy(engine.state_dict())
    assert sd == {"iteration": 6, "max_epochs": 3, "epoch_length": 4, "seed": 7}

    resumed_seen = []
    resumed = Engine(lambda e, b: resumed_seen.append(b))
    resumed.load_state_dict(sd)
    resumed.run(list(range(4)))
    assert resumed.state.iteration == 12 and resumed.state.seed == 7
    assert resumed_seen == [2, 3, 0, 1, 2, 3]


def test_run_again_with_larger_max_epochs_continues():
    engine = Engine(lambda e, b: b)
    engine.run([1, 2], max_epochs=2)
    engine.run([1, 2], max_epochs=3)
    assert (engine.state.epoch, engine.state.iteration) == (3, 6)
    engine.run([1, 2], max_epochs=3)
    assert (engine.state.epoch, engine.state.iteration) == (3, 6)
    with pytest.raises(ValueError, match="max_epochs should be greater than or equal to the start epoch"):
        engine.run([1, 2], max_epochs=1)


def test_empty_data_and_bad_data_are_clear_errors():
    engine = Engine(lambda e, b: b)
    with pytest.raises(ValueError, match="empty"):
        engine.run([])
    with pytest.raises(TypeError, match="iterable"):
        engine.run(5)


def test_set_epoch_is_called_on_samplers_each_pass():
    class Data(list):
        epochs: list = []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

    data = Data([1, 2])
    Engine(lambda e, b: b).run(data, max_epochs=3)
    assert data.epochs == [0, 1, 2]


# ----------------------------------------------------------------------------- steps
def linear_problem(n=32, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.randn(d, 1, generator=g) + 0.1
    return x, y


def test_trainer_output_is_detached_loss_tensor_and_training_reduces_loss():
    x, y = linear_problem()
    model = nn.Linear(5, 1)
    trainer = create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.mse_loss)
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output))
    trainer.run([(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)], max_epochs=20)
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad and v.ndim == 0 for v in losses)
    assert losses[-1].item() < 0.1 * losses[0].item()
    assert trainer.model is model and trainer.scaler is None


def test_gradient_accumulation_equals_one_big_batch():
    x, y = linear_problem()
    torch.manual_seed(0)
    a = nn.Linear(5, 1)
    b = copy.deepcopy(a)
    big = create_trainer(a, torch.optim.SGD(a.parameters(), lr=0.1), nn.functional.mse_loss)
    big.run([(x, y)], max_epochs=3)
    small = create_trainer(b, torch.optim.SGD(b.parameters(), lr=0.1), nn.functional.mse_loss, accumulate=4)
    small.run([(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)], max_epochs=3)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert not torch.equal(a.weight, nn.Linear(5, 1).weight)


def test_clip_grad_norm_limits_the_update():
    x, y = linear_problem()
    model = nn.Linear(5, 1)
    before = model.weight.detach().clone()
    trainer = create_trainer(model, torch.optim.SGD(model.parameters(), lr=1.0), nn.functional.mse_loss,
                             clip_grad_norm=0.01)
    trainer.run([(x * 100, y * 100)])
    total = torch.sqrt((model.weight - before).pow(2).sum() + 0)
    assert total.item() <= 0.01 + 1e-6


def test_bf16_autocast_on_cpu():
    x, y = linear_problem()
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 1))
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    trainer = create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), nn.functional.mse_loss,
                             amp="bf16")
    trainer.run([(x, y)])
    assert seen == [torch.bfloat16]
    assert model[0].weight.dtype == torch.float32
    with pytest.raises(ValueError, match="amp"):
        create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), nn.functional.mse_loss, amp="fp8")


def test_fp16_uses_a_grad_scaler():
    model = nn.Linear(5, 1)
    trainer = create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), nn.functional.mse_loss,
                             amp="fp16")
    assert isinstance(trainer.scaler, torch.amp.GradScaler)
    assert "scale" in trainer.scaler.state_dict() or trainer.scaler.state_dict() == {}


def test_wrong_batch_structure_names_iteration_and_what_was_received():
    model = nn.Linear(5, 1)
    trainer = create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), nn.functional.mse_loss)
    with pytest.raises(TypeError, match=r"expected a batch \(inputs, targets\), got Tensor\(shape=\(4, 5\)") as info:
        trainer.run([torch.zeros(4, 5)])
    assert any("iteration 1" in n for n in info.value.__notes__)
    with pytest.raises(RuntimeError) as info:
        trainer.run([(torch.zeros(4, 7), torch.zeros(4, 1))])
    assert any("iteration 1" in n and "shape=(4, 7)" in n for n in info.value.__notes__)


def test_evaluator_with_ignite_metrics_matches_hand_computation():
    torch.manual_seed(0)
    model = nn.Linear(6, 4)
    x = torch.randn(50, 6)
    y = torch.randint(0, 4, (50,))
    model.train()
    evaluator = create_evaluator(
        model,
        {
            "accuracy": Accuracy(),
            "loss": Loss(nn.functional.cross_entropy),
            "top2": TopKCategoricalAccuracy(k=2),
            "cm": ConfusionMatrix(num_classes=4),
        },
    )
    state = evaluator.run([(x[i : i + 16], y[i : i + 16]) for i in range(0, 50, 16)])
    with torch.no_grad():
        logits = model(x)
    assert state.metrics["accuracy"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert state.metrics["loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    top2 = (logits.topk(2, dim=1).indices == y[:, None]).any(1).float().mean().item()
    assert state.metrics["top2"] == pytest.approx(top2)
    assert state.metrics["cm"].sum().item() == 50
    assert model.training, "evaluator must restore the model's previous mode"
    assert not any(p.grad is not None for p in model.parameters())


def test_evaluator_accepts_plain_metric_objects_and_rejects_others():
    class Count:
        def reset(self):
            self.n = 0

        def update(self, output):
            self.n += len(output[1])

        def compute(self):
            return torch.tensor(self.n)

    model = nn.Linear(3, 2).eval()
    state = create_evaluator(model, {"n": Count()}).run([(torch.zeros(4, 3), torch.zeros(4))] * 3)
    assert state.metrics == {"n": 12}
    assert not model.training
    with pytest.raises(TypeError, match="reset"):
        create_evaluator(model, {"bad": object()})


def test_bound_methods_are_found_and_removed():
    class Counter:
        n = 0

        def tick(self, engine):
            self.n += 1

    engine = Engine(lambda e, b: b)
    c = Counter()
    engine.add_event_handler(Events.ITERATION_COMPLETED, c.tick)
    assert engine.has_event_handler(c.tick, Events.ITERATION_COMPLETED)
    engine.remove_event_handler(c.tick, Events.ITERATION_COMPLETED)
    engine.run([1, 2])
    assert c.n == 0
