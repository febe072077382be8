"""A run's folder: created for a new run or opened to resume one, scanned once, locked while the run uses it.

`RunFolder` is the one place that finds, opens and resumes a run (`ember.fit` and `ember train` both use it):

- `RunFolder.create(root)` makes a new, empty folder `root/<run-id>`; `RunFolder.open(path)` opens a given one
  (created if missing) and lists it once: `candidates` (its checkpoint files and sharded checkpoint folders
  `*.dcp`, newest first by the iteration
  recorded inside each), `checkpoint` (the one a resume loads) and `record` (the run record saved in it,
  `{"run_id", "config"}`, read through the checkpoint format's own verified reader). `RunFolder.open(path,
  file=...)` resumes from exactly that file.
- `lock()` takes an OS file lock (`fcntl.flock`) on `<folder>/.lock` for the whole run (the file is removed
  when the run ends); the kernel releases it when the process dies, so a crash never leaves it stuck. A
  second run on the same folder gets a `RunError` naming the pid that holds it. `place` does this for every
  rank of a torchrun job (rank 0 creates and locks; every rank raises its refusal). After a torchelastic
  restart of the job, `place` opens the folder the job's first start created (marked `.elastic-run` with
  TORCHELASTIC_RUN_ID) instead of creating another: a restart continues the same run.
- `restore(objects)` loads the chosen checkpoint (falling back past a damaged one, as `resume_latest` does);
  `close()` lets go of the lock and removes a folder this run created but never saved into.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from ember import distributed as dist
from ember.checkpoint.folder import candidates, read_any, skipping
from ember.checkpoint.format import CorruptCheckpointError
from ember.checkpoint.restore import resume_from
from ember.run.record import RUN_KEY, RunError, differing, record_problem
from ember.utils.atomic import write_atomic

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not protected against a second run on the folder
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
ELASTIC_MARK = ".elastic-run"  # in a run folder: the TORCHELASTIC_RUN_ID of the torchrun job that started the run


def new_run_id() -> str:
    """A run id from the local time (`20261203-081502`), unique within a folder by `RunFolder.create`."""
    return time.strftime("%Y%m%d-%H%M%S")


def latest_run_dir(root: str | os.PathLike[str]) -> str | None:
    """The run folder under `root` holding the newest checkpoint (by file time), or None."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        return None
    best: tuple[float, str] | None = None
    for name in os.listdir(root):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            continue
        times = [e.stat().st_mtime for e in os.scandir(folder) if is_checkpoint_name(e.name)]
        if times and (best is None or max(times) > best[0]):
            best = (max(times), folder)
    return best[1] if best else None


def is_checkpoint_name(name: str) -> bool:
    """Whether a name in a run folder is a checkpoint's: a file `*.pt` or a sharded folder `*.dcp`."""
    return name.endswith((".pt", ".dcp")) and not name.startswith(".")


def elastic_run_dir(root: str | os.PathLike[str]) -> str | None:
    """The run folder under `root` that this torchrun job started, when torchelastic restarted it (None on a
    first start, outside torchrun, or when no folder under `root` was marked by this job's run id).

    A restart is not a new run: rank 0 of the first start marks the folder it made (`mark_elastic_run`) with
    TORCHELASTIC_RUN_ID (torchrun's --rdzv-id; a fresh id for --standalone), and the restarted processes find
    it by that mark."""
    job = os.environ.get("TORCHELASTIC_RUN_ID")
    if not job or dist.elastic_restart_count() == 0 or not os.path.isdir(root):
        return None
    found = []
    for entry in os.scandir(root):
        mark = os.path.join(entry.path, ELASTIC_MARK)
        if entry.is_dir() and os.path.isfile(mark):
            with open(mark) as f:
                if f.read().strip() == job:
                    found.append((os.path.getmtime(mark), entry.path))
    return max(found)[1] if found else None


def mark_elastic_run(folder: str | os.PathLike[str]) -> None:
    """Record in a new run's folder which torchrun job started it (see `elastic_run_dir`); rank 0 only."""
    job = os.environ.get("TORCHELASTIC_RUN_ID")
    if job and dist.is_main():
        write_atomic(os.path.join(os.fspath(folder), ELASTIC_MARK), lambda f: f.write(job.encode()))


