"""torch's SummaryWriter, with write errors that say what happened and where, and no stray thread traceback.

TensorBoard writes event files from a background thread. When the disk fills up, that thread dies printing
its traceback (mixed into the run's output), and the next write or flush in the main thread re-raises a bare
`[Errno 28] No space left on device` that names no folder. Here the thread's OSError is left for the main
thread to report (it re-raises it at its next write, flush or close), and every OSError of a writer method
becomes one `LogWriteError` naming the log folder.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread
from torch.utils.tensorboard import SummaryWriter as _TorchSummaryWriter

from ember.utils.files import disk_full


class LogWriteError(OSError):
    """TensorBoard logs could not be written; the message names the folder and says whether the disk is full."""


def _describe(logdir: str, exc: OSError) -> str:
    if disk_full(exc):
        return (f"cannot write TensorBoard logs to {logdir}: the disk is full (No space left on device); the logs "
                "written so far are kept. Free some space there, or log to a folder on another disk")
    return f"cannot write TensorBoard logs to {logdir}: {exc.strerror or exc}"


class SummaryWriter(_TorchSummaryWriter):
    """`torch.utils.tensorboard.SummaryWriter` whose creation and public methods raise LogWriteError for an OSError."""

    def __init__(self, log_dir: str, *, report_dir: str | None = None, **kwargs: Any) -> None:
        """`report_dir` is the folder errors name (the run's, for a writer of one of its sub-folders)."""
        self._report_dir = str(report_dir or log_dir)
        try:
            super().__init__(log_dir, **kwargs)
        except OSError as exc:  # creating the event file can already find the disk full
            raise LogWriteError(_describe(self._report_dir, exc)) from None

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if name.startswith("_") or not callable(value):
            return value

        @functools.wraps(value)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return value(*args, **kwargs)
            except LogWriteError:
                raise
            except OSError as exc:
                raise LogWriteError(_describe(object.__getattribute__(self, "_report_dir"), exc)) from None

        return call


def _quiet_writer_threads(previous: Any) -> Any:
    def hook(args: threading.ExceptHookArgs) -> None:
        if isinstance(args.thread, _AsyncWriterThread) and issubclass(args.exc_type, OSError):
            return  # the main thread re-raises it, as a LogWriteError naming the folder
        previous(args)

    hook.ember_quiet_writer_threads = True  # type: ignore[attr-defined]
    return hook


if not getattr(threading.excepthook, "ember_quiet_writer_threads", False):
    threading.excepthook = _quiet_writer_threads(threading.excepthook)
