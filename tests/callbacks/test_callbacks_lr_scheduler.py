"""LRScheduler steps schedulers per epoch/iteration, feeds ReduceLROnPlateau a metric, and records the LR."""

import sys

import pytest
import torch
from ignite.metrics import Loss
from torch import nn
from torch.optim.lr_scheduler import ExponentialLR, MultiStepLR, ReduceLROnPlateau, StepLR
from torch.utils.data import DataLoader, TensorDataset

from ember.callbacks.evaluate import EvalEvents, Evaluate
from ember.callbacks.lr_scheduler import LRScheduler
from ember.engine import Engine, Events
from ember.steps import create_evaluator, create_trainer


def optimizer(lr=1.0, groups=1):
    params = [{"params": [nn.Parameter(torch.zeros(1))]} for _ in range(groups)]
    return torch.optim.SGD(params, lr=lr)


def engine_with(opt):
    def step(engine, batch):
        opt.step()  # keeps torch from warning that the scheduler stepped before the optimizer
        return torch.tensor(0.0)

    return Engine(step)


def record_lr(engine, log):
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: log.append(round(e.state.metrics["lr"], 10)))


def test_step_lr_per_epoch_records_the_lr_each_epoch_used():
    opt = optimizer()
    engine = engine_with(opt)
    engine.add(LRScheduler(StepLR(opt, step_size=2, gamma=0.1)))
    log = []
    record_lr(engine, log)
    engine.run([0] * 3, max_epochs=5)
    assert log == [1.0, 1.0, 0.1, 0.1, 0.01]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)  # stepped 5 times: 1 -> 0.1 (2) -> 0.01 (4)


def test_multistep_and_exponential_per_iteration():
    opt = optimizer()
    engine = engine_with(opt)
    engine.add(LRScheduler(ExponentialLR(opt, gamma=0.5), per="iteration"))
    engine.run([0] * 4, max_epochs=1)
    assert opt.param_groups[0]["lr"] == pytest.approx(1 / 16)
    assert engine.state.metrics["lr"] == pytest.approx(1 / 8)  # the LR the 4th iteration used

    opt = optimizer(lr=0.1)
    engine = engine_with(opt)
    engine.add(LRScheduler(MultiStepLR(opt, milestones=[1, 3], gamma=0.1)))
    engine.run([0], max_epochs=4)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)


def test_reduce_on_plateau_with_a_metric():
    opt = optimizer(lr=0.1)
    engine = engine_with(opt)
    losses = iter([1.0, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99])
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.__setitem__("val/loss", next(losses)))
    engine.add(LRScheduler(ReduceLROnPlateau(opt, "min", patience=1, factor=0.5), monitor="val/loss"))
    log = []
    record_lr(engine, log)
    engine.run([0], max_epochs=7)
    # best 0.9 at epoch 2; epochs 3, 4 are bad -> 2 > patience: halve after epoch 4; again after epoch 6
    assert log == [0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.025]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)


def test_seed002_plateau_on_the_validation_loss_matches_a_manual_loop():
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(64, 4, generator=g), torch.randn(32, 4, generator=g)
    train = DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16)
    # validation labels are the opposite rule: its loss rises as training learns, and the LR drops
    valid = DataLoader(TensorDataset(v, (v[:, 0] <= 0).long()), batch_size=16)

    def make():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        return model, opt, ReduceLROnPlateau(opt, "min", patience=1)

    model, opt, scheduler = make()
    loss = nn.CrossEntropyLoss()
    expected = []
    for _ in range(8):
        for data, label in train:
            opt.zero_grad()
            loss(model(data), label).backward()
            opt.step()
        with torch.no_grad():
            valid_loss = sum(loss(model(d), lab).item() * d.size(0) for d, lab in valid) / len(valid.dataset)
        expected.append(opt.param_groups[0]["lr"])
        scheduler.step(valid_loss)

    model, opt, scheduler = make()
    trainer = create_trainer(model, opt, loss)
    trainer.add(Evaluate(create_evaluator(model, {"loss": Loss(loss)}), valid))
    trainer.add(LRScheduler(scheduler, monitor="val/loss", event=EvalEvents.EVALUATED))
    log = []
    trainer.add_event_handler(EvalEvents.EVALUATED, lambda e: log.append(e.state.metrics["lr"]))
    trainer.run(train, max_epochs=8)
    assert log == pytest.approx(expected)
    assert min(expected) < 0.5  # the plateau did reduce the LR


def test_missing_metric_names_the_available_ones():
    opt = optimizer()
    engine = engine_with(opt)
    engine.add(LRScheduler(ReduceLROnPlateau(opt), monitor="val/loss"))
    engine.add_event_handler(Events.STARTED, lambda e: e.state.metrics.__setitem__("val/accuracy", 0.5))
    with pytest.raises(LookupError, match=r"'val/loss'.*\['lr', 'val/accuracy'\].*attach Evaluate \(or the handler"):
        engine.run([0])


def test_constructor_errors():
    opt = optimizer()
    with pytest.raises(ValueError, match="monitor="):
        LRScheduler(ReduceLROnPlateau(opt))
    with pytest.raises(ValueError, match="only used with ReduceLROnPlateau"):
        LRScheduler(StepLR(opt, 1), monitor="val/loss")
    with pytest.raises(ValueError, match="per must be"):
        LRScheduler(StepLR(opt, 1), per="batch")
    with pytest.raises(TypeError, match="lr_scheduler"):
        LRScheduler(opt)


def test_several_groups_and_state_dict_round_trip():
    opt = optimizer(groups=2)
    engine = engine_with(opt)
    handler = LRScheduler(StepLR(opt, step_size=1, gamma=0.5))
    engine.add(handler)
    engine.run([0], max_epochs=2)
    assert engine.state.metrics["lr/group0"] == engine.state.metrics["lr/group1"] == pytest.approx(0.5)
    assert "lr" not in engine.state.metrics
    saved = handler.state_dict()

    opt2 = optimizer(groups=2)
    other = LRScheduler(StepLR(opt2, step_size=1, gamma=0.5))
    other.load_state_dict(saved)
    assert other.scheduler.last_epoch == 2
    assert other.scheduler.get_last_lr() == pytest.approx([0.25, 0.25])


def test_a_tensor_learning_rate_is_recorded_without_reading_it(monkeypatch):
    import torch

    from ember.callbacks import LRScheduler
    from ember.steps import create_trainer

    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.01))
    trainer = create_trainer(model, optimizer, torch.nn.functional.mse_loss)
    trainer.add(LRScheduler(torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.5), per="iteration"))
    reads = []
    item = torch.Tensor.item

    def counting_item(self):
        caller = sys._getframe(1).f_code.co_filename  # Adam itself reads a CPU tensor LR; count ember's reads
        reads.extend([caller] if "/ember/" in caller else [])
        return item(self)

    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    trainer.run([(torch.zeros(4, 3), torch.zeros(4, 1))] * 3)
    monkeypatch.undo()
    assert reads == []
    assert isinstance(trainer.state.metrics["lr"], torch.Tensor)
    assert trainer.state.metrics["lr"].item() == pytest.approx(0.01 * 0.5**2)
