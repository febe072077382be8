"""ember's own handlers attach to a plain `ignite.engine.Engine` and work there (issue 11, item 3)."""

from __future__ import annotations

import io

import ignite.engine
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ember import Events, create_evaluator
from ember.callbacks import (
    Checkpoint,
    EarlyStopping,
    Evaluate,
    LossPrinter,
    LRScheduler,
    ProgressBar,
    TensorBoardLogger,
    TerminateOnNan,
    ThroughputMonitor,
)


def ignite_trainer(fail_at: int | None = None):
    """A plain Ignite Engine training a linear model; its step returns the loss tensor (detached)."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(engine, batch):
        if engine.state.iteration == fail_at:
            raise RuntimeError("step failed")
        optimizer.zero_grad()
        loss = F.cross_entropy(model(batch[0]), batch[1])
        loss.backward()
        optimizer.step()
        return loss.detach()

    trainer = ignite.engine.Engine(step)
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(4)]
    return trainer, model, optimizer, data


def test_loss_printer_progress_bar_and_throughput_on_ignite():
    trainer, _, _, data = ignite_trainer()
    out, bar = io.StringIO(), io.StringIO()
    LossPrinter(every=2, size=32, file=out).attach(trainer)
    ProgressBar(file=bar, enabled=True).attach(trainer)
    ThroughputMonitor(batch_size=8).attach(trainer)
    trainer.run(data, max_epochs=2)
    assert out.getvalue().count("loss:") == 4
    assert "4/4" in bar.getvalue()


def test_evaluate_early_stopping_and_lr_scheduler_on_ignite():
    trainer, model, optimizer, data = ignite_trainer()
    evaluator = create_evaluator(model, {"loss": _ConstantLoss()})
    Evaluate(evaluator, data, every_epochs=1).attach(trainer)
    EarlyStopping("val/loss", patience=1, trainer=trainer, file=io.StringIO()).attach(trainer)
    LRScheduler(torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)).attach(trainer)
    state = trainer.run(data, max_epochs=10)
    assert state.metrics["val/loss"] == 1.0
    assert state.epoch == 2, "a constant loss stops after patience=1 epoch without improvement"
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**2)


class _ConstantLoss:
    def reset(self):
        pass

    def update(self, output):
        pass

    def compute(self):
        return 1.0


def test_checkpoint_and_tensorboard_on_ignite(tmp_path):
    trainer, model, optimizer, data = ignite_trainer()
    Checkpoint({"model": model, "optimizer": optimizer}, tmp_path / "ckpt", every_epochs=1).attach(trainer)
    tb = TensorBoardLogger(tmp_path / "tb", log_every=1)
    tb.attach(trainer)
    trainer.run(data, max_epochs=2)
    tb.close()
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("*.pt"))[-1] == "checkpoint_000000008.pt"
    assert any((tmp_path / "tb").iterdir())


def test_terminate_on_nan_on_ignite():
    trainer = ignite.engine.Engine(lambda e, b: torch.tensor(float("nan") if e.state.iteration == 3 else 1.0))
    TerminateOnNan(check_every=1, file=io.StringIO()).attach(trainer)
    assert trainer.run(range(6), max_epochs=2).iteration == 3


@pytest.mark.parametrize("user_handler", [False, True])
def test_ember_exception_observers_do_not_change_propagation_on_ignite(tmp_path, user_handler):
    """On Ignite an attached EXCEPTION_RAISED handler swallows the exception; ember's observers must not."""
    trainer, model, optimizer, data = ignite_trainer(fail_at=6)
    Checkpoint({"model": model, "optimizer": optimizer}, tmp_path / "ckpt", every_epochs=1,
               save_on_exception=True).attach(trainer)
    tb = TensorBoardLogger(tmp_path / "tb", log_every=1)
    tb.attach(trainer)
    ProgressBar(file=io.StringIO(), enabled=True).attach(trainer)
    if user_handler:
        handled = []
        trainer.add_event_handler(Events.EXCEPTION_RAISED, lambda e, exc: handled.append(exc))
        trainer.run(data, max_epochs=2)
        assert len(handled) == 1, "the user's handler handled it, as Ignite's semantics say"
    else:
        with pytest.raises(RuntimeError, match="step failed"):
            trainer.run(data, max_epochs=2)
    assert tb.writer.all_writers is None, "TensorBoard was closed on the exception"
