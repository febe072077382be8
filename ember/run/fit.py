"""`ember.fit`: what a serious run wants around a trainer, in one call that a plain script can make.

Checkpoints in a folder of the run's own, exact resume of *this* run, a NaN guard, TensorBoard, a progress bar
and a graceful stop on SIGTERM/SIGINT/SIGHUP/SIGUSR1. `ember train` is a user of it (`RunContext.fit`).
`fit` is the outline of a run; each of its steps is a function below: place the folder, resume, wire the
handlers, run, report.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ember import distributed as dist
from ember.callbacks import Checkpoint, ProgressBar, TensorBoardLogger, TerminateOnNan
from ember.callbacks.graceful_stop import GracefulStop, is_worker_death
from ember.checkpoint.format import CheckpointError, CorruptCheckpointError
from ember.engine import Engine, Events
from ember.run.folder import RunFolder, place
from ember.run.record import MAY_DIFFER, RUN_KEY, RunError, RunRecord, RunResult, epoch_of, finished


def fit(
    trainer: Engine, data: Iterable, *, max_epochs: int, objects: Mapping[str, Any] | None = None,
    checkpoint_dir: str | os.PathLike[str] | RunFolder | None = None, resume: bool = False,
    config: Mapping[str, Any] | None = None, may_differ: Iterable[str] = MAY_DIFFER, run_id: str | None = None,
    checkpoint_every: int | None = None, keep_last: int = 2, async_checkpoint: bool = False,
    tensorboard: str | os.PathLike[str] | TensorBoardLogger | None = None, hparams: Mapping[str, Any] | None = None,
    progress: bool | None = None, progress_per: Literal["epoch", "run"] = "epoch", nan_guard: bool = True,
    max_iterations: int | None = None, output_transform: Callable[[Any], Any] | None = None,
    resume_hint: str = "resume=True", show_plan: bool = False, sharded: bool | None = None,
) -> RunResult:
    """Run `trainer` over `data` with checkpoints, resume, NaN guard, TensorBoard, progress and graceful stop.

    A run places its folder (locked for the run: a second run on it is refused), resumes, wires its handlers,
    runs and reports. Its mistakes (another run's folder, a setting that differs on resume, a model that does
    not match the checkpoint, another run's TensorBoard folder) raise `RunError` in one line, before any training.

    Args:
        trainer: the training engine (its state is saved as "trainer").
        data: the training batches.
        max_epochs: epochs the run trains in all; on resume, as many as done already leave it untouched.
        objects: what to checkpoint besides the trainer (model, optimizer, scheduler...).
        checkpoint_dir: the run's own folder, or a `RunFolder` already opened (None: a new `checkpoints/<run-id>`);
            it must not hold another run's checkpoints unless `resume`.
        resume: continue exactly from the newest good checkpoint in `checkpoint_dir` (mid-epoch included; a
            missing or empty folder starts a new run). A torchelastic restart of the job always resumes: with
            no `checkpoint_dir`, it continues the folder the job's first start made.
        config: the run's settings (plain values, e.g. `vars(args)`), saved in its checkpoints, compared on resume.
        may_differ: the keys of `config` a resumed run may change (`max_epochs` always may).
        run_id: the id of a new run (default: the folder's name); a resumed run keeps its saved id.
        checkpoint_every: also save every this many iterations (always at each epoch's end and at the end).
        keep_last: checkpoint files to keep.
        async_checkpoint: save in the background (`Checkpoint(async_save=True)`): a save copies the state into
            host memory and training goes on while a thread writes it; a stop waits for the save in flight.
        tensorboard: the run's TensorBoard folder or a `TensorBoardLogger` for it (None: none); a resumed run
            continues it, a new run refuses one holding events. Hparams are written when the run finishes.
        hparams: the hyperparameters for TensorBoard's HParams dashboard (with a folder `tensorboard`).
        progress: a progress bar (None: only in a terminal).
        progress_per: the bar's span, "epoch" or "run".
        nan_guard: stop on a NaN/Inf loss (exit status 1), keeping the last good checkpoint.
        max_iterations: stop (and save) after this iteration, counted over the whole run (as many as done: nothing).
        output_transform: picks the loss out of the trainer's output for TensorBoard and the bar.
        resume_hint: how the messages tell the user to continue a run ("--resume" in `ember train`).
        show_plan: print the trainer's plan (`Engine.describe`) once every handler is attached, before training.
        sharded: write sharded checkpoint folders, every rank its shards (`Checkpoint(sharded=)`; None: when
            the model is FSDP2's). A resume loads either kind, resharded to this run's processes.

    Returns:
        A `RunResult`; `exit_status` is 0 (finished, or nothing to do), 1 (NaN/Inf loss) or 128 + the signal.
    """
    run = checkpoint_dir if isinstance(checkpoint_dir, RunFolder) else place(checkpoint_dir, run_id=run_id)
    resume = resume or dist.elastic_restart_count() > 0  # torchelastic restarted the group: continue the run
    try:
        objects = {**(objects or {}), "trainer": trainer}
        record = RunRecord(run.run_id, {**(config or {}), "max_epochs": max_epochs})
        resumed = _resume(trainer, run, objects, record, resume, {*may_differ, "max_epochs"}, resume_hint)
        logdir = tensorboard.logdir if isinstance(tensorboard, TensorBoardLogger) else (
            os.fspath(tensorboard) if tensorboard else None)
        enough = _check_start(trainer, data, run.path, resumed, logdir, max_epochs, max_iterations)
        if enough:
            return RunResult(0, enough == "epochs" or finished(trainer.state),
                             "max_iterations" if enough == "max_iterations" else None, record.run_id, run.path,
                             logdir, resumed)
        objects[RUN_KEY] = record
        _say(_where(record.run_id, run.path, logdir), err=True)
        wiring = _wire(trainer, objects, run.path, checkpoint_every=checkpoint_every, keep_last=keep_last,
                       async_checkpoint=async_checkpoint, nan_guard=nan_guard, tensorboard=tensorboard,
                       logdir=logdir, hparams=hparams, progress=progress, progress_per=progress_per,
                       max_iterations=max_iterations, output_transform=output_transform, sharded=sharded)
        if show_plan:
            _say(trainer.describe())
        _run(trainer, data, max_epochs, wiring.stop)
        return _report(trainer.state, wiring, run, record.run_id, logdir, resumed, max_iterations, resume_hint)
    finally:
        if run is not checkpoint_dir:
            run.close()


def _check_start(trainer: Engine, data: Iterable, folder: str, resumed: str | None, logdir: str | None,
                 max_epochs: int, max_iterations: int | None) -> str | None:
    """Before wiring: a resumed run's data must fit its checkpoint, and it may have nothing to do (returned:
    "epochs" or "max_iterations"); a new run must not log into another run's TensorBoard folder."""
    if resumed:
        _check_resumed(trainer, data, folder)
        return _nothing_to_do(trainer.state, folder, max_epochs, max_iterations)
    if logdir and _holds_events(logdir):
        raise RunError(f"tensorboard={logdir!r} already holds the TensorBoard events of another run; a new run "
                       "needs a folder of its own (its events would be purged)", setting="logdir")
    return None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _say(line: str, *, err: bool = False) -> None:
    if dist.is_main():
        print(line, file=sys.stderr if err else sys.stdout, flush=True)


def _where(run_id: str, folder: str, logdir: str | None) -> str:
    """Where the run's checkpoints and logs go: two short lines with TensorBoard, not one of two paths."""
    if not logdir:
        return f"ember: run {run_id}: checkpoints go to {folder}, no TensorBoard logs"
    parent = os.path.dirname(os.path.normpath(logdir)) or logdir
    return (f"ember: run {run_id}: checkpoints go to {folder}\n"
            f"ember: TensorBoard logs go to {logdir} (view them: ember board {parent})")


def _holds_events(logdir: str) -> bool:
    """Whether `logdir` (or its train/val folders) holds TensorBoard event files already."""
    for folder in (logdir, os.path.join(logdir, "train"), os.path.join(logdir, "val")):
        if os.path.isdir(folder) and any(n.startswith("events.out.tfevents") for n in os.listdir(folder)):
            return True
    return False


def _resume(trainer: Engine, run: RunFolder, objects: dict[str, Any], record: RunRecord, resume: bool,
            may_differ: Iterable[str], hint: str) -> str | None:
    """Load the checkpoint `run` chose when asked to (its path, or None); refuse to mix two runs."""
    if not resume:
        if run.holds_checkpoints:
            owner = f" (run {run.record['run_id']})" if run.record else ""
            raise RunError(f"{run.path} holds the checkpoints of another run{owner}; a new run needs a folder of its "
                           f"own (or {hint} to continue that one)", setting="checkpoint_dir")
        return None
    bad = run.compare(record.config, may_differ)
    if bad:
        key, old, new = bad[0]
        raise RunError(f"{key}={new!r} differs from the run being resumed in {run.path}, which has {key}={old!r}; "
                       "keep its value or start a new run", setting=key)
    if run.record is not None:
        record.run_id = run.run_id
        objects = {**objects, RUN_KEY: RunRecord(record.run_id)}
    try:
        path = run.restore(objects)  # with files but none good, this raises, listing each file's problem
    except CheckpointError as exc:
        if isinstance(exc, CorruptCheckpointError) or "strict=False" not in str(exc):
            raise
        text = " ".join(str(exc).split()).replace("Pass strict=False to load only what matches.", "").rstrip()
        raise RunError(f"{text} Was it written by another model? Resume a run of this model, or start a new run "
                       f"without {hint}", setting="checkpoint_dir") from None
    if path is None:
        _say(f"No checkpoint in {run.path}: starting from the beginning.")
        return None
    s = trainer.state
    _say(f"Resumed from {path} at epoch {epoch_of(s)}, iteration {s.iteration}.")
    return path


def _check_resumed(trainer: Engine, data: Iterable, folder: str) -> None:
    """Refuse data of another epoch length than the checkpoint's; warn where the resume cannot be exact."""
    state = trainer.state
    length = len(data) if hasattr(data, "__len__") else None
    if length is not None and state.epoch_length not in (None, length):
        raise RunError(
            f"the checkpoint in {folder} has {state.epoch_length} iterations per epoch but this run has "
            f"{length}: resume with the same batch size per process and the same number of processes"
        )
    if isinstance(data, torch.utils.data.DataLoader) and data.generator is None:
        warnings.warn("resuming over a DataLoader without generator=: each iter() draws its seed from the global "
                      "RNG, so Dropout and other random draws will not repeat the uninterrupted run's; pass "
                      "DataLoader(..., generator=torch.Generator().manual_seed(seed))", RuntimeWarning, stacklevel=4)


def _nothing_to_do(state: Any, folder: str, max_epochs: int, max_iterations: int | None) -> str | None:
    """When the resumed run has done as many iterations or epochs as asked for, say so and return which
    ("max_iterations" or "epochs"); else None."""
    if max_iterations is not None and state.iteration >= max_iterations:
        _say(f"Nothing to do: the run in {folder} is already at iteration {state.iteration}, not before the "
             f"max_iterations {max_iterations} asked for; nothing was changed.")
        return "max_iterations"
    if state.epoch_length and state.iteration >= state.epoch_length * max_epochs \
            and not getattr(state, "epoch_end_pending", False):  # a last epoch whose end did not run: run that end
        done, extra = divmod(state.iteration, state.epoch_length)
        part = f" and {_plural(extra, 'iteration')} of epoch {done + 1}" if extra else ""
        _say(f"Nothing to do: the run in {folder} already finished {_plural(done, 'epoch')}{part} (iteration "
             f"{state.iteration}), not fewer than the {_plural(max_epochs, 'epoch')} asked for; nothing was changed.")
        return "epochs"
    return None


@dataclass
class _Wiring:
    """The handlers `fit` added that its report reads."""

    stop: GracefulStop
    saver: Checkpoint


def _wire(trainer: Engine, objects: dict[str, Any], folder: str, *, checkpoint_every: int | None, keep_last: int,
          async_checkpoint: bool, nan_guard: bool, tensorboard: str | os.PathLike[str] | TensorBoardLogger | None,
          logdir: str | None, hparams: Mapping[str, Any] | None, progress: bool | None,
          progress_per: Literal["epoch", "run"], max_iterations: int | None,
          output_transform: Callable[[Any], Any] | None, sharded: bool | None) -> _Wiring:
    """Attach the NaN guard, the checkpoints, TensorBoard, the progress bar, max_iterations and the stop."""
    if nan_guard:
        trainer.add(TerminateOnNan())
    saver = trainer.add(Checkpoint(objects, folder, every_epochs=1, every_iterations=checkpoint_every,
                                   keep_last=keep_last, save_on_exception=True, async_save=async_checkpoint,
                                   sharded=sharded))
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
    stop = trainer.add(GracefulStop())
    if logger is not None:  # a run stopped to be resumed writes its hparams when it finishes
        logger.hparams_if = lambda e: stop.signum is None and (max_iterations is None or finished(e.state))
    return _Wiring(stop, saver)


def _run(trainer: Engine, data: Iterable, max_epochs: int, stop: GracefulStop) -> None:
    """`trainer.run` with the stop signals installed; DataLoader workers killed by the same signal are quiet."""
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


def _report(state: Any, wiring: _Wiring, run: RunFolder, run_id: str, logdir: str | None, resumed: str | None,
            max_iterations: int | None, hint: str) -> RunResult:
    """Say how the run ended (a stop, a NaN, max_iterations) and build its `RunResult`."""
    stop, folder = wiring.stop, run.path
    done = finished(state)
    reason, status = stop.reason, 0
    if stop.signum is not None and done:
        _say(f"{stop.reason} arrived after the last iteration: the run had finished; its checkpoint is in {folder}.")
    elif stop.signum is not None:
        if wiring.saver.last_path is not None:
            saved = f"checkpoint saved in {folder} (continue with {hint})"
        elif resumed:
            saved = f"no new iteration had finished; {resumed} is kept (continue with {hint})"
        else:
            saved = "no iteration had finished, so there was nothing to save"
        _say(f"Stopped by {stop.reason} at epoch {epoch_of(state)}, iteration {state.iteration}; {saved}.")
        status = stop.exit_status
    elif state.terminated_on_nan is not None:
        reason, status, done = "nan", 1, False
    elif not done:
        reason = "terminated"
        if max_iterations is not None and state.iteration == max_iterations:
            reason = "max_iterations"
            _say(f"Stopped after iteration {state.iteration} (max_iterations {max_iterations}) in epoch "
                 f"{epoch_of(state)}; checkpoint saved in {folder} (continue with {hint}).")
    return RunResult(status, done, reason, run_id, folder, logdir, resumed)


class _QuietWorkerDeaths(logging.Filter):
    """Drops the engine's "run is terminating due to exception" log lines for DataLoader workers that the stop
    signal killed too (sent to the whole process group): expected once stopping, and the stop is reported."""

    def __init__(self, stop: GracefulStop) -> None:
        super().__init__()
        self.stop = stop

    def filter(self, record: logging.LogRecord) -> bool:
        exc = sys.exc_info()[1]  # the engine logs inside its `except` block
        return not (self.stop.signum is not None and exc is not None and is_worker_death(exc))
