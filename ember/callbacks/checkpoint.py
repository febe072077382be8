"""Checkpoint: atomic, verified saves of training state (model, optimizer, engine, RNG...) with keep-last/best-k."""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import re
import secrets
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ember import distributed as dist
from ember._files import disk_full, pid_alive
from ember.callbacks.evaluate import EvalEvents
from ember.callbacks.nan import all_finite, float_leaves, pending_non_finite
from ember.callbacks.rng import get_rng_state
from ember.checkpoint import restore
from ember.checkpoint.format import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    CorruptCheckpointError,
    RecordingFile,
)
from ember.checkpoint.format import read as _read
from ember.checkpoint.handler_states import HandlerStates
from ember.checkpoint.restore import listed as _listed
from ember.engine import Engine, Events, exception_observer
from ember.engine import order as order_levels

__all__ = ["FORMAT", "FORMAT_VERSION", "TMP_PREFIX", "Checkpoint", "CheckpointError", "CorruptCheckpointError"]

TMP_PREFIX = ".tmp-"
_REGULAR_RE = re.compile(r"^(?P<prefix>.+)_(?P<step>\d{9,})\.pt$")
_BEST_RE = re.compile(r"^best_(?P<prefix>.+)_(?P<step>\d{9,})_score=(?P<score>.+)\.pt$")
_TMP_RE = re.compile(r"^\.tmp-(?P<name>.+)-(?P<pid>\d+)-(?P<rand>[0-9a-f]+)$")
_SAFE_LEAVES = (int, float, bool, str, bytes, complex, type(None), torch.dtype, torch.device)

ScoreFn = Callable[[Engine], Any]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _skipping(path: str, exc: BaseException | str, then: str = "") -> str:
    """One warning line for a checkpoint file that is passed over, saying why (without the error's advice)."""
    why = str(exc).replace(f"checkpoint file {path} ", "the file ", 1)
    for advice in (". Load an earlier checkpoint", "; delete it and load an earlier checkpoint"):
        why = why.removesuffix(advice)
    return f"skipping checkpoint {path}: {why}{then}"


