"""GracefulStop: SIGTERM, SIGINT, SIGHUP and SIGUSR1 end a run after the current iteration, so it can checkpoint."""

from __future__ import annotations

import os
import signal
import sys
from types import TracebackType
from typing import Any

try:
    import termios
except ImportError:  # not on Windows
    termios = None  # type: ignore[assignment]

from ember import distributed as dist
from ember.data.loader import ignore_stop_signals
from ember.engine import Engine, Events, exception_observer
from ember.engine import order as order_levels
from ember.utils import checks

# SIGUSR1 is what SLURM sends before preemption (`--signal=USR1@60`); SIGHUP comes from a closed terminal or ssh.
STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1") if hasattr(signal, name)
)

__all__ = ["STOP_SIGNALS", "GracefulStop", "ignore_stop_signals", "is_worker_death"]

STOP_CHECK_EVERY = 20  # iterations between the ranks' collective "was anyone signalled?" check under torchrun
ABORT_EXIT_STATUS = 130


def _ignore_signal(signum: int, frame: Any) -> None:
    """A Python-level no-op handler (SIG_IGN would make a pending SIGCHLD print a race-condition warning)."""


def is_worker_death(exc: BaseException) -> bool:
    """True for the errors a DataLoader raises when its worker processes were killed (e.g. by the same signal):
    torch's "worker exited unexpectedly", or a pipe to a worker that died while sending a batch."""
    text = str(exc)
    if isinstance(exc, RuntimeError) and "DataLoader worker" in text and "exited unexpectedly" in text:
        return True
    return isinstance(exc, (ConnectionError, EOFError))


def _say(line: str) -> None:
    # After SIGHUP the terminal may be gone: a failed write must not turn the stop into a crash.
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _quiet_ctrl_c() -> tuple[int, list[Any]] | None:
    """Turn off the terminal's `^C` echo (ECHOCTL) on stdin while the run can be stopped, so that a Ctrl-C
    leaves no `^C` glued to the progress bar; the settings to restore, or None when stdin is not a terminal
    or belongs to another (foreground) job."""
    try:
        if termios is None or not hasattr(termios, "ECHOCTL"):
            return None
        fd = sys.stdin.fileno()
        if not os.isatty(fd):
            return None
        try:
            if os.tcgetpgrp(fd) != os.getpgrp():
                return None  # a background job must not change the foreground's terminal (SIGTTOU)
        except OSError:
            pass  # not this process's controlling terminal: no job to disturb
        saved = termios.tcgetattr(fd)
        quiet = list(saved)
        quiet[3] &= ~termios.ECHOCTL
        termios.tcsetattr(fd, termios.TCSANOW, quiet)
        return fd, saved
    except (AttributeError, OSError, ValueError, termios.error):
        return None


def _stdin_is_terminal() -> bool:
    try:
        return os.isatty(sys.stdin.fileno())
    except (AttributeError, OSError, ValueError):
        return False


def _restore_terminal(saved: tuple[int, list[Any]] | None) -> None:
    if saved is None or termios is None:
        return
    try:
        termios.tcsetattr(saved[0], termios.TCSANOW, saved[1])
    except (OSError, ValueError, termios.error):
        pass


