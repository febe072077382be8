"""Checkpoint: when and what to save (model, optimizer, engine, RNG...), with keep-last/best-k.

The policy half: the events that save, what goes into a file, the score it records and the refusals to save
a non-finite state. Where and how files are written, named, found and kept is `ember.checkpoint.folder`;
loading them all-or-nothing is `ember.checkpoint.restore`.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ember import distributed as dist
from ember.callbacks._monitor import Mode, Monitor, Score
from ember.callbacks._output import float_leaves
from ember.callbacks.evaluate import EvalEvents
from ember.callbacks.terminate_on_nan import pending_non_finite
from ember.checkpoint import folder as files
from ember.checkpoint import restore, sharded
from ember.checkpoint.async_writer import AsyncWriter, HostSnapshot
from ember.checkpoint.finite import modules_non_finite
from ember.checkpoint.folder import CheckpointFolder
from ember.checkpoint.format import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    CorruptCheckpointError,
    listed,
    make_payload,
)
from ember.checkpoint.handler_states import implicit_objects
from ember.engine import Engine, Events, exception_observer
from ember.engine import order as order_levels
from ember.utils import checks
from ember.utils.atomic import TMP_PREFIX, remove_stale_temp_files
from ember.utils.rng import get_rng_state

__all__ = ["FORMAT", "FORMAT_VERSION", "TMP_PREFIX", "Checkpoint", "CheckpointError", "CorruptCheckpointError"]

ScoreFn = Callable[[Engine], Any]


class Checkpoint:
    """Saves `objects` (anything with state_dict/load_state_dict) every n epochs/iterations and at COMPLETED.

    Files are written atomically (temp file, fsync, rename), checked to load with `torch.load(weights_only=True)`,
    and named `<prefix>_<iteration:09d>.pt`; the best `keep_best` by `monitor` also as
    `best_<prefix>_<iteration:09d>_score=<score>.pt` (written first, the regular name then linked to it). With
    an Evaluate on the engine, best files are made right after its evaluations (`EvalEvents.EVALUATED`), from
    the weights it evaluated, and a file records a score only for its own weights. The trainer Engine is added
    as "trainer" unless already among `objects`. Saves are refused (with one warning per run) while the step's
    loss or a model holds NaN/Inf or after TerminateOnNan stopped the run (`engine.state.terminated_on_nan`; a
    save makes it check the steps since its last look first), so the last good file survives. The trainer's fp16
    GradScaler (`engine.scaler`) is saved as "scaler" and restored by `load` when the trainer is among its objects.
    `save_on_exception=True` saves when the run raises after a finished step (a failing handler); an exception
    inside the step saves nothing, since the weights would not match the iteration count.
    `every_epochs` defaults to 1 unless `every_iterations` is given (pass both to save on both schedules);
    `keep_last=None` keeps every file. `sharded=True` (default: when a model is sharded by FSDP2) writes each
    checkpoint as a folder through torch.distributed.checkpoint, each rank its own shards, committed by a manifest
    (`ember.checkpoint.sharded`); every rank takes part in each save.
    With `save_handlers=True` the state of every stateful handler attached to the engine (EarlyStopping,
    schedulers, windows of printers and timers, Ignite's serializable handlers) is
    saved as "handlers" and restored on resume (`HandlerStates`). Its `ember_order` runs it after the handlers of the
    same event that compute what it saves or monitors, whenever they were attached.

    With `async_save=True` a save only copies what it would write into host memory (a snapshot, reused from
    save to save) and training goes on while a background thread writes the file exactly as a synchronous
    save does; `save` then returns None and `last_path` names the file once written (`wait()`). At most one
    save is in flight: the next one waits for it. A background write that fails raises its `CheckpointError`
    at the next iteration, as a synchronous save would have raised it in its own; the end of a run, a
    terminate and an exception wait for the save in flight. Sharded saves too: each rank snapshots its own
    shards and writes them in the background; the folder is committed (manifest last, then the rename) at the
    next save, at the run's end or in `wait()`, and a failed write raises there, on every rank. After an
    exception under torchrun the save in flight is not committed (the previous folder is kept).
    """

    ember_order = order_levels.CHECKPOINT

    def __init__(
        self,
        objects: Mapping[str, Any],
        dirname: str | os.PathLike[str],
        *,
        prefix: str = "checkpoint",
        every_epochs: int | None = None,
        every_iterations: int | None = None,
        keep_last: int | None = 1,
        save_on_completed: bool = True,
        monitor: str | ScoreFn | None = None,
        mode: Mode = "max",
        keep_best: int = 0,
        include_rng: bool = True,
        save_on_exception: bool = False,
        save_handlers: bool = True,
        sharded: bool | None = None,
        async_save: bool = False,
    ) -> None:
        if not isinstance(objects, Mapping) or not objects:
            raise TypeError("objects must be a non-empty dict of name -> object with state_dict/load_state_dict")
        for name, obj in objects.items():
            if not isinstance(name, str):
                raise TypeError(f"object names must be strings, got {name!r}")
            if not (callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))):
                raise TypeError(f"objects[{name!r}] ({type(obj).__name__}) has no state_dict()/load_state_dict()")
        if not prefix or prefix.startswith(".") or "/" in prefix or os.sep in prefix:
            raise ValueError(f"prefix must be a plain file-name part (no '/', not starting with '.'), got {prefix!r}")
        checks.positive_int("every_epochs", every_epochs, "a positive integer or None", optional=True)
        checks.positive_int("every_iterations", every_iterations, "a positive integer or None", optional=True)
        checks.non_negative_int("keep_last", keep_last, "None (keep all) or an integer >= 0", optional=True)
        checks.non_negative_int("keep_best", keep_best)
        if keep_best and monitor is None:
            raise ValueError("keep_best needs monitor=: a key of engine.state.metrics or a score_fn(engine)")
        if keep_last == 0 and not keep_best:
            raise ValueError("keep_last=0 with keep_best=0 would keep no checkpoint; raise one of them")
        checks.one_of("mode", mode, {"max": "", "min": ""})
        if every_epochs is None and every_iterations is None:
            every_epochs = 1
        self.objects: dict[str, Any] = dict(objects)
        self.dirname = os.fspath(dirname)
        self.prefix = prefix
        self.every_epochs = every_epochs
        self.every_iterations = every_iterations
        self.keep_last = keep_last
        self.save_on_completed = save_on_completed
        self.monitor = monitor
        self.mode = mode
        self.keep_best = keep_best
        self.include_rng = include_rng
        self.save_on_exception = save_on_exception
        self.save_handlers = save_handlers
        self.sharded = sharded if sharded is not None else any(dist.is_sharded(o) for o in self.objects.values())
        self.engine: Engine | None = None
        self.last_path: str | None = None
        self.folder = CheckpointFolder(self.dirname, prefix, keep_last=keep_last, keep_best=keep_best,
                                       rank=Monitor(mode).rank)
        self._step: int | None = None
        self._step_kinds: set[str] = set()  # what was written at iteration _step ("regular", "best")
        self._by_evaluation = False
        self._fresh_score: tuple[int, float | None] | None = None  # (iteration, score) of the last evaluation
        self._score = Score(monitor)
        self._warned_refusal = False  # refusals to save are reported once: one NaN would refuse them all
        self._started = False
        self._epoch_end_began_at: int | None = None  # the iteration of the epoch end now running, if any
        self._ended_at: int | None = None  # the iteration whose epoch end (through this handler's order) ran
        self._written_score: tuple[int, float | None] | None = None  # (iteration, score) of the last file
        self._before_end: dict[str, Any] | None = None  # the payload as the epoch end began (save_on_exception)
        self.async_save = async_save
        self._writer = AsyncWriter() if async_save else None
        self._snapshot = HostSnapshot()
        self._memory_reported = False
        # a sharded background save waiting for its commit: (temp folder, targets, manifest, regular, best)
        self._in_flight: tuple[str, list[str], dict[str, Any] | None, bool, bool] | None = None

    # ------------------------------------------------------------------ attaching
    def attach(self, engine: Engine) -> None:
        """Register the save handlers on `engine` and remove temp files left by killed processes."""
        if self.engine is not None and self.engine is not engine:
            raise RuntimeError("this Checkpoint is already attached to another engine; create one per engine")
        self.engine = engine
        if not any(obj is engine for obj in self.objects.values()):
            if "trainer" in self.objects:
                raise ValueError("objects['trainer'] is not the engine this Checkpoint is attached to")
            self.objects["trainer"] = engine
        if dist.is_main():
            self.folder.make()
            remove_stale_temp_files(self.dirname)
            if engine.state.iteration and not self.folder.adopted:  # resumed: files a kill kept from eviction
                self.folder.tidy(engine.state.iteration)
        self.objects.update(implicit_objects(engine, self.objects, handlers=self.save_handlers))
        engine.add_event_handler(Events.STARTED, self._on_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_end_began)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._on_epoch_end)
        if self._writer is not None and not self.sharded:  # before the saves of the same event: reported first
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._report_failed_write)
        if self.every_epochs is not None:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.every_epochs), self._on_event)
        if self.every_iterations is not None:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every_iterations), self._on_event)
        if self.save_on_completed:
            engine.add_event_handler(Events.COMPLETED, self._on_event)
        if self.save_on_exception:
            engine.add_event_handler(Events.EXCEPTION_RAISED, self._on_exception)
        if self._writer is not None:
            engine.add_event_handler(Events.COMPLETED, self._wait_at_end)
            if not self.save_on_exception:
                engine.add_event_handler(Events.EXCEPTION_RAISED, self._on_exception)
        if self.keep_best:
            engine.add_event_handler(Events.STARTED, self._find_evaluation)
            engine.add_event_handler(Events.COMPLETED, self._check_monitor_found)

    def _on_event(self, engine: Engine) -> None:
        self.save(engine)

    # ------------------------------------------------------------------ the end of an epoch
    # A file saved at an epoch's last iteration before the epoch's end ran (by every_iterations, a stop at
    # that iteration, or a handler raising in the epoch end) records `epoch_end_pending`, and loading it has the
    # trainer run that end first. When the end then runs here, the file is written again with it.
    def _on_started(self, engine: Engine) -> None:
        self._started = True
        if not getattr(engine.state, "epoch_end_pending", False):  # a fresh run, or one resumed after its epoch end
            self._ended_at = engine.state.iteration

    def _epoch_end_began(self, engine: Engine) -> None:
        """Note that the epoch's end runs; with save_on_exception, take the state as it is before it (the
        state_dicts: references to the tensors, copies of the counters, LRs and handler states), to save should
        one of its handlers raise before this handler's turn (not for sharded folders: their save needs every
        rank, which an exception does not promise)."""
        step = engine.state.iteration
        self._epoch_end_began_at = step
        self._before_end = None
        if self.save_on_exception and self.keep_last != 0 and not self.sharded and dist.is_main() \
                and self._refusal(engine) is None \
                and not (self._step == step and "regular" in self._step_kinds):
            self._before_end = self._payload(engine, step, None, None, epoch_end_pending=True)

    _epoch_end_began.ember_order = order_levels.FIRST  # type: ignore[attr-defined]

    def _on_epoch_end(self, engine: Engine) -> None:
        """The handlers of the epoch's end whose state a file holds have run: write this iteration's regular
        file again if it was written before them."""
        step = engine.state.iteration
        written_before = self._step == step and "regular" in self._step_kinds
        self._ended_at = step
        if written_before:
            self._step_kinds.discard("regular")
            self._write(engine, regular=True, best=False, barrier=True)

    def _pending_epoch_end(self, engine: Engine) -> bool:
        """Whether the trainer stands at an epoch's last iteration whose end has not run yet."""
        state = engine.state
        if not state.epoch_length or not state.iteration or state.iteration % state.epoch_length:
            return False
        if self._ended_at == state.iteration:
            return False
        return self._started or bool(getattr(state, "epoch_end_pending", False))

    @exception_observer
    def _on_exception(self, engine: Engine, exc: BaseException) -> None:
        try:
            failed_write = self._writer is not None and exc is self._writer.reported
            if self.save_on_exception and not failed_write:  # a failed write is not tried again
                self._save_after(engine, exc)
        finally:
            if self._writer is not None:
                try:
                    if self.sharded:
                        self._finish_after_exception(exc)
                    else:
                        self._writer.wait()
                except Exception as err:
                    warnings.warn(f"Checkpoint: the background save in flight failed: {err}", RuntimeWarning,
                                  stacklevel=2)

    def _save_after(self, engine: Engine, exc: BaseException) -> None:
        step = engine.state.iteration
        if self._epoch_end_began_at == step and self._ended_at != step:
            # Raised in the epoch's end before this handler's turn: some of its handlers ran, others did not.
            # The file written at this iteration before the end (if any), or the state taken as the end began,
            # resumes exactly (through that end); the state now would not.
            before, self._before_end = self._before_end, None
            if before is not None:
                try:
                    if self._writer is not None:
                        self._writer.wait()  # the folder's lists are the writer's until then
                    self._step, self._step_kinds = step, {"regular"}
                    self.folder.make()
                    if not self.folder.adopted:
                        self.folder.adopt(step)
                    self.last_path = self.folder.write(before, [self.folder.regular_path(step)], regular=True,
                                                       best=False)
                except Exception as err:
                    warnings.warn(f"could not save a checkpoint after {type(exc).__name__}: {err}", RuntimeWarning,
                                  stacklevel=2)
            elif not (self._step == step and "regular" in self._step_kinds):
                warnings.warn(
                    f"Checkpoint: NOT saving after {type(exc).__name__}: it was raised during the end of epoch "
                    f"{engine.state.epoch}, after some of its handlers ran. The last checkpoint "
                    f"({self.last_path or 'none yet'}) is kept untouched",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return
        if engine.state.output is None:
            # The engine clears the output after fetching a batch and sets it when the step returns: the
            # exception came before this run's first step, or interrupted iteration `iteration` (maybe half-way
            # through the optimizer step), where the model does not match the counter.
            if engine.state.iteration:
                warnings.warn(
                    f"Checkpoint: NOT saving after {type(exc).__name__}: it was raised in iteration "
                    f"{engine.state.iteration} before its step finished, so the weights would not match the "
                    f"iteration count. The last checkpoint ({self.last_path or 'none yet'}) is kept untouched",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return
        try:
            self.save(engine, barrier=False)
        except Exception as err:
            warnings.warn(
                f"could not save a checkpoint after {type(exc).__name__}: {err}", RuntimeWarning, stacklevel=2
            )

    # ------------------------------------------------------------------ saving in the background
    def wait(self) -> str | None:
        """Wait for the background save in flight (async_save) and return `last_path`; raises its
        CheckpointError if it failed. A no-op returning `last_path` for synchronous saves."""
        if self.sharded:
            self._finish_sharded()
        elif self._writer is not None:
            self._writer.wait()
        return self.last_path

    def _report_failed_write(self, engine: Engine) -> None:
        """At each iteration: a background write that failed stops the run as a failed synchronous save does."""
        self._writer.raise_failure()  # type: ignore[union-attr]

    def _wait_at_end(self, engine: Engine) -> None:
        self.wait()

    def _written(self, path: str) -> None:
        self.last_path = path

    def _submit(self, payload: dict[str, Any], write: Callable[[dict[str, Any]], Any],
                done: Callable[[Any], None] | None = None) -> dict[str, Any]:
        """Copy `payload` into the host snapshot and hand it to the background writer (`done(result)` after a
        write that succeeded; default: `last_path` names the file written). Returns the snapshot."""
        snapshot = self._snapshot.take(payload)
        if not self._memory_reported:
            self._memory_reported = True
            pinned = " (pinned)" if self._snapshot.pinned else ""
            print(f"Checkpoint: asynchronous saves hold a snapshot of {self._snapshot.nbytes / 2**20:,.1f} MiB in "
                  f"host memory{pinned}, reused by every save", file=sys.stderr, flush=True)

        def write_snapshot(state: dict[str, Any]) -> str:
            self._snapshot.ready()
            return write(state)

        self._writer.submit(snapshot, write_snapshot, done or self._written)  # type: ignore[union-attr]
        return snapshot

    # A sharded save in the background: the step that saves snapshots this rank's shards (and, on rank 0, the
    # manifest) into host memory and starts DCP's write of the shards into the save's temp folder, its
    # collectives on a group of their own. The commit (every rank's files checksummed, the manifest written
    # last, the rename) needs every rank's write finished: it runs at the start of the next save, at the end of
    # the run (COMPLETED, after a terminate too) or in `wait()`, points that every rank reaches together. Until
    # then the folder is a temp one, so a kill at any moment leaves the previous committed folder.
    def _submit_sharded(self, state: dict[str, Any], manifest: dict[str, Any] | None, targets: list[str], *,
                        regular: bool, best: bool) -> None:
        group = dist.background_group()
        tmp = sharded.begin(targets[0])

        def write(snapshot: dict[str, Any]) -> None:
            sharded.write_shards(tmp, targets[0], snapshot["state"], group)

        snapshot = self._submit({"state": state, "manifest": manifest}, write, done=lambda _: None)
        self._in_flight = (tmp, targets, snapshot["manifest"], regular, best)

    def _finish_sharded(self) -> None:
        """Wait for this rank's background sharded write and commit it (a collective call); CheckpointError on
        every rank when the write failed on any (its temp folder is removed)."""
        pending, self._in_flight = self._in_flight, None
        if pending is None:
            return
        tmp, targets, manifest, regular, best = pending
        problem = None
        try:
            self._writer.wait()  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - agreed among the ranks, then raised on each
            problem = str(exc) if isinstance(exc, CheckpointError) else (
                f"could not write the sharded checkpoint {targets[0]}: {exc}; earlier checkpoints are untouched")
        problem = sharded.agreed(problem)
        if problem:
            sharded.discard(tmp)
            raise CheckpointError(problem)
        sharded.commit(tmp, targets[0], manifest)
        self.last_path = self.folder.record_sharded(manifest, targets, regular=regular, best=best)

    def _finish_after_exception(self, exc: BaseException) -> None:
        """After an exception the other ranks may not reach a commit: alone, commit the save in flight; under
        torchrun, wait for this rank's write and leave the folder uncommitted (the next start removes it)."""
        if dist.world_size() == 1:
            self._finish_sharded()
            return
        pending, self._in_flight = self._in_flight, None
        self._writer.wait()  # type: ignore[union-attr]
        if pending is not None and dist.is_main():
            warnings.warn(f"Checkpoint: NOT committing the background save {pending[1][-1]} after "
                          f"{type(exc).__name__}: a sharded commit needs every rank. The last checkpoint "
                          f"({self.last_path or 'none yet'}) is kept untouched", RuntimeWarning, stacklevel=3)

    # ------------------------------------------------------------------ saving
    def save(self, engine: Engine | None = None, *, barrier: bool = True) -> str | None:
        """Save now (rank 0 only; other ranks wait); returns the path written, or None if nothing was written
        (always None with async_save: the write is under way; `wait()` returns the path once it is written).

        With an Evaluate attached, best files are made after its evaluations instead (see the class doc)."""
        engine = engine if engine is not None else self.engine
        if engine is None:
            raise RuntimeError("attach the Checkpoint to an engine (engine.add(checkpoint)) or pass engine=")
        return self._write(engine, regular=self.keep_last != 0, best=not self._by_evaluation, barrier=barrier)

    def _on_evaluated(self, engine: Engine) -> None:
        """Right after an evaluation: the score describes the current weights, so a best file may be made."""
        self._fresh_score = (engine.state.iteration, self._score.read(engine, evaluated=True))
        self._write(engine, regular=False, best=True, barrier=True)

    def _write(self, engine: Engine, *, regular: bool, best: bool, barrier: bool) -> str | None:
        step = engine.state.iteration
        if step != self._step:
            self._step, self._step_kinds = step, set()
        kinds = {kind for kind, wanted in (("regular", regular), ("best", best)) if wanted} - self._step_kinds
        if not kinds:
            return None
        self._step_kinds |= kinds
        if self.sharded:
            return self._write_sharded(engine, step, kinds, barrier)
        try:
            if barrier:  # TerminateOnNan looks at the steps since its last check (collective under torchrun)
                pending_non_finite(engine)
            rng_ranks = None  # every rank's generators, so each resumes its own stream (a collective call)
            if self.include_rng and barrier and dist.is_enabled():
                rng_ranks = dist.gather_object(get_rng_state())
            if dist.is_main():
                return self._save(engine, step, kinds, rng_ranks)
            return None
        finally:
            if barrier and dist.is_enabled():
                dist.barrier()

    def _save(
        self, engine: Engine, step: int, kinds: set[str], rng_ranks: list[dict[str, Any]] | None = None
    ) -> str | None:
        why = self._refusal(engine)
        if why:
            if not self._warned_refusal:
                self._warned_refusal = True
                # after TerminateOnNan's stop, "iteration N" alone would read as if training had gone on
                what = (f"the stopped run (iteration {step})" if getattr(engine.state, "terminated_on_nan", None)
                        else f"iteration {step} (epoch {engine.state.epoch})")
                warnings.warn(
                    f"Checkpoint: NOT saving {what}: {why}. The last good checkpoint "
                    f"({self.last_path or 'none yet'}) is kept untouched; later refusals are not reported",
                    RuntimeWarning, stacklevel=4,
                )
            return None
        if kinds == {"regular"} and self._written_score is not None and self._written_score[0] == step:
            score = self._written_score[1]  # written again after the epoch's end: the same weights, the same score
        elif self._by_evaluation:
            fresh = self._fresh_score is not None and self._fresh_score[0] == step
            score = self._fresh_score[1] if fresh else None  # a score of other weights is not recorded
        else:
            score = self._score.read(engine)
        if self._writer is not None:
            self._writer.wait()  # one save in flight at most; the folder's lists are the writer's until then
        folder = self.folder
        folder.make()
        if not folder.adopted:
            folder.adopt(step)
        best = "best" in kinds and folder.qualifies(score)
        targets = [folder.best_path(step, score)] if best and score is not None else []
        if "regular" in kinds:
            targets.append(folder.regular_path(step))
        if not targets:
            return None
        payload = self._payload(engine, step, score, rng_ranks, epoch_end_pending=self._pending_epoch_end(engine))
        self._written_score = (step, score)
        if self._writer is not None:
            self._submit(payload, lambda state: folder.write(state, targets, regular="regular" in kinds, best=best))
            return None
        self.last_path = folder.write(payload, targets, regular="regular" in kinds, best=best)
        return self.last_path

    def _write_sharded(self, engine: Engine, step: int, kinds: set[str], barrier: bool) -> str | None:
        """A sharded save: every rank writes its shards; rank 0 decides the names and writes the manifest."""
        if not barrier and dist.world_size() > 1:
            # After an exception the other ranks may not reach this save, and it needs them all.
            warnings.warn(f"Checkpoint: NOT saving iteration {step} after an exception: a sharded save needs every "
                          f"rank. The last checkpoint ({self.last_path or 'none yet'}) is kept untouched",
                          RuntimeWarning, stacklevel=4)
            return None
        if self._writer is not None:
            self._finish_sharded()  # one save in flight at most; its books are needed for this one's names
        if barrier:
            pending_non_finite(engine)
        why = sharded.agreed(self._refusal(engine))
        if why:
            if not self._warned_refusal and dist.is_main():
                warnings.warn(
                    f"Checkpoint: NOT saving iteration {step} (epoch {engine.state.epoch}): {why}. The last good "
                    f"checkpoint ({self.last_path or 'none yet'}) is kept untouched; later refusals are not reported",
                    RuntimeWarning, stacklevel=4,
                )
            self._warned_refusal = True
            return None
        rng_ranks = dist.gather_object(get_rng_state()) if self.include_rng and dist.is_enabled() else None
        plan = self._sharded_plan(engine, step, kinds, rng_ranks) if dist.is_main() else None
        targets, best = dist.broadcast_object((plan[0], plan[2]) if plan else None)  # type: ignore[misc]
        if not targets:
            return None
        payload = plan[1] if plan else None
        state = sharded.sharded_state(self.objects)
        if self._writer is not None:
            self._submit_sharded(state, payload, targets, regular="regular" in kinds, best=best)
            return None
        self.last_path = self.folder.write_sharded(state, payload, targets, regular="regular" in kinds, best=best)
        return self.last_path

    def _sharded_plan(self, engine: Engine, step: int, kinds: set[str],
                      rng_ranks: list[dict[str, Any]] | None) -> tuple[list[str], dict[str, Any], bool]:
        """Rank 0's part of a sharded save: the folders' names and the manifest's payload."""
        if self._by_evaluation:
            fresh = self._fresh_score is not None and self._fresh_score[0] == step
            score = self._fresh_score[1] if fresh else None
        else:
            score = self._score.read(engine)
        folder = self.folder
        folder.make()
        if not folder.adopted:
            folder.adopt(step)
        best = "best" in kinds and folder.qualifies(score)
        targets = [folder.best_path(step, score, sharded.SUFFIX)] if best and score is not None else []
        if "regular" in kinds:
            targets.append(folder.regular_path(step, sharded.SUFFIX))
        in_dcp = set(sharded.sharded_names(self.objects))
        payload = make_payload(
            step=step, epoch=engine.state.epoch, score=score,
            monitor=self.monitor if isinstance(self.monitor, str) else None,
            objects={name: self._state_of(obj) for name, obj in self.objects.items() if name not in in_dcp},
            rng=get_rng_state() if self.include_rng else None, rng_ranks=rng_ranks,
            epoch_end_pending=self._pending_epoch_end(engine),
        )
        payload["mesh"] = sharded.mesh_of(self.objects)
        return targets, payload, best

    def _payload(self, engine: Engine, step: int, score: float | None, rng_ranks: list[dict[str, Any]] | None, *,
                 epoch_end_pending: bool) -> dict[str, Any]:
        return make_payload(
            step=step, epoch=engine.state.epoch, score=score,
            monitor=self.monitor if isinstance(self.monitor, str) else None,
            objects={name: self._state_of(obj) for name, obj in self.objects.items()},
            rng=get_rng_state() if self.include_rng else None, rng_ranks=rng_ranks,
            epoch_end_pending=epoch_end_pending,
        )

    def _refusal(self, engine: Engine) -> str | None:
        """Why this state must not be saved (a non-finite loss or weights), or None."""
        nan_at = getattr(engine.state, "terminated_on_nan", None)  # an Ignite engine's State does not declare it
        if nan_at is not None:
            return f"TerminateOnNan found a non-finite value at epoch {nan_at[0]}, iteration {nan_at[1]}"
        leaves = float_leaves(engine.state.output)
        if any(not bool(torch.isfinite(torch.as_tensor(x)).all()) for x in leaves):
            return f"the output of iteration {engine.state.iteration} (the loss) is not finite"
        bad = modules_non_finite(self.objects)
        return f"{listed(bad)} contain NaN or Inf" if bad else None

    def _find_evaluation(self, engine: Engine) -> None:
        """With an Evaluate on this engine, make best files right after its evaluations, from the weights it
        evaluated, rather than at saves where the score may be older than the weights."""
        if self._by_evaluation or not engine.has_registered_events(EvalEvents.EVALUATED):
            return
        self._by_evaluation = True
        engine.add_event_handler(EvalEvents.EVALUATED, self._on_evaluated)

    def _check_monitor_found(self, engine: Engine) -> None:
        self._score.warn_if_never_found(engine)

    @staticmethod
    def _state_of(obj: Any) -> Any:
        return dist.unwrap(obj).state_dict() if isinstance(obj, nn.Module) else obj.state_dict()

    # ------------------------------------------------------------------ loading (storage: documented there)
    load = staticmethod(restore.load)
    latest = staticmethod(files.latest)
    resume_latest = staticmethod(restore.resume_latest)