def _find_unsafe(obj: Any, where: str) -> str | None:
    """Where in a payload the first value sits that `torch.load(weights_only=True)` would refuse."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            found = _find_unsafe(key, f"{where} key") or _find_unsafe(value, f"{where}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(obj, (list, tuple, set, frozenset)):
        for index, value in enumerate(obj):
            found = _find_unsafe(value, f"{where}[{index}]")
            if found:
                return found
        return None
    if isinstance(obj, torch.Tensor) or type(obj) in _SAFE_LEAVES:
        return None
    return f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}"


def _tmp_path(path: str) -> str:
    directory, name = os.path.split(path)
    return os.path.join(directory, f"{TMP_PREFIX}{name}-{os.getpid()}-{secrets.token_hex(4)}")


def _fsync_dir(dirname: str) -> None:
    """Make renames in `dirname` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(dirname, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _atomically(dst: str) -> Iterator[str]:
    """Yield a temp path in `dst`'s folder; once the block has written it whole, rename it over `dst` and fsync
    the folder. On any failure the temp file is removed and `dst` is left as it was."""
    tmp = _tmp_path(dst)
    try:
        yield tmp
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(os.path.dirname(dst))


def _atomic_save(payload: dict[str, Any], path: str) -> None:
    """Write to a temp file in the same folder, fsync, check it loads with weights_only, then rename over `path`."""
    with _atomically(path) as tmp:
        with RecordingFile(tmp, "xb") as f:
            try:
                torch.save(payload, f)
            except Exception:
                if f.error is not None:
                    raise f.error from None  # the cause torch.save hides ("unexpected pos"), e.g. a full disk
                raise
            os.fsync(f.fileno())
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.load(tmp, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as exc:
            where = _find_unsafe(payload, "checkpoint")
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            what = f"it contains {found.group(1)}" if found else _first_line(exc)
            raise CheckpointError(
                f"refusing to write {path}: it would not load with torch.load(weights_only=True): {what}"
                f"{f' ({where})' if where else ''}. Make state_dict() return tensors, numbers, strings and "
                "lists/dicts of them"
            ) from None


def _atomic_link(src: str, dst: str) -> None:
    """Give the complete file `src` a second name `dst` atomically (hard link, or a copy where links fail)."""
    with _atomically(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())


def _scan(dirname: str, prefix: str | None) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(step, path) of regular and of best checkpoint files in `dirname`, by file name; temp files are skipped."""
    regular: list[tuple[int, str]] = []
    best: list[tuple[int, str]] = []
    try:
        names = os.listdir(dirname)
    except FileNotFoundError:
        return regular, best
    for name in names:
        if name.startswith(TMP_PREFIX):
            continue
        match = _BEST_RE.match(name)
        kind = best
        if match is None:
            match = _REGULAR_RE.match(name)
            kind = regular
        if match is not None and (prefix is None or match.group("prefix") == prefix):
            kind.append((int(match.group("step")), os.path.join(dirname, name)))
    return regular, best


def _candidates(dirname: str, prefix: str | None) -> tuple[list[str], list[str]]:
    """Checkpoints in `dirname` whose metadata reads, newest first by the step recorded inside each file (a
    regular file before a best one of the same step), and the problems of the others, each skipped with a
    warning that names the file. The tensors' checksums are checked when a file is loaded or picked."""
    regular, best = _scan(os.fspath(dirname), prefix)
    found: list[tuple[int, bool, float, str]] = []
    problems: list[str] = []
    for is_regular, files in ((True, regular), (False, best)):
        for _, path in files:
            try:
                payload = _read(path, peek=True)
                found.append((int(payload["step"]), is_regular, os.path.getmtime(path), path))
                continue
            except CheckpointError as exc:
                problem = str(exc)
            except OSError as exc:
                problem = f"{path} cannot be read ({exc})"
            problems.append(problem)
            warnings.warn(_skipping(path, problem), RuntimeWarning, stacklevel=3)
    found.sort(reverse=True)
    return [path for *_, path in found], problems


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
    `keep_last=None` keeps every file. With `save_handlers=True` the state of every stateful handler attached to
    the engine (EarlyStopping, schedulers, windows of printers and timers, Ignite's serializable handlers) is
    saved as "handlers" and restored on resume (`HandlerStates`). Its `order` runs it after the handlers of the
    same event that compute what it saves or monitors, whenever they were attached.
    """

    order = order_levels.CHECKPOINT

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
        mode: str = "max",
        keep_best: int = 0,
        include_rng: bool = True,
        save_on_exception: bool = False,
        save_handlers: bool = True,
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
        for arg, value in (("every_epochs", every_epochs), ("every_iterations", every_iterations)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{arg} must be a positive integer or None, got {value!r}")
        if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 0):
            raise ValueError(f"keep_last must be None (keep all) or an integer >= 0, got {keep_last!r}")
        if not isinstance(keep_best, int) or keep_best < 0:
            raise ValueError(f"keep_best must be an integer >= 0, got {keep_best!r}")
        if keep_best and monitor is None:
            raise ValueError("keep_best needs monitor=: a key of engine.state.metrics or a score_fn(engine)")
        if keep_last == 0 and not keep_best:
            raise ValueError("keep_last=0 with keep_best=0 would keep no checkpoint; raise one of them")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
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
        self.engine: Engine | None = None
        self.last_path: str | None = None
        self._regular: list[tuple[int, str]] = []
        self._best: list[tuple[float, int, str]] = []
        self._adopted = False
        self._step: int | None = None
        self._step_kinds: set[str] = set()  # what was written at iteration _step ("regular", "best")
        self._by_evaluation = False
        self._fresh_score: tuple[int, float | None] | None = None  # (iteration, score) of the last evaluation
        self._monitor_found = False
        self._warned_monitor = False
        self._warned_refusal = False  # refusals to save are reported once: one NaN would refuse them all

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
            self._make_folder()
            self._remove_stray_temp_files()
        scaler = getattr(engine, "scaler", None)
        if isinstance(scaler, torch.amp.GradScaler) and not any(obj is scaler for obj in self.objects.values()):
            self.objects["scaler" if "scaler" not in self.objects else "trainer_scaler"] = scaler
        if self.save_handlers and "handlers" not in self.objects:
            self.objects["handlers"] = HandlerStates(engine, exclude=list(self.objects.values()))
        if self.every_epochs is not None:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.every_epochs), self._on_event)
        if self.every_iterations is not None:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every_iterations), self._on_event)
        if self.save_on_completed:
            engine.add_event_handler(Events.COMPLETED, self._on_event)
        if self.save_on_exception:
            engine.add_event_handler(Events.EXCEPTION_RAISED, self._on_exception)
        if self.keep_best:
            engine.add_event_handler(Events.STARTED, self._find_evaluation)
            engine.add_event_handler(Events.COMPLETED, self._check_monitor_found)

    def _make_folder(self) -> None:
        try:
            os.makedirs(self.dirname, exist_ok=True)
        except OSError as exc:
            if os.path.exists(self.dirname) and not os.path.isdir(self.dirname):
                why = "it is a file, not a folder"
            else:
                why = f"{exc.strerror or exc} ({exc.filename or self.dirname})"
            raise CheckpointError(
                f"cannot use {self.dirname} as the checkpoint folder: {why}; choose a folder that can be created "
                "and written"
            ) from None

    def _remove_stray_temp_files(self) -> None:
        for name in os.listdir(self.dirname):
            match = _TMP_RE.match(name)
            if match is None:
                continue
            pid = int(match.group("pid"))
            if pid != os.getpid() and pid_alive(pid):
                continue  # another live process may be writing it right now
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.dirname, name))

    def _on_event(self, engine: Engine) -> None:
        self.save(engine)

    @exception_observer
    def _on_exception(self, engine: Engine, exc: BaseException) -> None:
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

    # ------------------------------------------------------------------ saving
    def save(self, engine: Engine | None = None, *, barrier: bool = True) -> str | None:
        """Save now (rank 0 only; other ranks wait); returns the path written, or None if nothing was written.

        With an Evaluate attached, best files are made after its evaluations instead (see the class doc)."""
        engine = engine if engine is not None else self.engine
        if engine is None:
            raise RuntimeError("attach the Checkpoint to an engine (engine.add(checkpoint)) or pass engine=")
        return self._write(engine, regular=self.keep_last != 0, best=not self._by_evaluation, barrier=barrier)

    def _on_evaluated(self, engine: Engine) -> None:
        """Right after an evaluation: the score describes the current weights, so a best file may be made."""
        self._fresh_score = (engine.state.iteration, self._score(engine, evaluated=True))
        self._write(engine, regular=False, best=True, barrier=True)

    def _write(self, engine: Engine, *, regular: bool, best: bool, barrier: bool) -> str | None:
        step = engine.state.iteration
        if step != self._step:
            self._step, self._step_kinds = step, set()
        kinds = {kind for kind, wanted in (("regular", regular), ("best", best)) if wanted} - self._step_kinds
        if not kinds:
            return None
        self._step_kinds |= kinds
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
        epoch = engine.state.epoch
        why = self._refusal(engine)
        if why:
            if not self._warned_refusal:
                self._warned_refusal = True
                warnings.warn(
                    f"Checkpoint: NOT saving iteration {step} (epoch {epoch}): {why}. The last good checkpoint "
                    f"({self.last_path or 'none yet'}) is kept untouched; later refusals are not reported",
                    RuntimeWarning, stacklevel=4,
                )
            return None
        if self._by_evaluation:
            fresh = self._fresh_score is not None and self._fresh_score[0] == step
            score = self._fresh_score[1] if fresh else None  # a score of other weights is not recorded
        else:
            score = self._score(engine)
        self._make_folder()
        if not self._adopted:
            self._adopt_existing(step)
        best = "best" in kinds and self._qualifies(score)
        targets = [os.path.join(self.dirname, f"best_{self.prefix}_{step:09d}_score={score:.4g}.pt")] if best else []
        if "regular" in kinds:
            targets.append(os.path.join(self.dirname, f"{self.prefix}_{step:09d}.pt"))
        if not targets:
            return None
        try:  # the best file first: a kill before the regular name is linked leaves it both best and resumable
            _atomic_save(self._payload(engine, step, score, rng_ranks), targets[0])
            if len(targets) == 2:
                _atomic_link(targets[0], targets[1])
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(self._write_failed(targets[0], step, exc)) from exc
        if "regular" in kinds:
            self._regular = [entry for entry in self._regular if entry[1] != targets[-1]] + [(step, targets[-1])]
        if best:
            self._best = [entry for entry in self._best if entry[2] != targets[0]] + [(score, step, targets[0])]
        self._evict()
        self.last_path = targets[-1]
        return targets[-1]

    def _payload(self, engine: Engine, step: int, score: float | None, rng_ranks: list | None) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "step": step,
            "epoch": engine.state.epoch,
            "score": score,
            "monitor": self.monitor if isinstance(self.monitor, str) else None,
            "saved_at": time.time(),
            "torch_version": str(torch.__version__),
            "objects": {name: self._state_of(obj) for name, obj in self.objects.items()},
        }
        if self.include_rng:
            payload["rng"] = get_rng_state()
            if rng_ranks is not None:
                payload["rng_ranks"] = rng_ranks
        return payload

    def _write_failed(self, path: str, step: int, exc: BaseException) -> str:
        if disk_full(exc):
            return (
                f"could not write checkpoint {path} at iteration {step}: the disk is full (No space left on device) "
                f"in {self.dirname}; earlier checkpoints are untouched. Free some space there or save to a folder "
                "on another disk"
            )
        return f"could not write checkpoint {path} at iteration {step}: {exc}; earlier checkpoints are untouched"

    def _refusal(self, engine: Engine) -> str | None:
        """Why this state must not be saved (a non-finite loss or weights), or None."""
        nan_at = getattr(engine.state, "terminated_on_nan", None)
        if nan_at is not None:
            return f"TerminateOnNan stopped the run at {nan_at}"
        leaves = float_leaves(engine.state.output)
        if any(not bool(torch.isfinite(torch.as_tensor(x)).all()) for x in leaves):
            return f"the output of iteration {engine.state.iteration} (the loss) is not finite"
        bad = self._non_finite_tensors()
        return f"{_listed(bad)} contain NaN or Inf" if bad else None

    def _adopt_existing(self, step: int) -> None:
        """Take over files an earlier (resumed) run left here, up to this iteration; leave later ones alone.

        Unreadable (corrupt) files count towards keep_last as the oldest, so they are deleted first. A best file
        that a kill kept from being made (or that is gone) is made again from its step's regular file."""
        self._adopted = True
        regular, best = _scan(self.dirname, self.prefix)
        later = sorted(path for s, path in regular + best if s > step)
        if later:
            warnings.warn(
                f"{self.dirname} holds checkpoints from later iterations than this run's {step}: {_listed(later)}. "
                "They are left alone, but Checkpoint.latest() will pick them; use a fresh folder or resume first",
                RuntimeWarning,
                stacklevel=5,
            )
        readable, unreadable, scored = [], [], []
        for s, path in sorted(regular):
            if s > step:
                continue
            try:
                scored.append((_read(path, peek=True).get("score"), s, path))
                readable.append((s, path))
            except CheckpointError:
                unreadable.append((s, path))  # useless for resuming: first in line for eviction
        self._regular = unreadable + readable + self._regular
        for s, path in best:
            if s > step:
                continue
            try:
                saved_score = _read(path, peek=True).get("score")
            except CheckpointError:
                continue
            if saved_score is not None and math.isfinite(saved_score):
                self._best.append((float(saved_score), s, path))
        self._remake_lost_best(scored)

    def _remake_lost_best(self, scored: list[tuple[float | None, int, str]]) -> None:
        """Link `best_` names to the regular files whose recorded score is among the best `keep_best` but that
        have no best file: what a kill between a save and its best link left (when the regular file came
        first, as in earlier versions), or a best file deleted by hand."""
        have = {s for _, s, _ in self._best}
        lost = [(float(score), s, path) for score, s, path in scored
                if self.keep_best and s not in have and score is not None and math.isfinite(score)]
        sign = 1.0 if self.mode == "max" else -1.0
        ranked = sorted(self._best + lost, key=lambda entry: (sign * entry[0], entry[1]), reverse=True)
        for entry in ranked[: self.keep_best]:
            if entry in lost:
                score, s, path = entry
                target = os.path.join(self.dirname, f"best_{self.prefix}_{s:09d}_score={score:.4g}.pt")
                _atomic_link(path, target)
                self._best.append((score, s, target))

    def _evict(self) -> None:
        """Delete regular files beyond keep_last (oldest first) and best files beyond keep_best (worst first)."""
        doomed: list[str] = []
        if self.keep_last is not None and len(self._regular) > self.keep_last:
            cut = len(self._regular) - self.keep_last
            doomed += [path for _, path in self._regular[:cut]]
            self._regular = self._regular[cut:]
        if len(self._best) > self.keep_best:
            sign = 1.0 if self.mode == "max" else -1.0
            self._best.sort(key=lambda entry: (sign * entry[0], entry[1]), reverse=True)
            doomed += [path for *_, path in self._best[self.keep_best:]]
            self._best = self._best[: self.keep_best]
        keep = {path for _, path in self._regular} | {path for *_, path in self._best}
        for path in doomed:
            if path not in keep:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def _qualifies(self, score: float | None) -> bool:
        if not self.keep_best or score is None or not math.isfinite(score):
            return False
        if len(self._best) < self.keep_best:
            return True
        scores = [entry[0] for entry in self._best]
        return score > min(scores) if self.mode == "max" else score < max(scores)

    def _find_evaluation(self, engine: Engine) -> None:
        """With an Evaluate on this engine, make best files right after its evaluations, from the weights it
        evaluated, rather than at saves where the score may be older than the weights."""
        if self._by_evaluation or not engine.has_registered_events(EvalEvents.EVALUATED):
            return
        self._by_evaluation = True
        engine.add_event_handler(EvalEvents.EVALUATED, self._on_evaluated)

    def _check_monitor_found(self, engine: Engine) -> None:
        if isinstance(self.monitor, str) and not self._monitor_found and not self._warned_monitor:
            self._warn_monitor(engine, "was never in engine.state.metrics during the run")

    def _warn_monitor(self, engine: Engine, what: str) -> None:
        self._warned_monitor = True
        warnings.warn(
            f"Checkpoint monitor {self.monitor!r} {what} (it has {sorted(engine.state.metrics)}), so no best "
            "checkpoint was kept; Evaluate copies its evaluator's metrics there as 'val/<name>', or pass "
            "monitor=a function of the engine",
            RuntimeWarning,
            stacklevel=4,
        )

    def _score(self, engine: Engine, *, evaluated: bool = False) -> float | None:
        if self.monitor is None:
            return None
        if callable(self.monitor):
            value = self.monitor(engine)
        elif self.monitor in engine.state.metrics:
            self._monitor_found = True
            value = engine.state.metrics[self.monitor]
        else:
            if evaluated and not self._warned_monitor:
                self._warn_monitor(engine, "is not in engine.state.metrics after an evaluation")
            return None
        try:
            return float(value)
        except (TypeError, ValueError):
            raise TypeError(f"Checkpoint monitor must give a number, got {value!r}") from None

    def _non_finite_tensors(self) -> list[str]:
        """Names of floating-point parameters/buffers holding NaN/Inf (one host sync per device when all is well)."""
        named: list[tuple[str, torch.Tensor]] = []
        for name, obj in self.objects.items():
            if isinstance(obj, nn.Module):
                module = dist.unwrap(obj)
                for key, t in [*module.named_parameters(), *module.named_buffers()]:
                    if t.is_floating_point() or t.is_complex():
                        named.append((f"{name}.{key}", t.detach()))
        if all_finite([t for _, t in named]):
            return []
        return [key for key, t in named if not bool(torch.isfinite(t).all())]

    @staticmethod
    def _state_of(obj: Any) -> Any:
        return dist.unwrap(obj).state_dict() if isinstance(obj, nn.Module) else obj.state_dict()

    # ------------------------------------------------------------------ loading
    @staticmethod
    def load(
        path: str | os.PathLike[str], objects: Mapping[str, Any], *, strict: bool = True, restore_rng: bool = True
    ) -> dict[str, Any]:
        """Restore `objects` (and the RNG states) from `path`; returns step, epoch, score and path of the file.

        All or nothing: the file's checksums, its structure, the models' keys and shapes (with strict=True a
        different architecture raises CheckpointError listing missing/unexpected keys and shape mismatches),
        the optimizers' groups, the counters, the RNG states and the finiteness of weights and optimizer state
        are checked before anything changes (CorruptCheckpointError for a damaged or unusable file). Objects in
        the file but not in `objects` are ignored (load just the model for inference).
        """
        return restore.load(os.fspath(path), objects, strict=strict, restore_rng=restore_rng)

    @staticmethod
    def latest(dirname: str | os.PathLike[str], prefix: str | None = None) -> str | None:
        """The newest complete checkpoint in `dirname` by the iteration recorded inside it (not mtime), or None.

        Corrupt or incomplete files (a record failing its checksum included) are skipped with a warning naming
        them; temp files are ignored.
        """
        paths, _ = _candidates(os.fspath(dirname), prefix)
        for path in paths:
            try:
                _read(path)
            except CorruptCheckpointError as exc:
                warnings.warn(_skipping(path, exc), RuntimeWarning, stacklevel=2)
                continue
            return path
        return None

    @staticmethod
    def resume_latest(
        dirname: str | os.PathLike[str], objects: Mapping[str, Any], *, prefix: str | None = None, strict: bool = True
    ) -> str | None:
        """Load the newest good checkpoint of `dirname` into `objects`; its path, or None if there is none.

        A newest file that is damaged or cannot be resumed from (a failed checksum, a malformed structure,
        NaN/Inf weights) is skipped, with a warning naming it and its problem, for the one before; when the
        folder holds checkpoint files but none can be loaded, CheckpointError lists each file and its problem.
        """
        dirname = os.fspath(dirname)
        paths, problems = _candidates(dirname, prefix)
        for path in paths:
            try:
                Checkpoint.load(path, objects, strict=strict)
            except CorruptCheckpointError as exc:
                warnings.warn(_skipping(path, exc, "; trying the previous checkpoint"), RuntimeWarning, stacklevel=2)
                problems.append(str(exc))
                continue
            return path
        if problems:
            raise CheckpointError(
                f"no usable checkpoint in {dirname}: {' | '.join(problems)}. Move the bad files away to start "
                "from the beginning"
            )
        return None
