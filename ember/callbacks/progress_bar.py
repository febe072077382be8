"""A tqdm progress bar per epoch (over iterations) or per run (over epochs), with a throttled loss postfix."""

from __future__ import annotations

import numbers
import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any, Literal

from tqdm.auto import tqdm

from ember import distributed as dist
from ember.callbacks._output import as_number, batch_size_of
from ember.engine import Engine, Events, exception_observer
from ember.engine import order as order_levels
from ember.utils import checks


class _AboveTheBar:
    """A stand-in for sys.stdout/sys.stderr while a bar is open: each whole line is written above the bar.

    The bar is cleared, the line written and flushed, and the bar drawn again below it, so a printed line is
    never glued to the bar nor followed by a stale copy of it. Partial lines wait for their newline."""

    def __init__(self, stream: Any, owner: ProgressBar) -> None:
        self._stream = stream
        self._owner = owner
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            lines, self._pending = self._pending.rsplit("\n", 1)
            self._owner._print_above(self._stream, lines + "\n")
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Nowhere:
    """Where a bar forced onto a non-terminal draws while it runs: nothing is kept (its last state is written
    whole when it closes)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class ProgressBar:
    """Shows training progress with tqdm, reading the loss only every `refresh_every` iterations.

    `per="epoch"`: one bar per epoch over its iterations; `per="run"`: one bar over the run's epochs (like
    `tqdm.trange(epochs)`). `enabled=None` shows the bar only when both sys.stdout and the bar's stream
    (`file`, default sys.stderr) are terminals, so logs redirected to a file stay clean. `enabled=True` on a
    stream that is not a terminal (`--progress | tee log`) draws nothing while the bar runs and writes its
    final state as one whole line when it closes: no carriage returns, no line glued to a bar. The postfix
    shows `loss=` from `output_transform(engine.state.output)` (default: the output itself) when it is a
    number or a one-element tensor, and `samples/s=` (samples counted batch by batch since the bar opened);
    other outputs (an evaluator's `(y_pred, y)`) show no loss. Below NARROW columns the bar drops tqdm's
    elapsed time and it/s, and below NARROWEST the samples/s, so that the loss is never cut. Extra keyword
    arguments go to `tqdm` (`leave`, `ncols`, `ascii`, ...).
    """

    ember_order = order_levels.PROGRESS
    NARROW = 100
    NARROWEST = 80

    def __init__(
        self,
        *,
        per: Literal["epoch", "run"] = "epoch",
        refresh_every: int = 10,
        enabled: bool | None = None,
        file: IO[str] | None = None,
        desc: str | None = None,
        output_transform: Callable[[Any], Any] | None = None,
        mininterval: float = 0.1,
        **tqdm_kwargs: Any,
    ) -> None:
        checks.one_of("per", per, {"epoch": "a bar per epoch", "run": "one bar over epochs"})
        checks.positive_int("refresh_every", refresh_every, "a positive number of iterations")
        self.per = per
        self.refresh_every = refresh_every
        self.enabled = enabled
        self.file = file
        self.desc = desc
        self.output_transform = output_transform
        self.mininterval = mininterval
        self.tqdm_kwargs = tqdm_kwargs
        self.bar: tqdm | None = None
        self._engine: Engine | None = None
        self._redirected: tuple[Any, Any] = (None, None)
        self._epoch_start = 0
        self._last_refresh = self._opened_at = 0.0
        self._samples = 0
        self._terminal = True
        self._columns: int | None = None

    def _is_enabled(self, stream: Any) -> bool:
        if self.enabled is not None:
            return bool(self.enabled)
        return _isatty(sys.stdout) and _isatty(stream)

    def attach(self, engine: Engine) -> None:
        """Register the bar's handlers on `engine` (nothing when disabled or not on rank 0)."""
        stream = self.file if self.file is not None else sys.stderr
        if not self._is_enabled(stream) or not dist.is_main():
            return
        self._stream = stream
        self._engine = engine
        self._terminal = _isatty(stream)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._count)
        if self.per == "epoch":
            engine.add_event_handler(Events.EPOCH_STARTED, self._open_epoch_bar)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._finish_epoch_bar)
        else:
            engine.add_event_handler(Events.STARTED, self._open_run_bar)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._advance_run_bar)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.refresh_every), self._refresh)
        engine.add_event_handler(Events.COMPLETED | Events.TERMINATE, self.close)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._on_exception)

    def _count(self, engine: Engine) -> None:
        self._samples += batch_size_of(engine.state.batch) or 0

    def _width(self) -> int | None:
        ncols = self.tqdm_kwargs.get("ncols")
        if isinstance(ncols, int):
            return ncols
        try:
            return os.get_terminal_size(self._stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            return None

    def _new_bar(self, total: int | None, initial: int, desc: str, unit: str) -> tqdm:
        self.close()
        kwargs = {"mininterval": self.mininterval, "unit": unit, **self.tqdm_kwargs}
        self._last_refresh = self._opened_at = time.monotonic()
        self._samples = 0
        self._columns = self._width() if self._terminal else None
        if self._columns is not None and self._columns < self.NARROW and total:
            kwargs.setdefault("bar_format", "{l_bar}{bar}| {n_fmt}/{total_fmt} [{remaining}{postfix}]")
        if not self._terminal:  # drawn once, as a whole line, when it closes (see close)
            kwargs["file"] = _Nowhere()
            return tqdm(total=total, initial=initial, desc=desc, **kwargs)
        bar = tqdm(total=total, initial=initial, desc=desc, file=self._stream, **kwargs)
        self._redirected = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = _AboveTheBar(sys.stdout, self), _AboveTheBar(sys.stderr, self)
        return bar

    def _print_above(self, stream: Any, lines: str) -> None:
        """Write `lines` above the bar; an epoch's bar whose last iteration is done is completed first."""
        bar = self.bar
        engine = self._engine
        if bar is not None and self.per == "epoch" and engine is not None:
            s = engine.state
            if s.epoch_length and s.iteration - self._epoch_start >= s.epoch_length:
                self._finish_epoch_bar(engine)  # e.g. an evaluation printing at EPOCH_COMPLETED
                bar = None
        if bar is not None:
            bar.clear()
        stream.write(lines)
        stream.flush()
        if bar is not None and self.bar is bar:
            bar.refresh()

    def _open_epoch_bar(self, engine: Engine) -> None:
        s = engine.state
        if s.epoch_length:
            self._epoch_start = (s.epoch - 1) * s.epoch_length
        else:
            self._epoch_start = s.iteration
        prefix = self.desc if self.desc is not None else "Epoch"
        self.bar = self._new_bar(
            s.epoch_length, s.iteration - self._epoch_start, f"{prefix} {s.epoch}/{s.max_epochs}", "it"
        )

    def _open_run_bar(self, engine: Engine) -> None:
        s = engine.state
        self.bar = self._new_bar(s.max_epochs, s.epoch, self.desc if self.desc is not None else "Epochs", "epoch")

    def _set_loss(self, engine: Engine) -> None:
        if self.bar is not None:
            self._set_loss_of(self.bar, engine)

    def _set_loss_of(self, bar: tqdm, engine: Engine) -> None:
        output = engine.state.output
        loss = as_number(self.output_transform(output) if self.output_transform is not None else output)
        postfix = {"loss": f"{float(loss):.4f}"} if isinstance(loss, numbers.Real) else {}
        elapsed = time.monotonic() - self._opened_at
        narrowest = self._columns is not None and self._columns < self.NARROWEST
        if self._samples and elapsed > 0 and not narrowest:
            postfix["samples/s"] = tqdm.format_sizeof(self._samples * dist.world_size() / elapsed)
        if postfix:
            bar.set_postfix(postfix, refresh=False)

    def _refresh(self, engine: Engine) -> None:
        bar = self.bar
        if bar is None:
            return
        self._set_loss(engine)
        if self.per == "epoch":
            bar.update(engine.state.iteration - self._epoch_start - bar.n)
        else:
            now = time.monotonic()
            if now - self._last_refresh >= self.mininterval:
                bar.refresh()
                self._last_refresh = now

    def _finish_epoch_bar(self, engine: Engine) -> None:
        bar = self.bar
        if bar is None:
            return
        position = engine.state.iteration - self._epoch_start
        if position != bar.n:
            self._set_loss(engine)
            bar.update(position - bar.n)
        self.close()

    def _advance_run_bar(self, engine: Engine) -> None:
        bar = self.bar
        if bar is None:
            return
        if engine.state.iteration % self.refresh_every != 0:
            self._set_loss(engine)
        bar.update(engine.state.epoch - bar.n)
        bar.refresh()

    @exception_observer
    def _on_exception(self, engine: Engine, exc: BaseException) -> None:
        self.close()

    def close(self) -> None:
        """Draw the bar's final state and close it; calling it again is harmless."""
        if self.bar is not None:
            bar, self.bar = self.bar, None
            engine = self._engine
            if engine is not None and self.per == "epoch":  # a stopped run's bar shows the last iteration done
                position = engine.state.iteration - self._epoch_start
                if position > bar.n:
                    self._set_loss_of(bar, engine)
                    bar.update(position - bar.n)
            if not self._terminal:
                try:
                    self._stream.write(str(bar) + "\n")
                    self._stream.flush()
                except (OSError, ValueError):
                    pass
            bar.close()
            if isinstance(sys.stdout, _AboveTheBar) and sys.stdout._owner is self:
                sys.stdout, sys.stderr = self._redirected