class RunFolder:
    """One run's checkpoint folder, scanned once (see the module doc).

    Attributes:
        path: the folder.
        run_id: the run's id: the saved one when the folder holds a run, else the folder's name.
        created: whether this process created the folder (then `close` removes it if nothing was saved).
        candidates: the checkpoint files whose metadata reads, newest first (empty for a new run).
        problems: what is wrong with the files that were skipped.
        checkpoint: the file a resume loads (the newest readable one, or the file named), or None.
        record: the run record saved in `checkpoint` (`{"run_id", "config"}`), or None.
    """

    def __init__(self, path: str, run_id: str, *, created: bool) -> None:
        self.path = path
        self.run_id = run_id
        self.created = created
        self.candidates: list[str] = []
        self.problems: list[str] = []
        self.checkpoint: str | None = None
        self.record: dict[str, Any] | None = None
        self.config_compared = False
        self._lock_fd: int | None = None

    @classmethod
    def create(cls, root: str | os.PathLike[str], run_id: str | None = None) -> RunFolder:
        """A new, empty run folder `root/<run-id>` (`-2`, `-3`... when taken, so two runs started in the same
        second get two folders)."""
        root = os.fspath(root)
        os.makedirs(root, exist_ok=True)
        base = run_id or new_run_id()
        for n in range(1, 1000):
            rid = base if n == 1 else f"{base}-{n}"
            try:
                os.mkdir(os.path.join(root, rid))  # exclusive
            except FileExistsError:
                continue
            return cls(os.path.join(root, rid), rid, created=True)
        raise RunError(f"cannot create a new run folder under {root}: {base} to {base}-999 all exist")

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, file: str | os.PathLike[str] | None = None,
             run_id: str | None = None) -> RunFolder:
        """The run folder `path` (created when missing), listed once for its checkpoints and run record.

        `file` names the checkpoint a resume must load (in `path`); it is read (and verified) here, so a file
        that is not an ember checkpoint raises `CheckpointError` before anything is written.
        """
        path = os.fspath(path)
        created = not os.path.exists(path)
        if created:
            try:
                os.makedirs(path)
            except FileExistsError:
                created = False
            except OSError as exc:
                raise RunError(f"cannot use {path} as the checkpoint folder: {exc.strerror or exc}; choose a "
                               "folder that can be created and written", setting="checkpoint_dir") from None
        elif not os.path.isdir(path):
            raise RunError(f"cannot use {path} as the checkpoint folder: it is a file, not a folder; choose a "
                           "folder that can be created and written", setting="checkpoint_dir")
        run = cls(path, run_id or os.path.basename(os.path.normpath(path)), created=created)
        if file is not None:
            file = os.fspath(file)
            problem = run._take_record(file, read_any(file, peek=True))  # a file, or a sharded folder's manifest
            if problem:
                raise CorruptCheckpointError(problem)
            run.candidates, run.checkpoint = [file], file
        elif not created:
            peeked: dict[str, dict[str, Any]] = {}
            run.candidates, run.problems = candidates(path, None, peeked)  # warns once for each unreadable file
            for candidate in list(run.candidates):
                problem = run._take_record(candidate, peeked[candidate])
                if problem is None:
                    run.checkpoint = candidate
                    break
                run.candidates.remove(candidate)  # a malformed run record: passed over like any bad file
                run.problems.append(problem)
                warnings.warn(skipping(candidate, problem, "; trying the previous checkpoint"), RuntimeWarning,
                              stacklevel=2)
        return run

    def _take_record(self, path: str, payload: Mapping[str, Any]) -> str | None:
        """Take the run record of `path`'s `payload`; what is wrong with it (as a file's problem), or None."""
        record = payload["objects"].get(RUN_KEY)
        problem = record_problem(record) if record is not None else None
        if problem:
            return f"checkpoint file {path} is malformed: its run record {problem}. Load an earlier checkpoint"
        self.record = dict(record) if record is not None else None
        if self.record is not None:
            self.run_id = self.record["run_id"]
        return None

    @property
    def holds_checkpoints(self) -> bool:
        """Whether the folder holds checkpoint files (good or not)."""
        return bool(self.candidates or self.problems)

    def compare(self, config: Mapping[str, Any], may_differ: Iterable[str]) -> list[tuple[str, Any, Any]]:
        """`(key, saved value, new value)` for each setting of `config` that differs from the saved run's and
        is not in `may_differ`. The configuration is compared once per resume, by whoever asks first (the
        command line, in its flags' terms; else `fit`): later calls return []."""
        if self.config_compared or self.record is None:
            return []
        self.config_compared = True
        return differing(self.record.get("config", {}), config, may_differ)

    def lock(self) -> None:
        """Hold an exclusive OS lock on `<folder>/.lock` (holding this process's pid) until `close`, or the
        process's death: the kernel lets go of it, so a killed run never leaves it stuck.

        Raises:
            RunError: another live process holds it (the message names its pid).
        """
        if self._lock_fd is not None or fcntl is None:
            return
        name = os.path.join(self.path, LOCK_NAME)
        while True:
            fd = os.open(name, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise RunError(f"{self.path} is in use by another run (pid {holder}); wait for it to end, or use "
                               "another folder", setting="checkpoint_dir") from None
            try:
                if os.stat(name).st_ino == os.fstat(fd).st_ino:
                    break  # still the file under that name (its last holder did not just remove it)
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def restore(self, objects: Mapping[str, Any]) -> str | None:
        """Load `checkpoint` into `objects` (the next older file when it proves unusable); its path, or None.

        Raises:
            CheckpointError: the folder holds checkpoints but none can be loaded (each file's problem listed).
        """
        return resume_from(self.path, list(self.candidates), list(self.problems), objects)

    def close(self) -> None:
        """Let go of the lock (its file removed while still held); a folder this run created and never saved
        into is removed."""
        if self._lock_fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.path, LOCK_NAME))
            os.close(self._lock_fd)
            self._lock_fd = None
        if self.created:
            with contextlib.suppress(OSError):
                if os.listdir(self.path) == [ELASTIC_MARK]:
                    os.unlink(os.path.join(self.path, ELASTIC_MARK))  # nothing saved: no run to restart into
                os.rmdir(self.path)  # only when empty


