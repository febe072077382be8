"""Run folders: one per run under a root (`checkpoints/<run-id>`), and finding the newest run to resume."""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

from ember.checkpoint.folder import candidates
from ember.checkpoint.format import CorruptCheckpointError, read
from ember.run.record import RUN_KEY, RunError, record_problem


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
        times = [e.stat().st_mtime for e in os.scandir(folder) if e.name.endswith(".pt") and not e.name[0] == "."]
        if times and (best is None or max(times) > best[0]):
            best = (max(times), folder)
    return best[1] if best else None


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
                read(path)
                run_record(path)
            except CorruptCheckpointError:
                continue
            return path
    return None


def run_record(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run record saved in the checkpoint file `path` (None for files written without `fit`);
    CorruptCheckpointError naming the file when the record is malformed."""
    payload = read(os.fspath(path), peek=True)
    record = payload["objects"].get(RUN_KEY)
    if record is None:
        return None
    problem = record_problem(record)
    if problem:
        raise CorruptCheckpointError(f"checkpoint file {path} is malformed: its run record {problem}. Load an "
                                     "earlier checkpoint")
    return dict(record)
