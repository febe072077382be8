"""TensorBoardLogger: event files read back (layout, pictures, hparams, resume state), histograms, errors.

tests/callbacks/test_tensorboard_served.py reads recipe runs back through a real tensorboard server."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from harness import tiny_regression
from ignite.metrics import Accuracy
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ember.callbacks import Evaluate
from ember.callbacks.correct_counter import CorrectCounter
from ember.callbacks.eval_pictures import (
    CARD_WIDTH,
    EvalPictures,
    confusion_matrix_image,
    misclassified_grid,
)
from ember.callbacks.tensorboard_logger import TensorBoardLogger, run_name
from ember.engine import Engine, Events, order
from ember.steps import create_evaluator, create_trainer


def make_trainer(seed: int = 0) -> tuple[Engine, torch.nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A real trainer on a tiny regression problem, with 8 batches per epoch."""
    model, _, trainer = tiny_regression(3, 1, lr=0.05, loss_fn=torch.nn.MSELoss(), seed=seed)
    data = [(torch.randn(4, 3), torch.randn(4, 1)) for _ in range(8)]
    return trainer, model, data


def record_losses(engine: Engine) -> dict[int, float]:
    """Iteration -> the loss the step returned (the test reads every step; the logger must not)."""
    losses: dict[int, float] = {}
    engine.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: losses.__setitem__(e.state.iteration, float(e.state.output))
    )
    return losses


def set_metrics(engine: Engine) -> None:
    """Fill metrics at EPOCH_COMPLETED like Evaluate would (numbers, a tensor, a list that is not a number)."""
    epoch = engine.state.epoch
    engine.state.metrics.update(
        {"val/accuracy": 0.25 * epoch, "val/loss": torch.tensor(2.0 / epoch), "val/confusion": [[1, 0], [0, 1]],
         "train/extra": 1.0 + epoch, "lr": 0.5}
    )


