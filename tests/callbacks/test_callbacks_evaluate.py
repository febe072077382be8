"""Evaluate runs the evaluator, copies its metrics into the trainer, prints seed 000's lines, fires its event."""

import io
import re

import pytest
import torch
from ignite.metrics import Accuracy, Loss
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ember.callbacks.evaluate import EvalEvents, Evaluate
from ember.engine import Engine, Events
from ember.recipes.formats import SEED000_EVAL_FMT
from ember.steps import create_evaluator, create_trainer


def setup(n_train=96, n_val=64):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
    loss_fn = nn.CrossEntropyLoss()
    trainer = create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn)
    evaluator = create_evaluator(model, {"accuracy": Accuracy(), "loss": Loss(loss_fn)})
    g = torch.Generator().manual_seed(1)

    def data(n):
        return DataLoader(TensorDataset(torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)), 16)

    train, val = data(n_train), data(n_val)
    return model, loss_fn, trainer, evaluator, train, val


def seed_test_loop(dataloader, model, loss_fn):
    """Seed 000's test_loop, returning what it prints."""
    size = len(dataloader.dataset)
    num_batches = len(dataloader)
    test_loss, correct = 0, 0
    with torch.no_grad():
        for X, y in dataloader:
            pred = model(X)
            test_loss += loss_fn(pred, y).item()
            correct += (pred.argmax(1) == y).type(torch.float).sum().item()
    test_loss /= num_batches
    correct /= size
    return correct, test_loss


def test_metrics_copied_with_prefix_and_seed000_line_printed():
    model, loss_fn, trainer, evaluator, train, val = setup()
    out = io.StringIO()
    expected = []
    trainer.add(Evaluate(evaluator, val, fmt=SEED000_EVAL_FMT, file=out))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: expected.append(seed_test_loop(val, model, loss_fn)))
    trainer.run(train, max_epochs=3)

    correct, test_loss = expected[-1]
    assert trainer.state.metrics["val/accuracy"] == pytest.approx(correct)
    assert trainer.state.metrics["val/loss"] == pytest.approx(test_loss, rel=1e-5)
    blocks = out.getvalue().split("Test Error: \n")
    assert blocks[0] == "" and len(blocks) == 4
    for block, (correct, test_loss) in zip(blocks[1:], expected):
        m = re.fullmatch(r" Accuracy: (\d+\.\d)%, Avg loss: (\d\.\d{6}) \n\n", block)
        assert m, block
        assert m[1] == f"{100 * correct:>0.1f}"
        assert float(m[2]) == pytest.approx(test_loss, abs=2e-6)


def test_event_fires_after_metrics_are_stored():
    _, _, trainer, evaluator, train, val = setup()
    seen = []
    trainer.add(Evaluate(evaluator, val, every_epochs=2))
    trainer.add_event_handler(
        EvalEvents.EVALUATED, lambda e: seen.append((e.state.epoch, round(e.state.metrics["val/accuracy"], 6)))
    )
    trainer.run(train, max_epochs=5)
    assert [epoch for epoch, _ in seen] == [2, 4]
    assert seen[-1][1] == round(evaluator.state.metrics["accuracy"], 6)


def test_every_iterations_custom_event_name_and_prefix():
    _, _, trainer, evaluator, train, val = setup()
    seen = []
    ev = Evaluate(evaluator, val, every_iterations=4, prefix="test_", event_name="tested")
    trainer.add(ev)
    trainer.add_event_handler("tested", lambda e: seen.append(e.state.iteration))
    trainer.run(train, max_epochs=2)  # 6 iterations per epoch
    assert seen == [4, 8, 12]
    assert set(trainer.state.metrics) >= {"test_accuracy", "test_loss"}
    assert ev.metrics["accuracy"] == trainer.state.metrics["test_accuracy"]


def test_fields_include_pct_epoch_and_tensor_metrics():
    class Mean:
        def reset(self):
            self.total = torch.zeros(())

        def update(self, output):
            self.total += output[0].sum()

        def compute(self):
            return self.total

    evaluator = Engine(lambda e, b: (b, b))
    evaluator_metrics = {"mean": Mean()}
    for name, metric in evaluator_metrics.items():
        evaluator.add_event_handler(Events.STARTED, lambda e, m=metric: m.reset())
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e, m=metric: m.update(e.state.output))
        evaluator.add_event_handler(
            Events.COMPLETED, lambda e, m=metric, n=name: e.state.metrics.__setitem__(n, m.compute())
        )
    out = io.StringIO()
    trainer = Engine(lambda e, b: None)
    trainer.add(Evaluate(evaluator, [torch.tensor([0.25, 0.5])], fmt="{epoch}/{max_epochs} {mean_pct:.0f}", file=out))
    trainer.run([0, 1], max_epochs=2)
    assert out.getvalue() == "1/2 75\n2/2 75\n"
    assert isinstance(trainer.state.metrics["val/mean"], torch.Tensor)


def test_bad_arguments():
    _, _, _, evaluator, _, val = setup()
    with pytest.raises(ValueError, match="not both"):
        Evaluate(evaluator, val, every_epochs=1, every_iterations=5)
    with pytest.raises(ValueError, match="positive"):
        Evaluate(evaluator, val, every_epochs=0)