def place(path: str | os.PathLike[str] | RunFolder | None, *, root: str = "checkpoints",
          run_id: str | None = None) -> RunFolder:
    """The run's folder, locked by rank 0, the same on every rank: `path` opened (or already a `RunFolder`),
    else the folder under `root` this torchrun job started when torchelastic restarted it (`elastic_run_dir`),
    else a new folder under `root` (marked for later restarts). A failure on rank 0 (a folder in use, one that
    cannot be made) is raised on every rank, so that no rank waits for the others forever. A collective call
    under torchrun."""
    run = path if isinstance(path, RunFolder) else None
    error: str | None = None
    if dist.is_main():
        try:
            if run is None and path is None:
                restarted = elastic_run_dir(root)
                if restarted is not None:
                    run = RunFolder.open(restarted)
                else:
                    run = RunFolder.create(root, run_id)
                    mark_elastic_run(run.path)
            elif run is None:
                run = RunFolder.open(path, run_id=run_id)
            run.lock()
        except RunError as exc:
            if run is not None and run is not path:
                run.close()
            if not dist.is_enabled():
                raise
            error = str(exc)
    shared = dist.broadcast_object((run.path, run.run_id) if run is not None and error is None else error)
    if isinstance(shared, str):
        raise RunError(shared, setting="checkpoint_dir")
    if run is None:
        run = RunFolder.open(shared[0], run_id=shared[1])
    return run


def describe(path: str) -> str:
    """What a folder holds, for a refusal that found no checkpoint in it."""
    try:
        names = sorted(n for n in os.listdir(path) if n not in (LOCK_NAME, ELASTIC_MARK))
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    if not names:
        return "it is empty"
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f"it holds no checkpoint (only {shown})"


__all__ = ["ELASTIC_MARK", "LOCK_NAME", "RunFolder", "describe", "is_checkpoint_name", "latest_run_dir", "new_run_id",
           "place"]
