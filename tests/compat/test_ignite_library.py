"""Ignite's library, unmodified, on ember's trainer and evaluator: one test per piece (issue 11, item 1).

Where a piece's effect is a trace (learning rates, metric values, stop iteration), the same program runs on
ember's Engine and on Ignite's, and the traces must be equal.
"""

from __future__ import annotations

import io
import math
import time

import ignite.engine
import pytest
import torch
from ignite.handlers import (
    BasicTimeProfiler,
    Checkpoint,
    ConcatScheduler,
    DiskSaver,
    EarlyStopping,
    EMAHandler,
    ExpStateScheduler,
    FastaiLRFinder,
    HandlersTimeProfiler,
    LambdaStateScheduler,
    LRScheduler,
    ModelCheckpoint,
    MultiStepStateScheduler,
    PiecewiseLinear,
    PiecewiseLinearStateScheduler,
    ProgressBar,
    ReduceLROnPlateauScheduler,
    StepStateScheduler,
    TerminateOnNan,
    TimeLimit,
    Timer,
    create_lr_scheduler_with_warmup,
    global_step_from_engine,
)
from ignite.handlers.tensorboard_logger import (
    GradsScalarHandler,
    OptimizerParamsHandler,
    OutputHandler,
    TensorboardLogger,
    WeightsHistHandler,
)
from ignite.metrics import Accuracy, Average, Loss, MetricsLambda, RunningAverage
from ignite.metrics.metric import BatchWise, EpochWise, RunningBatchWise
from torch import nn
from torch.nn import functional as F

import ember
from ember import Events, create_evaluator, create_trainer

ENGINES = {"ember": ember.Engine, "ignite": ignite.engine.Engine}


def problem(seed: int = 0, n: int = 4, size: int = 8):
    """A tiny classification problem: a linear model and `n` batches."""
    torch.manual_seed(seed)
    model = nn.Linear(4, 3)
    data = [(torch.randn(size, 4), torch.randint(0, 3, (size,))) for _ in range(n)]
    return model, torch.optim.SGD(model.parameters(), lr=0.1), data


def plain_step(model, optimizer):
    """The same training step for both engines: returns the loss as a float."""

    def step(engine, batch):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(batch[0]), batch[1])
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def on_both(program):
    """Run `program(engine_cls) -> trace` on ember's and Ignite's Engine; return both traces."""
    return {name: program(cls) for name, cls in ENGINES.items()}


def test_trainer_and_evaluator_are_ignite_engines():
    model, optimizer, _ = problem()
    assert isinstance(create_trainer(model, optimizer, F.cross_entropy), ignite.engine.Engine)
    assert isinstance(create_evaluator(model), ignite.engine.Engine)
    assert ember.Events is ignite.engine.Events and ember.State is ignite.engine.State


@pytest.mark.parametrize("usage", [EpochWise(), BatchWise(), RunningBatchWise()], ids=lambda u: type(u).__name__)
def test_metric_attach_every_usage_matches_ignite(usage):
    def program(cls):
        model, _, data = problem()
        evaluator = cls(lambda e, b: (model(b[0]), b[1]))
        Accuracy().attach(evaluator, "acc", usage=usage)
        seen = []
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.metrics.get("acc")))
        return seen, evaluator.run(data).metrics["acc"]

    traces = on_both(program)
    assert traces["ember"] == traces["ignite"] and traces["ember"][1] is not None


def test_running_average_and_metrics_lambda_on_ember():
    def program(cls):
        model, optimizer, data = problem()
        trainer = cls(plain_step(model, optimizer))
        RunningAverage(output_transform=lambda x: x, alpha=0.5).attach(trainer, "avg_loss")
        evaluator = cls(lambda e, b: (model(b[0]), b[1]))
        acc, loss = Accuracy(), Loss(F.cross_entropy)
        MetricsLambda(lambda a, b: a - b, acc, loss).attach(evaluator, "acc_minus_loss")
        trainer.run(data, max_epochs=2)
        return trainer.state.metrics["avg_loss"], evaluator.run(data).metrics["acc_minus_loss"]

    traces = on_both(program)
    assert traces["ember"] == pytest.approx(traces["ignite"])


def test_ignite_metrics_on_ember_create_evaluator():
    model, _, data = problem()
    evaluator = create_evaluator(model)
    Accuracy().attach(evaluator, "acc")
    Average(output_transform=lambda out: F.cross_entropy(*out)).attach(evaluator, "loss")
    state = evaluator.run(data)
    x, y = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    with torch.no_grad():
        logits = model(x)
    assert state.metrics["acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert state.metrics["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)


