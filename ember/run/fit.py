"""`ember.fit`: what a serious run wants around a trainer, in one call that a plain script can make.

Checkpoints in a folder of the run's own, exact resume of *this* run, a NaN guard, TensorBoard, a progress bar
and a graceful stop on SIGTERM/SIGINT/SIGHUP/SIGUSR1. `ember train` is a user of it (`RunContext.fit`).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import torch

from ember import distributed as dist
from ember.callbacks import Checkpoint, ProgressBar, TensorBoardLogger, TerminateOnNan
from ember.callbacks.graceful_stop import GracefulStop, is_worker_death
from ember.engine import Engine, Events
from ember.run.folder import make_run_dir, newest_good, run_record
from ember.run.record import (
    MAY_DIFFER,
    RUN_KEY,
    RunError,
    RunRecord,
    RunResult,
    differing,
    epoch_of,
    finished,
)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _say(line: str, *, err: bool = False) -> None:
    if dist.is_main():
        print(line, file=sys.stderr if err else sys.stdout, flush=True)


def fit(
    trainer: Engine,
    data: Iterable,
    *,
    max_epochs: int,
    objects: Mapping[str, Any] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    config: Mapping[str, Any] | None = None,
    may_differ: Iterable[str] = MAY_DIFFER,
    run_id: str | None = None,
    checkpoint_every: int | None = None,
    keep_last: int = 2,
    async_checkpoint: bool = False,
    tensorboard: str | os.PathLike[str] | TensorBoardLogger | None = None,
    hparams: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    progress_per: Literal["epoch", "run"] = "epoch",
    nan_guard: bool = True,
    max_iterations: int | None = None,
    output_transform: Callable[[Any], Any] | None = None,
    resume_hint: str = "resume=True",
    show_plan: bool = False,
) -> RunResult:
    """Run `trainer` over `data` with checkpoints, resume, NaN guard, TensorBoard, progress and graceful stop.

    The run's checkpoints go to `checkpoint_dir` (default: a new folder `checkpoints/<run-id>`), which must
    not hold another run's checkpoints unless `resume=True`, which continues exactly from the newest good
    one there (mid-epoch included; a folder without checkpoints starts a new run). `config` (any plain
    settings, e.g. `vars(args)`) is saved in every checkpoint with the run id; on resume a setting that
    differs from the saved one raises `RunError` before any training, unless it is in `may_differ`
    (`max_epochs` is: more epochs continue the run, as many or fewer than done leave it untouched).

    Args:
        trainer: the training engine (its state is saved as "trainer").
        data: the training batches.
        max_epochs: epochs the run trains in all.
        objects: what to checkpoint besides the trainer (model, optimizer, scheduler...).
        checkpoint_dir: the run's own folder; `resume` continues the run saved there.
        config: the run's settings, saved in its checkpoints and compared on resume.
        checkpoint_every: also save every this many iterations (always at each epoch's end and at the end).
        async_checkpoint: save in the background (`Checkpoint(async_save=True)`): a save copies the state into
            host memory and training goes on while a thread writes it; a stop waits for the save in flight.
        tensorboard: the TensorBoard folder of this run, or a `TensorBoardLogger` for it (None: no TensorBoard);
            reused on resume, where the logger continues the same run. Its hparams are written only when the
            run finishes (not when it is stopped to be resumed).
        progress: a progress bar (None: only in a terminal), over each epoch or the run (`progress_per`).
        nan_guard: stop on a NaN/Inf loss (exit status 1), keeping the last good checkpoint.
        max_iterations: stop (and save) after this iteration, e.g. to try a set-up.
        output_transform: picks the loss out of the trainer's output for TensorBoard and the bar.
        resume_hint: how the messages tell the user to continue a run ("--resume" in `ember train`).
        show_plan: print the trainer's plan (`Engine.describe`) once every handler is attached, before training.

    Returns:
        A `RunResult`; `exit_status` is 0 (finished, or nothing to do), 1 (NaN/Inf loss) or 128 + the signal.
    """
    objects = {**(objects or {}), "trainer": trainer}
    if checkpoint_dir is None:
        checkpoint_dir, run_id = make_run_dir("checkpoints", run_id) if dist.is_main() else (None, run_id)
        checkpoint_dir, run_id = dist.broadcast_object((checkpoint_dir, run_id))
    folder = os.fspath(checkpoint_dir)
    record = RunRecord(run_id or os.path.basename(os.path.normpath(folder)), {**(config or {}),
                                                                            "max_epochs": max_epochs})
    resumed = _resume(trainer, folder, objects, record, resume, may_differ, resume_hint)
    logdir = tensorboard.logdir if isinstance(tensorboard, TensorBoardLogger) else (
        os.fspath(tensorboard) if tensorboard else None)
    result = RunResult(0, False, None, record.run_id, folder, logdir,
                       resumed)
    state = trainer.state
    length = len(data) if hasattr(data, "__len__") else None
    if resumed and length is not None and state.epoch_length not in (None, length):
        raise RunError(
            f"the checkpoint in {folder} has {state.epoch_length} iterations per epoch but this run has "
            f"{length}: resume with the same batch size per process and the same number of processes"
        )
    if resumed and isinstance(data, torch.utils.data.DataLoader) and data.generator is None:
        warnings.warn("resuming over a DataLoader without generator=: each iter() draws its seed from the global "
                      "RNG, so Dropout and other random draws will not repeat the uninterrupted run's; pass "
                      "DataLoader(..., generator=torch.Generator().manual_seed(seed))", RuntimeWarning, stacklevel=2)
    if resumed and state.epoch_length and state.iteration >= state.epoch_length * max_epochs \
            and not state.epoch_end_pending:  # a last epoch whose end did not run: run just that end
        done, extra = divmod(state.iteration, state.epoch_length)
        part = f" and {_plural(extra, 'iteration')} of epoch {done + 1}" if extra else ""
        _say(f"Nothing to do: the run in {folder} already finished {_plural(done, 'epoch')}{part} (iteration "
             f"{state.iteration}), not fewer than the {_plural(max_epochs, 'epoch')} asked for; nothing was changed.")
        result.finished = True
        return result
    objects[RUN_KEY] = RunRecord(record.run_id, record.config)
    if logdir:  # two short lines, not one of two paths (about 190 characters)
        parent = os.path.dirname(os.path.normpath(logdir)) or logdir
        _say(f"ember: run {record.run_id}: checkpoints go to {folder}", err=True)
        _say(f"ember: TensorBoard logs go to {logdir} (view them: ember board {parent})", err=True)
    else:
        _say(f"ember: run {record.run_id}: checkpoints go to {folder}, no TensorBoard logs", err=True)
    if nan_guard:
        trainer.add(TerminateOnNan())
    saver = trainer.add(Checkpoint(objects, folder, every_epochs=1, every_iterations=checkpoint_every,
                                   keep_last=keep_last, save_on_exception=True, async_save=async_checkpoint))
    logger = None
    if isinstance(tensorboard, TensorBoardLogger):
        logger = trainer.add(tensorboard)
    elif logdir:
        try:
            logger = trainer.add(TensorBoardLogger(logdir, hparams=dict(hparams or {}),
                                                   output_transform=output_transform))
        except OSError as exc:
            raise RunError(f"cannot write TensorBoard logs to {logdir}: {exc.strerror or exc}",
                           setting="tensorboard") from None
    trainer.add(ProgressBar(per=progress_per, enabled=progress, output_transform=output_transform))
    if max_iterations is not None:
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=max_iterations), lambda e: e.terminate())
    stop = GracefulStop()
    trainer.add(stop)
    if logger is not None:  # a run stopped to be resumed writes its hparams when it finishes
        logger.hparams_if = lambda e: stop.signum is None and (max_iterations is None or finished(e.state))
    if show_plan:
        _say(trainer.describe())
    quiet = _QuietWorkerDeaths(stop)
    trainer.logger.addFilter(quiet)
    with stop:
        try:
            trainer.run(data, max_epochs=max_epochs)
        except (RuntimeError, ConnectionError, EOFError) as exc:
            # Workers killed by the same signal: the last finished iteration was saved (save_on_exception).
            if stop.signum is None or not is_worker_death(exc):
                raise
        finally:
            trainer.logger.removeFilter(quiet)
    result.finished = finished(state)
    result.stop_reason = stop.reason
    if stop.signum is not None and result.finished:
        _say(f"{stop.reason} arrived after the last iteration: the run had finished; its checkpoint is in {folder}.")
    elif stop.signum is not None:
        if saver.last_path is not None:
            saved = f"checkpoint saved in {folder} (continue with {resume_hint})"
        elif resumed:
            saved = f"no new iteration had finished; {resumed} is kept (continue with {resume_hint})"
        else:
            saved = "no iteration had finished, so there was nothing to save"
        _say(f"Stopped by {stop.reason} at epoch {epoch_of(state)}, iteration {state.iteration}; {saved}.")
        result.exit_status = stop.exit_status
    elif state.terminated_on_nan is not None:
        result.stop_reason = "nan"
        result.exit_status = 1
        result.finished = False
    elif not result.finished:
        result.stop_reason = "terminated"
        if max_iterations is not None and state.iteration == max_iterations:
            result.stop_reason = "max_iterations"
            _say(f"Stopped after iteration {state.iteration} (max_iterations {max_iterations}) in epoch "
                 f"{epoch_of(state)}; checkpoint saved in {folder} (continue with {resume_hint}).")
    return result


class _QuietWorkerDeaths(logging.Filter):
    """Drops the engine's "run is terminating due to exception" log lines for DataLoader workers that the stop
    signal killed too (sent to the whole process group): expected once stopping, and the stop is reported."""

    def __init__(self, stop: GracefulStop) -> None:
        super().__init__()
        self.stop = stop

    def filter(self, record: logging.LogRecord) -> bool:
        exc = sys.exc_info()[1]  # the engine logs inside its `except` block
        return not (self.stop.signum is not None and exc is not None and is_worker_death(exc))


def _resume(trainer: Engine, folder: str, objects: dict[str, Any], record: RunRecord, resume: bool,
            may_differ: Iterable[str], hint: str) -> str | None:
    """Load the newest good checkpoint of the run in `folder` when asked to; refuse to mix two runs."""
    names = [n for n in os.listdir(folder) if n.endswith(".pt") and not n.startswith(".")] \
        if os.path.isdir(folder) else []
    newest = newest_good(folder) if names else None
    saved = run_record(newest) if newest is not None else None
    if not resume:
        if names:
            owner = f" (run {saved['run_id']})" if saved else ""
            raise RunError(f"{folder} holds the checkpoints of another run{owner}; a new run needs a folder of its "
                           f"own (or {hint} to continue that one)", setting="checkpoint_dir")
        return None
    if saved is not None:
        bad = differing(saved["config"], record.config, may_differ)
        if bad:
            key, old, new = bad[0]
            raise RunError(f"{key}={new!r} differs from the run being resumed in {folder}, which has {key}={old!r}; "
                           "keep its value or start a new run", setting=key)
        record.run_id = saved["run_id"]
        objects = {**objects, RUN_KEY: RunRecord(record.run_id)}
    # With files but none good, resume_latest raises, listing each file's problem.
    path = Checkpoint.resume_latest(folder, objects) if names else None
    if path is None:
        _say(f"No checkpoint in {folder}: starting from the beginning.")
        return None
    s = trainer.state
    _say(f"Resumed from {path} at epoch {epoch_of(s)}, iteration {s.iteration}.")
    return path