class GracefulStop:
    """Turns stop signals into `engine.terminate()` after the current iteration, so COMPLETED handlers save.

    Attach it (`trainer.add(GracefulStop())`) and the handlers are installed when the run starts and the
    previous ones restored when it ends; or use it as a context manager around `trainer.run` (as `ember.fit`
    does), which keeps them installed until the block exits. The first stop signal sets
    `engine.state.stop_reason` (e.g. "SIGTERM") and `self.signum`; the run ends after the iteration in
    progress (a signal landing before the step has finished waits for it, so the iteration counter always
    matches the weights). A second SIGINT aborts at once: one line on stderr, exit status 130, no traceback
    (checkpoints written so far are whole, as every save is atomic).

    A signal sent to the whole process group also reaches DataLoader workers. Loaders made by `make_loader`
    start their workers with `ignore_stop_signals` (all but SIGTERM); once a stop began, torch's SIGCHLD check
    (which would raise on the workers' deaths) is replaced by a no-op, and `is_worker_death` recognises the
    error a loader raises when it was waiting for a batch from a worker that died (`ember.fit` then ends the
    run as stopped: the last finished iteration was saved). Under torchrun the ranks agree every
    `check_every` iterations (one small all-reduce, not one per step) so that all stop on the same iteration,
    each then with the signal's name and exit status (a signal to one rank stops every rank as that one).

    Args:
        signals: the signals that stop the run (default SIGTERM, SIGINT, SIGHUP, SIGUSR1).
        check_every: iterations between the ranks' agreement under torchrun.
        abort_on_second_interrupt: a second SIGINT ends the process at once (exit 130).
    """

    ember_order = order_levels.LAST

    def __init__(
        self,
        signals: tuple[int, ...] = STOP_SIGNALS,
        *,
        check_every: int = STOP_CHECK_EVERY,
        abort_on_second_interrupt: bool = True,
    ) -> None:
        checks.positive_int("check_every", check_every, "a positive number of iterations")
        self.signals = tuple(signals)
        self.check_every = check_every
        self.abort_on_second_interrupt = abort_on_second_interrupt
        self.signum: int | None = None
        self.engine: Engine | None = None
        self._previous: dict[int, Any] = {}
        self._in_block = False
        self._run_handles: list[Any] = []
        self._terminal: tuple[int, list[Any]] | None = None

    @property
    def reason(self) -> str | None:
        """The name of the signal that asked for the stop ("SIGTERM"), or None."""
        return signal.Signals(self.signum).name if self.signum is not None else None

    @property
    def exit_status(self) -> int:
        """128 + the signal, the status a process killed by it would have (143 for SIGTERM)."""
        return 128 + (self.signum or 0)

    def attach(self, engine: Engine) -> None:
        """Check for a requested stop after each iteration (every `check_every` under torchrun)."""
        self.engine = engine
        engine.state.stop_reason = None
        if dist.world_size() > 1:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.check_every), self._agree_to_stop)
        else:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._stop_if_asked)
        engine.add_event_handler(Events.STARTED, self._on_started)

    # ------------------------------------------------------------------ installing the handlers
    def __enter__(self) -> GracefulStop:
        self._install()
        self._in_block = True
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._in_block = False
        self._uninstall()

    def _on_started(self, engine: Engine) -> None:
        self.signum = None
        engine.state.stop_reason = None
        if self._in_block or self._previous:
            return
        self._install()
        # Its order (LAST) runs the COMPLETED one after the checkpoint; the EXCEPTION_RAISED one only observes.
        self._run_handles = [
            engine.add_event_handler(Events.COMPLETED, self._uninstall),
            engine.add_event_handler(Events.EXCEPTION_RAISED, self._uninstall_on_exception),
        ]

    def _install(self) -> None:
        if self._previous:
            return
        self._previous = {s: signal.getsignal(s) for s in self.signals}
        for s in self.signals:
            signal.signal(s, self._handle)
        if signal.SIGINT in self.signals:
            self._terminal = _quiet_ctrl_c()

    @exception_observer
    def _uninstall_on_exception(self, engine: Engine, exc: BaseException) -> None:
        self._uninstall()

    def _uninstall(self, *_: Any) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}
        _restore_terminal(self._terminal)
        self._terminal = None
        for handle in self._run_handles:
            handle.remove()
        self._run_handles = []

    # ------------------------------------------------------------------ reacting
    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT and self.abort_on_second_interrupt:
                self._abort()
            return
        self.signum = signum
        engine = self.engine
        if engine is not None:
            engine.state.stop_reason = self.reason
        if hasattr(signal, "SIGCHLD"):
            signal.signal(signal.SIGCHLD, _ignore_signal)
        # a new line after a `^C` echo, where the terminal's echo could not be turned off
        echo = "\n" if self._terminal is None and _stdin_is_terminal() else ""
        _say(f"{echo}{self.reason} received: finishing the current iteration and saving a checkpoint "
             "(Ctrl-C again to abort now)")
        # The engine clears `output` after fetching a batch and sets it when the step returns: before that,
        # terminating would end the run with the new iteration count and the old weights.
        if engine is not None and engine.state.output is not None and dist.world_size() == 1:
            engine.terminate()

    def _abort(self) -> None:
        _restore_terminal(self._terminal)
        _say("ember: aborted by a second interrupt; the checkpoints saved so far are kept")
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(ABORT_EXIT_STATUS)

    def _stop_if_asked(self, engine: Engine) -> None:
        if self.signum is not None:
            engine.terminate()

    def _agree_to_stop(self, engine: Engine) -> None:
        if dist.all_reduce_sum(int(self.signum is not None)) > 0:
            signals = dist.all_gather_object(self.signum)
            if self.signum is None:  # another rank was signalled: stop as it does, with its exit status
                self.signum = next(s for s in signals if s is not None)
                engine.state.stop_reason = self.reason
            engine.terminate()