def test_checkpoint_model_checkpoint_and_disk_saver(tmp_path):
    model, optimizer, data = problem()
    trainer = create_trainer(model, optimizer, F.cross_entropy)
    to_save = {"model": model, "optimizer": optimizer, "trainer": trainer}
    saver = DiskSaver(tmp_path / "a", require_empty=False)
    checkpoint = Checkpoint(to_save, saver, n_saved=2, global_step_transform=global_step_from_engine(trainer))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, checkpoint)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=3),
                              ModelCheckpoint(tmp_path / "b", "m", n_saved=None), {"model": model})
    trainer.run(data, max_epochs=3)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["checkpoint_2.pt", "checkpoint_3.pt"]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [f"m_model_{i}.pt" for i in (12, 3, 6, 9)]
    other_model, other_opt, _ = problem(seed=1)
    resumed = create_trainer(other_model, other_opt, F.cross_entropy)
    Checkpoint.load_objects({"model": other_model, "optimizer": other_opt, "trainer": resumed},
                            torch.load(tmp_path / "a" / "checkpoint_3.pt", weights_only=True))
    assert resumed.state.iteration == 12 and resumed.state.max_epochs == 3
    assert torch.equal(other_model.weight, model.weight)


def test_early_stopping_stops_the_ember_trainer_like_ignite():
    def program(cls):
        model, optimizer, data = problem()
        trainer = cls(plain_step(model, optimizer))
        evaluator = cls(lambda e, b: None)
        scores = iter([1.0, 2.0, 1.5, 1.0, 0.5, 3.0])
        evaluator.add_event_handler(Events.COMPLETED, EarlyStopping(2, lambda e: next(scores), trainer))
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda: evaluator.run([0]))
        return trainer.run(data, max_epochs=6).epoch

    assert on_both(program) == {"ember": 4, "ignite": 4}


def test_progress_bar_draws_on_ember():
    model, optimizer, data = problem()
    trainer = create_trainer(model, optimizer, F.cross_entropy)
    stream = io.StringIO()
    ProgressBar(file=stream, persist=True).attach(trainer, output_transform=lambda loss: {"loss": loss})
    trainer.run(data, max_epochs=2)
    text = stream.getvalue()
    assert "Epoch [2/2]" in text and "4/4" in text and "loss=" in text


def test_timer_measures_the_ember_step():
    model, optimizer, data = problem()
    trainer = create_trainer(model, optimizer, F.cross_entropy)
    timer = Timer(average=True)
    timer.attach(trainer, start=Events.EPOCH_STARTED, resume=Events.ITERATION_STARTED,
                 pause=Events.ITERATION_COMPLETED, step=Events.ITERATION_COMPLETED)
    trainer.run(data, max_epochs=2)
    assert timer.step_count == 4 and 0 < timer.value() < 1


def test_time_limit_terminates_the_ember_trainer():
    trainer = ember.Engine(lambda e, b: time.sleep(0.2))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, TimeLimit(limit_sec=1))
    state = trainer.run(range(50))
    assert 4 <= state.iteration < 50 and trainer.should_terminate


def test_terminate_on_nan_stops_on_the_same_iteration_as_ignite():
    def program(cls):
        engine = cls(lambda e, b: float("nan") if e.state.iteration == 3 else 1.0)
        engine.add_event_handler(Events.ITERATION_COMPLETED, TerminateOnNan())
        return engine.run(range(5), max_epochs=2).iteration

    assert on_both(program) == {"ember": 3, "ignite": 3}


def test_ema_handler_tracks_the_ember_model():
    model, optimizer, data = problem()
    trainer = create_trainer(model, optimizer, F.cross_entropy)
    ema = EMAHandler(model, momentum=0.5)
    ema.attach(trainer, name="ema_momentum")
    start = model.weight.detach().clone()
    trainer.run(data, max_epochs=2)
    assert trainer.state.ema_momentum == 0.5
    ema_w = ema.ema_model.weight
    assert not torch.equal(ema_w, model.weight) and not torch.equal(ema_w, start)


def test_fastai_lr_finder_on_ember(tmp_path):
    model, optimizer, data = problem(n=8)
    trainer = create_trainer(model, optimizer, F.cross_entropy)
    finder = FastaiLRFinder()
    before = model.weight.detach().clone()
    with finder.attach(trainer, to_save={"model": model, "optimizer": optimizer}, num_iter=6,
                       start_lr=1e-4, end_lr=1.0) as finding:
        finding.run(data)
    results = finder.get_results()
    assert len(results["lr"]) >= 6 and results["lr"][0] < results["lr"][-1]
    assert all(math.isfinite(v) for v in results["loss"])
    assert torch.equal(model.weight, before), "the finder restores the model"

    def program(cls):
        model, optimizer, data = problem(n=8)
        finder = FastaiLRFinder()
        with finder.attach(cls(plain_step(model, optimizer)), to_save={"model": model, "optimizer": optimizer},
                           num_iter=6, start_lr=1e-4, end_lr=1.0) as finding:
            finding.run(data)
        return finder.get_results()

    traces = on_both(program)
    assert traces["ember"] == traces["ignite"]