def accumulate(logdir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def steps_values(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def hparams_plugin_tags(acc: EventAccumulator) -> set[str]:
    try:
        return set(acc.PluginTagToContent("hparams"))
    except KeyError:
        return set()


def test_layout_one_run_per_training_run_epoch_and_iteration_groups_and_hparams(tmp_path: Path) -> None:
    trainer, _, data = make_trainer()
    losses = record_losses(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, set_metrics)
    logger = trainer.add(TensorBoardLogger(tmp_path, log_every=3, hparams={"lr": 0.05, "opt": "sgd", "b": (1, 2)},
                                           run_name="lr=0.05 · 12-07 02:52:48 · tiny"))
    trainer.run(data, max_epochs=2)

    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [], "one TensorBoard run: no sub-folders"
    run = accumulate(tmp_path)
    loss = steps_values(run, "iteration/loss")
    assert [s for s, _ in loss] == [3, 6, 9, 12, 15]
    assert [v for _, v in loss] == pytest.approx([losses[s] for s in (3, 6, 9, 12, 15)], rel=1e-6)
    assert steps_values(run, "iteration/lr") == [(s, pytest.approx(0.05)) for s in (3, 6, 9, 12, 15)]
    assert all(v > 0 for _, v in steps_values(run, "iteration/grad_norm"))
    means = [sum(losses[i] for i in range(1 + 8 * e, 9 + 8 * e)) / 8 for e in range(2)]
    # every chart's x is the iteration: an epoch's point sits at its last iteration (8, 16)
    assert [v for _, v in steps_values(run, "epoch/loss/train")] == pytest.approx(means, rel=1e-6)
    assert [s for s, _ in steps_values(run, "epoch/loss/train")] == [8, 16]
    assert [s for s, _ in steps_values(run, "epoch/time_s")] == [8, 16]
    assert [s for s, _ in steps_values(run, "epoch/samples_per_s")] == [8, 16]
    assert steps_values(run, "epoch/extra/train") == [(8, 2.0), (16, 3.0)]
    assert steps_values(run, "epoch/accuracy/val") == [(8, 0.25), (16, 0.5)]
    assert steps_values(run, "epoch/loss/val") == [(8, 2.0), (16, 1.0)]
    assert steps_values(run, "val_best/loss") == [(8, 2.0), (16, 1.0)]
    assert steps_values(run, "val_best/accuracy")[-1] == (16, 0.5)
    tags = run.Tags()["scalars"]
    assert not any("confusion" in tag or tag.startswith("hparam") for tag in tags)
    # TensorBoard's Time Series opens the first two groups in name order: the epoch and iteration charts
    assert sorted({tag.split("/")[0] for tag in tags})[:2] == ["epoch", "iteration"]
    assert {"_hparams_/session_start_info", "_hparams_/session_end_info"} <= hparams_plugin_tags(run)
    assert session_start(run).group_name == "lr=0.05 · 12-07 02:52:48 · tiny"
    assert logger.writer is not None and logger.writer.file_writer is None  # closed at COMPLETED


def session_start(acc: EventAccumulator):  # noqa: ANN201 - a protobuf message
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    return plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info


def test_run_name_puts_the_changed_flags_and_the_time_first() -> None:
    defaults = {"lr": 1e-3, "epochs": 10, "amp": None, "channels_last": False, "fp32": False, "device": "auto"}
    flags = {**defaults, "lr": 0.05, "channels_last": True, "device": "auto", "logdir": "x"}
    assert run_name("20261207-025248", "fashion-mnist-mlp", flags, defaults) == \
        "lr=0.05 channels-last · 12-07 02:52:48 · fashion-mnist-mlp"
    assert run_name("20261207-025248-2", "fashion-mnist-mlp", defaults, defaults) == \
        "12-07 02:52:48-2 · fashion-mnist-mlp", "the suffix of a second run in the same second is kept"
    assert run_name("mine", "r", {"fp32": True, "images": False}, {"fp32": False, "images": True}) == \
        "fp32 no-images · mine · r"


def test_training_accuracy_from_a_correct_counter_and_pictures_from_the_evaluation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    counter = CorrectCounter(torch.nn.CrossEntropyLoss())
    trainer = create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), counter)
    data = [(torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,))) for _ in range(5)]
    hits: list[int] = []

    @trainer.on(Events.ITERATION_STARTED)
    def count_hits(engine: Engine) -> None:  # the weights the step will use, before it changes them
        x, y = engine.state.batch
        with torch.no_grad():
            hits.append(int((model(x).argmax(1) == y).sum()))

    evaluator = create_evaluator(model, {"accuracy": Accuracy()})
    evaluator.add(EvalPictures(keep=4))
    trainer.add(Evaluate(evaluator, data[:2]))
    trainer.add(TensorBoardLogger(tmp_path, log_every=0, class_names=["ant", "bee", "cat"], correct=counter))
    trainer.run(data, max_epochs=2)

    run = accumulate(tmp_path)
    assert [v for _, v in steps_values(run, "epoch/accuracy/train")] == pytest.approx([sum(hits[:5]) / 40,
                                                                                  sum(hits[5:]) / 40])
    x, y = torch.cat([b[0] for b in data[:2]]), torch.cat([b[1] for b in data[:2]])
    with torch.no_grad():
        predicted = model(x).argmax(1)
    expected = torch.zeros(3, 3, dtype=torch.long)
    for t, p in zip(y.tolist(), predicted.tolist()):
        expected[t, p] += 1
    assert torch.equal(evaluator.state.metrics["confusion_matrix"], expected)
    wrong = evaluator.state.metrics["misclassified"]
    first = (predicted != y).nonzero().flatten()[:4]
    assert len(first) > 0
    assert torch.equal(wrong["true"], y[first]) and torch.equal(wrong["predicted"], predicted[first])
    assert torch.allclose(wrong["images"], x[first])
    assert {"pictures/confusion_matrix", "pictures/misclassified"} <= set(run.Tags()["images"])
    assert [i.step for i in run.Images("pictures/confusion_matrix")] == [5, 10]


