"""LossPrinter prints seed 000's and seed 001's loss lines, at the right steps, with the right numbers."""

import io
import re

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ember.callbacks._output import batch_size_of
from ember.callbacks.loss_printer import LossPrinter
from ember.engine import Engine
from ember.recipes.formats import SEED000_FMT, SEED001_FMT
from ember.steps import create_trainer


def counting_engine() -> Engine:
    """An engine whose output is the iteration number as a float tensor: printed values are predictable."""
    return Engine(lambda e, b: torch.tensor(float(e.state.iteration)))


def loader(n: int = 250, batch_size: int = 10, shuffle: bool = False) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g))
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle)


def test_seed000_lines_at_batches_0_10_20():
    out = io.StringIO()
    engine = counting_engine()
    engine.add(LossPrinter(every=10, file=out))
    engine.run(loader(), max_epochs=2)
    assert out.getvalue().splitlines() == [
        "loss: 1.000000  [    0/  250]",
        "loss: 11.000000  [  100/  250]",
        "loss: 21.000000  [  200/  250]",
        "loss: 26.000000  [    0/  250]",
        "loss: 36.000000  [  100/  250]",
        "loss: 46.000000  [  200/  250]",
    ]


def test_seed000_matches_the_tutorial_loop():
    """The same model, data and optimizer trained by the seed's own loop print the same lines."""
    data = loader(n=200, batch_size=8)

    def make():
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
        return model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss()

    model, optimizer, loss_fn = make()
    expected = []
    size = len(data.dataset)
    for _ in range(2):
        for batch, (X, y) in enumerate(data):
            loss = loss_fn(model(X), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if batch % 10 == 0:
                loss, current = loss.item(), batch * len(X)
                expected.append(f"loss: {loss:>7f}  [{current:>5d}/{size:>5d}]")

    out = io.StringIO()
    trainer = create_trainer(*make())
    trainer.add(LossPrinter(every=10, fmt=SEED000_FMT, file=out))
    trainer.run(data, max_epochs=2)
    assert out.getvalue().splitlines() == expected


def test_window_mean_restarts_each_epoch():
    out = io.StringIO()
    engine = counting_engine()
    engine.add(LossPrinter(every=10, fmt=SEED001_FMT, window=True, file=out))
    engine.run(loader(), max_epochs=2)
    # epoch 1: mean(1..10), mean(11..20); steps 21..25 are never printed; epoch 2 starts afresh at 26
    assert out.getvalue().splitlines() == [
        "Epoch [1/2], Step [10/25], Loss: 5.5000",
        "Epoch [1/2], Step [20/25], Loss: 15.5000",
        "Epoch [2/2], Step [10/25], Loss: 30.5000",
        "Epoch [2/2], Step [20/25], Loss: 40.5000",
    ]


def test_seed001_window_matches_the_tutorial_loop():
    data = loader(n=320, batch_size=8, shuffle=False)

    def make():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
        return model, torch.optim.Adam(model.parameters(), lr=1e-3), nn.CrossEntropyLoss()

    model, optimizer, criterion = make()
    expected = []
    for epoch in range(2):
        running_loss = 0.0
        for i, (inputs, labels) in enumerate(data):
            optimizer.zero_grad()
            loss = criterion(model(inputs), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            if i % 10 == 9:
                expected.append((epoch + 1, i + 1, running_loss / 10))
                running_loss = 0.0

    out = io.StringIO()
    trainer = create_trainer(*make())
    trainer.add(LossPrinter(every=10, fmt=SEED001_FMT, window=True, file=out))
    trainer.run(data, max_epochs=2)
    lines = out.getvalue().splitlines()
    assert len(lines) == len(expected) == 8
    pattern = re.compile(r"^Epoch \[(\d)/2\], Step \[(\d+)/40\], Loss: (\d\.\d{4})$")
    for line, (epoch, step, mean) in zip(lines, expected):
        m = pattern.match(line)
        assert m, line
        assert (int(m[1]), int(m[2])) == (epoch, step)
        assert float(m[3]) == pytest.approx(mean, abs=1.5e-4)


def test_size_from_argument_or_size_attribute_else_clear_error():
    class Batches(list):
        size = 40

    out = io.StringIO()
    engine = counting_engine()
    engine.add(LossPrinter(every=2, file=out))
    engine.run(Batches([torch.zeros(10, 1)] * 4))
    assert out.getvalue().splitlines() == ["loss: 1.000000  [    0/   40]", "loss: 3.000000  [   20/   40]"]

    out = io.StringIO()
    engine = counting_engine()
    engine.add(LossPrinter(every=4, size=1234, file=out))
    engine.run([torch.zeros(10, 1)] * 4)
    assert out.getvalue() == "loss: 1.000000  [    0/ 1234]\n"

    engine = counting_engine()
    engine.add(LossPrinter(every=4, file=io.StringIO()))
    with pytest.raises(ValueError, match=r"size=number_of_samples"):
        engine.run([torch.zeros(10, 1)] * 4)


def test_other_fields_and_dict_output():
    out = io.StringIO()
    engine = Engine(lambda e, b: {"loss": torch.tensor(0.25), "other": 1})
    engine.add(LossPrinter(every=3, fmt="{epoch}/{max_epochs} {step}/{steps} it={iteration} {loss:.2f}", file=out))
    engine.run([torch.zeros(2)] * 3, max_epochs=2)
    assert out.getvalue().splitlines() == ["1/2 1/3 it=1 0.25", "2/2 1/3 it=4 0.25"]


def test_bad_arguments_and_outputs():
    with pytest.raises(ValueError, match="every"):
        LossPrinter(every=0)
    engine = Engine(lambda e, b: "not a loss")
    engine.add(LossPrinter(every=1, size=1, file=io.StringIO()))
    with pytest.raises(TypeError, match="output_transform"):
        engine.run([torch.zeros(1)])


def test_batch_size_of():
    assert batch_size_of((torch.zeros(7, 2), torch.zeros(7))) == 7
    assert batch_size_of({"x": torch.zeros(5, 1)}) == 5
    assert batch_size_of([1, [torch.zeros(3)]]) == 3
    assert batch_size_of(torch.tensor(1.0)) is None
    assert batch_size_of("text") is None