def _schedulers(optimizer, trainer):
    """Each of Ignite's parameter schedulers on `optimizer` (or on the trainer's state)."""
    torch_step = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    return {
        "LRScheduler": (Events.ITERATION_COMPLETED, LRScheduler(torch_step)),
        "warmup": (Events.ITERATION_STARTED, create_lr_scheduler_with_warmup(
            torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9), warmup_start_value=0.0,
            warmup_duration=3)),
        "PiecewiseLinear": (Events.ITERATION_STARTED,
                            PiecewiseLinear(optimizer, "lr", [(0, 0.0), (4, 0.4), (8, 0.1)])),
        "ConcatScheduler": (Events.ITERATION_STARTED, ConcatScheduler([
            PiecewiseLinear(optimizer, "lr", [(0, 0.1), (3, 0.3)]),
            PiecewiseLinear(optimizer, "lr", [(0, 0.3), (5, 0.05)])], durations=[3])),
        "ReduceLROnPlateau": (Events.EPOCH_COMPLETED, ReduceLROnPlateauScheduler(
            optimizer, metric_name="loss", trainer=trainer, patience=0, factor=0.5)),
    }


@pytest.mark.parametrize("name", ["LRScheduler", "warmup", "PiecewiseLinear", "ConcatScheduler", "ReduceLROnPlateau"])
def test_parameter_schedulers_give_the_same_learning_rates_as_on_ignite(name):
    def program(cls):
        model, optimizer, data = problem()
        trainer = cls(plain_step(model, optimizer))
        trainer.state.metrics["loss"] = 1.0
        event, scheduler = _schedulers(optimizer, trainer)[name]
        trainer.add_event_handler(event, scheduler)
        lrs = []
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda: lrs.append(optimizer.param_groups[0]["lr"]))
        trainer.run(data, max_epochs=3)
        return lrs

    traces = on_both(program)
    assert traces["ember"] == traces["ignite"] and len(set(traces["ember"])) > 1


@pytest.mark.parametrize("scheduler", [
    lambda: LambdaStateScheduler(lambda event: 0.5 ** event, param_name="p", create_new=True),
    lambda: PiecewiseLinearStateScheduler([(0, 1.0), (6, 0.0)], param_name="p", create_new=True),
    lambda: ExpStateScheduler(initial_value=1.0, gamma=0.5, param_name="p", create_new=True),
    lambda: StepStateScheduler(initial_value=1.0, gamma=0.5, step_size=3, param_name="p", create_new=True),
    lambda: MultiStepStateScheduler(initial_value=1.0, gamma=0.5, milestones=[2, 5], param_name="p", create_new=True),
], ids=["Lambda", "PiecewiseLinear", "Exp", "Step", "MultiStep"])
def test_state_param_schedulers_match_ignite(scheduler):
    def program(cls):
        engine = cls(lambda e, b: None)
        scheduler().attach(engine, Events.ITERATION_COMPLETED)
        seen = []
        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.p))
        engine.run(range(4), max_epochs=2)
        return seen

    traces = on_both(program)
    assert traces["ember"] == traces["ignite"] and len(set(traces["ember"])) > 1


def test_basic_time_profiler_on_ember():
    model, optimizer, data = problem()
    trainer = create_trainer(model, optimizer, F.cross_entropy)
    profiler = BasicTimeProfiler()
    profiler.attach(trainer)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda: None)
    trainer.run(data, max_epochs=2)
    results = profiler.get_results()
    assert results["processing_stats"]["total"] > 0
    assert results["event_handlers_stats"]["ITERATION_COMPLETED"]["total"] > 0
    assert len(profiler.processing_times) == 8


def test_handlers_time_profiler_on_ember():
    model, optimizer, data = problem()
    trainer = create_trainer(model, optimizer, F.cross_entropy)
    profiler = HandlersTimeProfiler()
    profiler.attach(trainer)

    def log_loss(engine):
        engine.state.last = float(engine.state.output)

    trainer.add_event_handler(Events.ITERATION_COMPLETED, log_loss)
    trainer.run(data, max_epochs=2)
    rows = {row[0]: row for row in profiler.get_results()}
    assert any(name.endswith("log_loss") for name in rows) and len(profiler.processing_times) == 8
    assert trainer.state.last == pytest.approx(float(trainer.state.output))


def test_tensorboard_logger_and_its_handlers_on_ember(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, optimizer, data = problem()
    trainer = create_trainer(model, optimizer, F.cross_entropy)
    evaluator = create_evaluator(model)
    Accuracy().attach(evaluator, "acc")
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda: evaluator.run(data))
    tb = TensorboardLogger(log_dir=tmp_path)
    tb.attach(trainer, OutputHandler("train", output_transform=lambda loss: {"loss": loss}),
              Events.ITERATION_COMPLETED)
    tb.attach(evaluator, OutputHandler("val", metric_names=["acc"],
                                       global_step_transform=global_step_from_engine(trainer)), Events.COMPLETED)
    tb.attach(trainer, OptimizerParamsHandler(optimizer), Events.ITERATION_STARTED)
    tb.attach(trainer, WeightsHistHandler(model), Events.EPOCH_COMPLETED)
    tb.attach(trainer, GradsScalarHandler(model), Events.ITERATION_COMPLETED)
    trainer.run(data, max_epochs=2)
    tb.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    tags = events.Tags()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 9))
    assert [e.step for e in events.Scalars("val/acc")] == [1, 2], "global_step_from_engine(trainer)"
    assert "lr/group_0" in tags["scalars"] and "grads_norm/weight" in tags["scalars"]
    assert "weights/weight" in tags["histograms"]
