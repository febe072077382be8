"""TensorBoard logging: training loss per iteration, metrics per epoch, histograms, hparams with final metrics."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch

from ember import distributed as dist
from ember.callbacks.progress import as_float
from ember.engine import Engine, Events, exception_observer

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


def _numeric_items(metrics: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """(name, value) for every number in `metrics`; dict-valued metrics become `name/key`, others are skipped."""
    for name, value in metrics.items():
        if isinstance(value, Mapping):
            yield from _numeric_items(value, f"{prefix}{name}/")
            continue
        number = as_float(value)
        if number is not None:
            yield f"{prefix}{name}", number


def _hparam_value(value: Any) -> bool | int | float | str:
    """A value TensorBoard's hparams accept: numbers, bools and strings as they are, anything else as its str."""
    if isinstance(value, (bool, int, float, str)):
        return value
    number = as_float(value)
    return number if number is not None else str(value)


class TensorBoardLogger:
    """Writes a run's scalars (and optionally histograms and hparams) to TensorBoard event files in `logdir`.

    Tags and steps: `train/loss` every `log_every` iterations with step = iteration; every number in
    `engine.state.metrics` as `epoch/<name>` at EPOCH_COMPLETED with step = epoch, next to `epoch/time_s`
    (the epoch's seconds), so all `epoch/*` curves share one x-axis. `histograms_every` epochs, the weights
    and gradients of `model` as `weights/<param>` and `grads/<param>` (step = epoch). At COMPLETED, `hparams`
    with the final metrics as `hparam/<name>`, in the same run folder. The loss is read (a device sync for
    a GPU tensor) only on the iterations it is logged. The writer is flushed and closed at COMPLETED and
    when the run raises. Under torch.distributed only rank 0 writes (construct the logger after
    `init_process_group`). Attach it after the callbacks that fill `engine.state.metrics` at EPOCH_COMPLETED.
    """

    def __init__(
        self,
        logdir: str | os.PathLike[str],
        *,
        log_every: int = 100,
        histograms_every: int = 0,
        model: torch.nn.Module | None = None,
        hparams: Mapping[str, Any] | None = None,
        output_transform: Callable[[Any], Any] | None = None,
        flush_secs: int = 30,
    ) -> None:
        if not isinstance(log_every, int) or log_every < 0:
            raise ValueError(f"log_every must be a number of iterations >= 0 (0 = no loss), got {log_every!r}")
        if not isinstance(histograms_every, int) or histograms_every < 0:
            raise ValueError(f"histograms_every must be a number of epochs >= 0, got {histograms_every!r}")
        if histograms_every and model is None:
            raise ValueError("histograms_every > 0 needs the model: pass model=<your nn.Module>")
        self.logdir = os.fspath(logdir)
        self.log_every = log_every
        self.histograms_every = histograms_every
        self.model = model
        self.hparams = {str(k): _hparam_value(v) for k, v in (hparams or {}).items()}
        self.output_transform = output_transform
        self.writer: SummaryWriter | None = None
        if dist.is_main():
            from torch.utils.tensorboard import SummaryWriter  # imported here: `import ember` stays light

            self.writer = SummaryWriter(log_dir=self.logdir, flush_secs=flush_secs)

    def attach(self, engine: Engine) -> None:
        """Register the logging handlers on `engine` (nothing on ranks other than 0)."""
        if self.writer is None:
            return
        if self.log_every:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.log_every), self._log_loss)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._log_epoch)
        if self.histograms_every:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.histograms_every), self._log_histograms)
        engine.add_event_handler(Events.TERMINATE, self._flush)
        engine.add_event_handler(Events.COMPLETED, self._on_completed)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._on_exception)

    def _log_loss(self, engine: Engine) -> None:
        output = engine.state.output
        loss = as_float(self.output_transform(output) if self.output_transform is not None else output)
        if loss is None:
            raise TypeError(
                f"TensorBoardLogger logs the training loss, but engine.state.output is a {type(output).__name__}, "
                "not a number or one-element tensor; pass output_transform=<fn returning the loss> or log_every=0"
            )
        self.writer.add_scalar("train/loss", loss, engine.state.iteration)  # type: ignore[union-attr]

    def _log_epoch(self, engine: Engine) -> None:
        writer, epoch = self.writer, engine.state.epoch
        assert writer is not None
        for name, value in _numeric_items(engine.state.metrics):
            writer.add_scalar(f"epoch/{name}", value, epoch)
        writer.add_scalar("epoch/time_s", engine.state.times.get("EPOCH_COMPLETED", 0.0), epoch)

    def _log_histograms(self, engine: Engine) -> None:
        writer, epoch = self.writer, engine.state.epoch
        assert writer is not None and self.model is not None
        for name, param in self.model.named_parameters():
            writer.add_histogram(f"weights/{name}", param.detach(), epoch)
            if param.grad is not None:
                writer.add_histogram(f"grads/{name}", param.grad.detach(), epoch)

    def _flush(self, engine: Engine) -> None:
        if self.writer is not None:
            self.writer.flush()

    def _on_completed(self, engine: Engine) -> None:
        if self.hparams and self.writer is not None:
            final = {f"hparam/{name}": value for name, value in _numeric_items(engine.state.metrics)}
            self.writer.add_hparams(dict(self.hparams), final, run_name=".", global_step=engine.state.epoch)
        self.close()

    @exception_observer
    def _on_exception(self, engine: Engine, exc: BaseException) -> None:
        self.close()

    def close(self) -> None:
        """Flush and close the event files; a later run reopens them (SummaryWriter does so on its next write)."""
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
