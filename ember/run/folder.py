"""Run folders: one per run under a root (`checkpoints/<run-id>`), and finding the newest run to resume."""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

from ember import distributed as dist
from ember.checkpoint.folder import candidates, read_any
from ember.checkpoint.format import CorruptCheckpointError
from ember.run.record import RUN_KEY, RunError, record_problem
from ember.utils.atomic import write_atomic


def new_run_id() -> str:
    """A run id from the local time (`20261203-081502`), unique within a folder by `make_run_dir`."""
    return time.strftime("%Y%m%d-%H%M%S")


def make_run_dir(root: str | os.PathLike[str], run_id: str | None = None) -> tuple[str, str]:
    """Create a new, empty run folder under `root` (`root/<run-id>`, `-2`, `-3`... when taken); (folder, id)."""
    root = os.fspath(root)
    os.makedirs(root, exist_ok=True)
    base = run_id or new_run_id()
    for n in range(1, 1000):
        rid = base if n == 1 else f"{base}-{n}"
        try:
            os.mkdir(os.path.join(root, rid))  # exclusive: two runs started in the same second get two folders
        except FileExistsError:
            continue
        return os.path.join(root, rid), rid
    raise RunError(f"cannot create a new run folder under {root}: {base} to {base}-999 all exist")


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


ELASTIC_MARK = ".elastic-run"  # in a run folder: the TORCHELASTIC_RUN_ID of the torchrun that started the run


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


def place_run(root: str | os.PathLike[str], run_id: str | None = None) -> tuple[str, str]:
    """(folder, run id) of the run under `root`, the same on every rank: after a torchelastic restart the
    folder this job started (`elastic_run_dir`), else a new one (`make_run_dir`, marked for later restarts).
    A collective call under torchrun."""
    found = None
    if dist.is_main():
        folder = elastic_run_dir(root)
        if folder is None:
            folder, rid = make_run_dir(root, run_id)
            mark_elastic_run(folder)
        else:
            rid = os.path.basename(folder)
        found = (folder, rid)
    return dist.broadcast_object(found)


def saved_run(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run record (`{"run_id", "config"}`) in the newest good checkpoint of `folder`; None when there is none."""
    path = newest_good(folder) if os.path.isdir(folder) else None
    return run_record(path) if path is not None else None


def newest_good(folder: str | os.PathLike[str]) -> str | None:
    """`Checkpoint.latest`, also passing over files whose run record is malformed, without warnings: the load
    that follows warns once about each file it skips."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for path in candidates(os.fspath(folder), None)[0]:
            try:
                read_any(path)
                run_record(path)
            except CorruptCheckpointError:
                continue
            return path
    return None


def run_record(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run record saved in the checkpoint file `path` (None for files written without `fit`);
    CorruptCheckpointError naming the file when the record is malformed."""
    payload = read_any(os.fspath(path), peek=True)  # a file, or a sharded folder's manifest
    record = payload["objects"].get(RUN_KEY)
    if record is None:
        return None
    problem = record_problem(record)
    if problem:
        raise CorruptCheckpointError(f"checkpoint file {path} is malformed: its run record {problem}. Load an "
                                     "earlier checkpoint")
    return dict(record)