def test_resumed_logger_continues_the_epoch_and_purges_later_steps(tmp_path: Path) -> None:
    trainer, model, data = make_trainer(seed=2)
    first = trainer.add(TensorBoardLogger(tmp_path, log_every=1))
    saved: dict = {}

    def checkpoint(engine: Engine) -> None:
        saved.update(logger=first.state_dict(), trainer=engine.state_dict(),
                     model={k: v.clone() for k, v in model.state_dict().items()},
                     optimizer=engine.optimizer.state_dict())

    checkpoint.ember_order = order.CHECKPOINT  # as a Checkpoint does: after the logger has counted iteration 11
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=11), checkpoint)

    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=13), lambda e: e.terminate())
    trainer.run(data, max_epochs=3)  # logged iterations 12 and 13 after the "checkpoint" at 11
    assert saved["logger"]["epoch"]["steps"] == 3 and saved["logger"]["epoch"]["epoch"] == 2

    resumed, model2, _ = make_trainer(seed=2)
    model2.load_state_dict(saved["model"])
    resumed.optimizer.load_state_dict(saved["optimizer"])
    resumed.load_state_dict(saved["trainer"])
    logger = resumed.add(TensorBoardLogger(tmp_path, log_every=1))
    logger.load_state_dict(saved["logger"])
    resumed.run(data, max_epochs=3)

    run = accumulate(tmp_path)
    assert [s for s, _ in steps_values(run, "iteration/loss")] == list(range(1, 25)), "no step twice"
    assert [s for s, _ in steps_values(run, "epoch/loss/train")] == [8, 16, 24]
    assert steps_values(run, "epoch/time_s")[1][1] > saved["logger"]["epoch"]["elapsed_s"]
    reference, model3, _ = make_trainer(seed=2)  # the same three epochs without an interruption
    losses = record_losses(reference)
    reference.run(data, max_epochs=3)
    assert steps_values(run, "epoch/loss/train")[1][1] == pytest.approx(sum(losses[i] for i in range(9, 17)) / 8,
                                                                    rel=1e-5)


def test_exception_in_a_handler_propagates_and_closes_the_writer(tmp_path: Path) -> None:
    engine = Engine(lambda e, b: torch.tensor(0.5 * e.state.iteration))
    logger = engine.add(TensorBoardLogger(tmp_path, log_every=1))

    @engine.on(Events.ITERATION_COMPLETED(once=3))
    def fail(_: Engine) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        engine.run(range(10), max_epochs=1)
    assert logger.writer.file_writer is None
    # the logger reads after the handlers without an order: iteration 3's point was not written when it raised
    assert steps_values(accumulate(tmp_path), "iteration/loss") == [(1, 0.5), (2, 1.0)]


def test_histograms_of_weights_and_gradients(tmp_path: Path) -> None:
    trainer, model, data = make_trainer()
    trainer.add(TensorBoardLogger(tmp_path, log_every=0, histograms_every=1, model=model))
    trainer.run(data, max_epochs=2)
    acc = accumulate(tmp_path)
    wanted = {"weights/weight", "weights/bias", "weights/weight/grad", "weights/bias/grad"}
    assert wanted <= set(acc.Tags()["histograms"])
    assert "iteration/loss" not in acc.Tags()["scalars"]
    weight = acc.Histograms("weights/weight")
    assert [h.step for h in weight] == [8, 16]
    assert weight[-1].histogram_value.num == model.weight.numel()
    assert weight[-1].histogram_value.max == pytest.approx(model.weight.max().item(), rel=1e-6)


def test_bad_arguments_and_outputs_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model="):
        TensorBoardLogger(tmp_path, histograms_every=1)
    with pytest.raises(ValueError, match="log_every"):
        TensorBoardLogger(tmp_path, log_every=-1)
    engine = Engine(lambda e, b: (torch.zeros(2), torch.zeros(2)))
    engine.add(TensorBoardLogger(tmp_path, log_every=1))
    with pytest.raises(TypeError, match="output_transform"):
        engine.run(range(2))
    engine = Engine(lambda e, b: {"loss": torch.tensor(3.0)})
    engine.add(TensorBoardLogger(tmp_path / "t", log_every=1, output_transform=lambda out: out["loss"]))
    engine.run(range(2))
    assert steps_values(accumulate(tmp_path / "t"), "iteration/loss") == [(1, 3.0), (2, 3.0)]


def test_only_rank_zero_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 1)
    engine = Engine(lambda e, b: torch.tensor(1.0))
    logger = engine.add(TensorBoardLogger(tmp_path / "rank1", log_every=1))
    engine.run(range(3))
    assert logger.writer is None
    assert not (tmp_path / "rank1").exists()


def test_pictures_fit_a_time_series_card_at_their_own_size() -> None:
    """A card of TensorBoard's Time Series page is at least 335 px wide: a wider picture is shrunk, and its
    numbers become unreadable. FashionMNIST's ten classes, with the longest name, and four-digit counts."""
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
    counts = torch.full((10, 10), 12) + torch.diag(torch.full((10,), 988))
    assert confusion_matrix_image(counts, classes).shape[1] <= CARD_WIDTH
    wrong = misclassified_grid(torch.rand(24, 1, 28, 28), torch.zeros(24, dtype=torch.long),
                               torch.ones(24, dtype=torch.long), classes)
    assert wrong.shape[1] <= CARD_WIDTH
