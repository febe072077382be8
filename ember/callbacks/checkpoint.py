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
from ember.callbacks.handler_states import HandlerStates
from ember.callbacks.rng import get_rng_state, set_rng_state
from ember.engine import Engine, Events, exception_observer
from ember.engine import order as order_levels

FORMAT = "ember-checkpoint"
FORMAT_VERSION = 1
TMP_PREFIX = ".tmp-"
_REGULAR_RE = re.compile(r"^(?P<prefix>.+)_(?P<step>\d{9,})\.pt$")
_BEST_RE = re.compile(r"^best_(?P<prefix>.+)_(?P<step>\d{9,})_score=(?P<score>.+)\.pt$")
_TMP_RE = re.compile(r"^\.tmp-(?P<name>.+)-(?P<pid>\d+)-(?P<rand>[0-9a-f]+)$")
_SAFE_LEAVES = (int, float, bool, str, bytes, complex, type(None), torch.dtype, torch.device)
_MAX_LISTED = 20

ScoreFn = Callable[[Engine], Any]


class CheckpointError(Exception):
    """A checkpoint could not be saved or loaded; the message names the file, the problem and what to do."""


class CorruptCheckpointError(CheckpointError):
    """The file is empty, truncated or otherwise not a complete file written by `torch.save`."""


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read(path: str, *, peek: bool = False) -> dict[str, Any]:
    """Load an ember checkpoint with weights_only=True; `peek` memory-maps tensors so only metadata is read."""
    if not os.path.exists(path):
        raise CheckpointError(
            f"checkpoint file {path} does not exist; check the path "
            "(Checkpoint.latest(dirname) finds the newest complete checkpoint in a folder)"
        )
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder, not a checkpoint file; use Checkpoint.latest({path!r}) to pick one")
    size = os.path.getsize(path)
    if size == 0:
        raise CorruptCheckpointError(
            f"checkpoint file {path} is empty (0 bytes): it is corrupt or incomplete, probably left by a process "
            "killed while writing; delete it and load an earlier checkpoint"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the weights_only unpickler warns about foreign pickle protocols
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=peek)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise CheckpointError(
                f"{path} is not a plain checkpoint: it refers to {found.group(1)}, which could execute code when "
                "unpickled. It was refused and NOT executed (torch.load weights_only=True). Only load it, outside "
                "ember, if you trust where it came from"
            ) from None
        raise CorruptCheckpointError(
            f"checkpoint file {path} ({size} bytes) is corrupt or incomplete: it is not a complete file written by "
            f"torch.save ({_first_line(exc).rstrip('.')}); nothing in it was executed. Load an earlier checkpoint"
        ) from None
    except Exception as exc:
        raise CorruptCheckpointError(
            f"checkpoint file {path} ({size} bytes) is corrupt or incomplete (truncated, or not written by "
            f"torch.save): {_first_line(exc)} Load an earlier checkpoint"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        keys = sorted(map(str, payload)) if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path} loads, but is not an ember checkpoint (it holds {keys}); for a bare state_dict use "
            "model.load_state_dict(torch.load(path, weights_only=True))"
        )
    if int(payload.get("version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {payload['version']}, newer than this ember reads "
            f"({FORMAT_VERSION}); upgrade ember to load it"
        )
    return payload


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
        with open(tmp, "xb") as f:
            torch.save(payload, f)
            f.flush()
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


def _strip_wrapper_prefixes(state: Mapping[str, Any], own_keys: set[str]) -> Mapping[str, Any]:
    """Drop `module.` / `_orig_mod.` key prefixes of state saved from a wrapped model by other tools."""
    for wrapper in ("module.", "_orig_mod."):
        if state and all(k.startswith(wrapper) for k in state) and not any(k.startswith(wrapper) for k in own_keys):
            state = {k[len(wrapper):]: v for k, v in state.items()}
    return state


def _module_mismatch(module: nn.Module, state: Mapping[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """Missing keys, unexpected keys and keys whose shapes differ between `module` and a saved state_dict."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        k
        for k in own
        if k in state and isinstance(own[k], torch.Tensor) and isinstance(state[k], torch.Tensor)
        and state[k].shape != own[k].shape
    ]
    return missing, unexpected, shapes


def _describe_mismatch(
    name: str, module: nn.Module, state: Mapping[str, Any], missing: list[str], unexpected: list[str], shapes: list[str]
) -> str:
    lines = [f"'{name}' does not match the checkpoint (was it saved from a different model?):"]
    if missing:
        lines.append(f"  missing keys (in the model, not in the checkpoint): {_listed(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys (in the checkpoint, not in the model): {_listed(unexpected)}")
    if shapes:
        own = module.state_dict()
        described = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in shapes]
        lines.append(f"  shape mismatches: {_listed(described)}")
    return "\n".join(lines)


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


def _complete_checkpoints(dirname: str, prefix: str | None) -> tuple[list[str], list[str]]:
    """Readable checkpoints in `dirname`, newest first by the step recorded inside each file, and the
    problems of the unreadable ones (each skipped with a warning that names the file)."""
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
            except (KeyError, TypeError, ValueError, OSError) as exc:
                problem = f"{path} has no readable step ({exc!r})"
            problems.append(problem)
            warnings.warn(f"skipping checkpoint {path}: {problem}", RuntimeWarning, stacklevel=3)
    found.sort(reverse=True)
    return [path for *_, path in found], problems


IMPLEMENTATION_FLAGS = frozenset({"capturable", "foreach", "fused", "differentiable"})


def _load_optimizer(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """`optimizer.load_state_dict`, keeping each hyperparameter as the optimizer has it now: a tensor stays
    the same tensor on its device with the saved value (a CUDA graph and a scheduler hold that very tensor;
    torch would put back the CPU copy from the file), a number stays a number, and the implementation flags
    (capturable, foreach, fused, differentiable) stay this run's."""
    before = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, old in zip(optimizer.param_groups, before):
        for key, was in old.items():
            now = group.get(key)
            if key in IMPLEMENTATION_FLAGS:
                group[key] = was  # how this run computes the step, not a state of training
            elif isinstance(was, torch.Tensor) and was.numel() == 1 and isinstance(now, (torch.Tensor, int, float)):
                was.fill_(now.item() if isinstance(now, torch.Tensor) else now)
                group[key] = was
            elif isinstance(was, (int, float)) and isinstance(now, torch.Tensor) and now.numel() == 1:
                group[key] = type(was)(now.item())


class Checkpoint:
    """Saves `objects` (anything with state_dict/load_state_dict) every n epochs/iterations and at COMPLETED.

    Files are written atomically (temp file, fsync, rename), checked to load with `torch.load(weights_only=True)`,
    and named `<prefix>_<iteration:09d>.pt`; the best `keep_best` by `monitor` also as
    `best_<prefix>_<iteration:09d>_score=<score>.pt`. The trainer Engine is added as "trainer" unless already among
    `objects`. Saves are refused (with a warning) while a model holds NaN/Inf or after TerminateOnNan stopped the
    run (`engine.state.terminated_on_nan`), so the last good file survives. The trainer's fp16 GradScaler
    (`engine.scaler`) is saved as "scaler" and restored by `load` when the trainer is among its objects.
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
        self._last_step: int | None = None
        self._warned_monitor = False

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
            if pid != os.getpid() and _pid_alive(pid):
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
        """Save now (rank 0 only; other ranks wait); returns the path written, or None if nothing was written."""
        engine = engine if engine is not None else self.engine
        if engine is None:
            raise RuntimeError("attach the Checkpoint to an engine (engine.add(checkpoint)) or pass engine=")
        step = engine.state.iteration
        if step == self._last_step:
            return None
        self._last_step = step
        try:
            rng_ranks = None  # every rank's generators, so each resumes its own stream (a collective call)
            if self.include_rng and barrier and dist.is_enabled():
                rng_ranks = dist.gather_object(get_rng_state())
            if dist.is_main():
                return self._save(engine, step, rng_ranks)
            return None
        finally:
            if barrier and dist.is_enabled():
                dist.barrier()

    def _save(self, engine: Engine, step: int, rng_ranks: list[dict[str, Any]] | None = None) -> str | None:
        epoch = engine.state.epoch
        nan_at = getattr(engine.state, "terminated_on_nan", None)
        bad = self._non_finite_tensors()
        if bad or nan_at is not None:
            why = f"{_listed(bad)} contain NaN or Inf" if bad else f"TerminateOnNan stopped the run at {nan_at}"
            warnings.warn(
                f"Checkpoint: NOT saving iteration {step} (epoch {epoch}): {why}. "
                f"The last good checkpoint ({self.last_path or 'none yet'}) is kept untouched",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        score = self._score(engine)
        payload: dict[str, Any] = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "step": step,
            "epoch": epoch,
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
        self._make_folder()
        if not self._adopted:
            self._adopt_existing(step)
        targets = []
        if self.keep_last != 0:
            targets.append(os.path.join(self.dirname, f"{self.prefix}_{step:09d}.pt"))
        is_best = self._qualifies(score)
        if is_best:
            targets.append(os.path.join(self.dirname, f"best_{self.prefix}_{step:09d}_score={score:.4g}.pt"))
        if not targets:
            return None
        try:
            _atomic_save(payload, targets[0])
            if len(targets) == 2:
                _atomic_link(targets[0], targets[1])
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(
                f"could not write checkpoint {targets[0]} at iteration {step}: {exc}; earlier checkpoints are "
                "untouched"
            ) from exc
        if self.keep_last != 0:
            self._regular = [entry for entry in self._regular if entry[1] != targets[0]] + [(step, targets[0])]
        if is_best:
            self._best = [entry for entry in self._best if entry[2] != targets[-1]] + [(score, step, targets[-1])]
        self._evict()
        self.last_path = targets[0]
        return targets[0]

    def _adopt_existing(self, step: int) -> None:
        """Take over files an earlier (resumed) run left here, up to this iteration; leave later ones alone.

        Unreadable (corrupt) files count towards keep_last as the oldest, so they are deleted first."""
        self._adopted = True
        regular, best = _scan(self.dirname, self.prefix)
        later = sorted(path for s, path in regular + best if s > step)
        if later:
            warnings.warn(
                f"{self.dirname} holds checkpoints from later iterations than this run's {step}: {_listed(later)}. "
                "They are left alone, but Checkpoint.latest() will pick them; use a fresh folder or resume first",
                RuntimeWarning,
                stacklevel=4,
            )
        readable, unreadable = [], []
        for s, path in sorted(regular):
            if s > step:
                continue
            try:
                _read(path, peek=True)
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

    def _score(self, engine: Engine) -> float | None:
        if self.monitor is None:
            return None
        if callable(self.monitor):
            value = self.monitor(engine)
        elif self.monitor in engine.state.metrics:
            value = engine.state.metrics[self.monitor]
        else:
            if not self._warned_monitor:
                self._warned_monitor = True
                warnings.warn(
                    f"Checkpoint monitor {self.monitor!r} is not in engine.state.metrics "
                    f"(has {sorted(engine.state.metrics)}); for an evaluator's metric pass "
                    "monitor=lambda engine: evaluator.state.metrics[name]",
                    RuntimeWarning,
                    stacklevel=4,
                )
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
        by_device: dict[torch.device, list[torch.Tensor]] = {}
        for _, t in named:
            by_device.setdefault(t.device, []).append(t)
        clean = all(bool(torch.stack([torch.isfinite(t).all() for t in ts]).all()) for ts in by_device.values())
        if clean:
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

        Models are checked before anything changes: with strict=True a different architecture raises
        CheckpointError listing missing/unexpected keys and shape mismatches. Objects in the file but not in
        `objects` are ignored (load just the model for inference).
        """
        path = os.fspath(path)
        payload = _read(path)
        saved = payload["objects"]
        objects = _with_engine_handlers(_with_engine_scalers(objects, saved), saved)
        absent = [name for name in objects if name not in saved]
        problems: list[str] = []
        if absent:
            problems.append(f"not in the checkpoint: {absent} (it holds {sorted(saved)})")
        states: dict[str, Any] = {}
        for name, obj in objects.items():
            if name in absent:
                continue
            state = saved[name]
            if isinstance(obj, nn.Module):
                module = dist.unwrap(obj)
                state = _strip_wrapper_prefixes(state, set(module.state_dict()))
                missing, unexpected, shapes = _module_mismatch(module, state)
                if missing or unexpected or shapes:
                    problems.append(_describe_mismatch(name, module, state, missing, unexpected, shapes))
                    if not strict:
                        state = {k: v for k, v in state.items() if k not in set(shapes)}
            states[name] = state
        if problems:
            text = "\n".join(problems)
            if strict:
                raise CheckpointError(
                    f"cannot load {path}; nothing was changed:\n{text}\n"
                    "Pass strict=False to load only what matches."
                )
            warnings.warn(f"loading {path} partially (strict=False):\n{text}", RuntimeWarning, stacklevel=2)
        ordered = sorted(states, key=lambda n: not isinstance(objects[n], nn.Module))
        for name in ordered:
            obj = objects[name]
            try:
                if isinstance(obj, nn.Module):
                    dist.unwrap(obj).load_state_dict(states[name], strict=strict)
                elif isinstance(obj, torch.optim.Optimizer):
                    _load_optimizer(obj, states[name])
                else:
                    obj.load_state_dict(states[name])
            except Exception as exc:
                raise CheckpointError(
                    f"could not restore {name!r} ({type(obj).__name__}) from {path}: {exc}. "
                    "Was the checkpoint written for a different setup (e.g. other optimizer parameter groups)?"
                ) from exc
        if restore_rng and "rng" in payload:
            ranks = payload.get("rng_ranks")
            same_world = ranks is not None and len(ranks) == dist.world_size()
            set_rng_state(ranks[dist.rank()] if same_world else payload["rng"])
        return {"path": path, "step": payload["step"], "epoch": payload["epoch"], "score": payload.get("score")}

    @staticmethod
    def latest(dirname: str | os.PathLike[str], prefix: str | None = None) -> str | None:
        """The newest complete checkpoint in `dirname` by the iteration recorded inside it (not mtime), or None.

        Corrupt or incomplete files are skipped with a warning naming them; temp files are ignored.
        """
        found, _ = _complete_checkpoints(os.fspath(dirname), prefix)
        return found[0] if found else None

    @staticmethod
    def resume_latest(
        dirname: str | os.PathLike[str], objects: Mapping[str, Any], *, prefix: str | None = None, strict: bool = True
    ) -> str | None:
        """Load the newest complete checkpoint of `dirname` into `objects`; its path, or None if there is none.

        A corrupt newest file is skipped (with a warning naming it) for the one before; when the folder holds
        checkpoint files but none can be loaded, CheckpointError lists each file and its problem.
        """
        dirname = os.fspath(dirname)
        paths, problems = _complete_checkpoints(dirname, prefix)
        for path in paths:
            try:
                Checkpoint.load(path, objects, strict=strict)
            except CorruptCheckpointError as exc:
                warnings.warn(f"{exc}; trying the previous checkpoint", RuntimeWarning, stacklevel=2)
                problems.append(str(exc))
                continue
            return path
        if problems:
            raise CheckpointError(
                f"no usable checkpoint in {dirname}: {' | '.join(problems)}. Move the bad files away to start "
                "from the beginning"
            )
        return None


def _with_engine_scalers(objects: Mapping[str, Any], saved: Mapping[str, Any]) -> Mapping[str, Any]:
    """`objects` plus the GradScaler of an engine among them, under the name `attach` saved it as, if saved."""
    extra: dict[str, Any] = {}
    for obj in objects.values():
        scaler = getattr(obj, "scaler", None) if isinstance(obj, Engine) else None
        if isinstance(scaler, torch.amp.GradScaler) and not any(o is scaler for o in objects.values()):
            name = "scaler" if "scaler" not in objects else "trainer_scaler"
            if name in saved:
                extra[name] = scaler
    return {**objects, **extra} if extra else objects


def _with_engine_handlers(objects: Mapping[str, Any], saved: Mapping[str, Any]) -> Mapping[str, Any]:
    """`objects` plus a HandlerStates of the engine among them, when the file holds handler states."""
    if "handlers" not in saved or "handlers" in objects:
        return objects
    engine = next((obj for obj in objects.values() if isinstance(obj, Engine)), None)
    if engine is None:
        return objects
    return {**objects, "handlers": HandlerStates(engine, exclude=list(objects.values()))}


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` still runs (on Windows, where signal 0 would kill it, always assumed so)."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True
