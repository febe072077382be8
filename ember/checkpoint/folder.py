"""The files of a checkpoint folder: their names, finding them, writing them, and which of them to keep.

`CheckpointFolder` is the storage half of the `Checkpoint` handler (which decides when and what to save): it
names files `<prefix>_<iteration:09d>.pt` and `best_<prefix>_<iteration:09d>_score=<score>.pt`, writes them
atomically and checked to load with weights_only (`save_file`), removes the temp files of killed processes,
takes over the files of an earlier run it resumes, and keeps the newest `keep_last` and the best `keep_best`.
`latest` and `candidates` find the newest good file of a folder by the step recorded inside each one. A
sharded checkpoint (`sharded.py`) is a folder named like a file with `.dcp` for `.pt`, found, kept and evicted
the same way.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import warnings
from collections.abc import Callable
from typing import Any

import torch

from ember import distributed as dist
from ember.checkpoint import sharded
from ember.checkpoint.format import CheckpointError, CorruptCheckpointError, RecordingFile, listed, read
from ember.checkpoint.safety import probe
from ember.utils.atomic import TMP_PREFIX, atomically, link_atomic
from ember.utils.files import disk_full

_REGULAR_RE = re.compile(r"^(?P<prefix>.+)_(?P<step>\d{9,})\.(?:pt|dcp)$")
_BEST_RE = re.compile(r"^best_(?P<prefix>.+)_(?P<step>\d{9,})_score=(?P<score>.+)\.(?:pt|dcp)$")


def skipping(path: str, exc: BaseException | str, then: str = "") -> str:
    """One warning line for a checkpoint file that is passed over, saying why (without the error's advice)."""
    why = str(exc).replace(f"checkpoint file {path} ", "the file ", 1)
    why = why.replace(f"cannot load {path}; nothing was changed:", "it does not fit what is loaded:", 1)
    why = "; ".join(line.strip() for line in why.splitlines() if line.strip()).replace(":; ", ": ")  # one line
    for advice in (". Load an earlier checkpoint", "; delete it and load an earlier checkpoint",
                   "; Pass strict=False to load only what matches."):
        why = why.removesuffix(advice)
    return f"skipping checkpoint {path}: {why}{then}"


def read_any(path: str, *, peek: bool = False) -> dict[str, Any]:
    """`read` for a file, the manifest of a sharded folder (its files' sizes checked; with `peek` False and in
    a single process also their CRC-32s, which `load` checks under torchrun, each rank a share)."""
    if sharded.is_folder_checkpoint(path):
        return sharded.read_manifest(path, check_files=not peek and not dist.is_enabled())
    return read(path, peek=peek)


def save_file(payload: dict[str, Any], path: str) -> None:
    """Write to a temp file in the same folder, fsync, check it loads with weights_only, then rename over `path`."""
    with atomically(path) as tmp:
        with RecordingFile(tmp, "xb") as f:
            try:
                torch.save(payload, f)
            except Exception:
                if f.error is not None:
                    raise f.error from None  # the cause torch.save hides ("unexpected pos"), e.g. a full disk
                raise
            os.fsync(f.fileno())
        probe(tmp, payload, path)


def scan(dirname: str, prefix: str | None) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
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


def candidates(
    dirname: str, prefix: str | None, peeked: dict[str, dict[str, Any]] | None = None
) -> tuple[list[str], list[str]]:
    """Checkpoints in `dirname` whose metadata reads, newest first by the step recorded inside each file (a
    regular file before a best one of the same step), and the problems of the others, each skipped with a
    warning (for the caller's caller) that names the file. The tensors' checksums are checked when a file is
    loaded or picked. `peeked`, when given, receives each readable file's metadata (`read_any(path, peek=True)`)."""
    regular, best = scan(dirname, prefix)
    found: list[tuple[int, bool, float, str]] = []
    problems: list[str] = []
    for is_regular, files in ((True, regular), (False, best)):
        for _, path in files:
            try:
                payload = read_any(path, peek=True)
                if peeked is not None:
                    peeked[path] = payload
                found.append((int(payload["step"]), is_regular, os.path.getmtime(path), path))
                continue
            except CheckpointError as exc:
                problem = str(exc)
            except OSError as exc:
                problem = f"{path} cannot be read ({exc})"
            problems.append(problem)
            warnings.warn(skipping(path, problem), RuntimeWarning, stacklevel=3)
    found.sort(reverse=True)
    return [path for *_, path in found], problems


def latest(dirname: str | os.PathLike[str], prefix: str | None = None) -> str | None:
    """The newest complete checkpoint in `dirname` by the iteration recorded inside it (not mtime), or None.

    Corrupt or incomplete files (a record failing its checksum included) are skipped with a warning naming
    them; temp files are ignored. `Checkpoint.latest`.
    """
    paths, _ = candidates(os.fspath(dirname), prefix)
    for path in paths:
        try:
            read_any(path)
        except CorruptCheckpointError as exc:
            warnings.warn(skipping(path, exc), RuntimeWarning, stacklevel=2)
            continue
        return path
    return None


class CheckpointFolder:
    """One handler's files in `dirname`: the regular ones it keeps (`regular`, oldest first) and the best ones
    (`best`, as (score, step, path)), with `keep_last` (None: all) and `keep_best`; `rank(score)` orders scores,
    higher being better (the score itself, or minus it when lower is better).
    """

    def __init__(
        self, dirname: str, prefix: str, *, keep_last: int | None, keep_best: int, rank: Callable[[float], float]
    ) -> None:
        self.dirname = dirname
        self.prefix = prefix
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.rank = rank
        self.regular: list[tuple[int, str]] = []
        self.best: list[tuple[float, int, str]] = []
        self.adopted = False
        self._made = False
        self._warned_gone = False

    def regular_path(self, step: int, suffix: str = ".pt") -> str:
        """The name of the regular file (`suffix` ".dcp": folder) of iteration `step`."""
        return os.path.join(self.dirname, f"{self.prefix}_{step:09d}{suffix}")

    def best_path(self, step: int, score: float, suffix: str = ".pt") -> str:
        """The name of the best file (`suffix` ".dcp": folder) of iteration `step` with `score`."""
        return os.path.join(self.dirname, f"best_{self.prefix}_{step:09d}_score={score:.4g}{suffix}")

    def make(self) -> None:
        """Create the folder; CheckpointError saying why when it cannot be (a file of that name, no rights). A
        folder removed while the run goes is created again, with one warning."""
        if self._made and not os.path.isdir(self.dirname) and not self._warned_gone:
            self._warned_gone = True
            warnings.warn(
                f"the checkpoint folder {self.dirname} was removed while the run was going; it is created again "
                "for the next checkpoints (the earlier ones are gone)", RuntimeWarning, stacklevel=3,
            )
        self._made = True
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

    def qualifies(self, score: float | None) -> bool:
        """Whether a file with `score` belongs among the best `keep_best` (a NaN/Inf or missing score never does)."""
        if not self.keep_best or score is None or not math.isfinite(score):
            return False
        if len(self.best) < self.keep_best:
            return True
        return self.rank(score) > min(self.rank(entry[0]) for entry in self.best)

    def write(self, payload: dict[str, Any], targets: list[str], *, regular: bool, best: bool) -> str:
        """Save `payload` as `targets` (the best name first, then the regular one linked to it: a kill in between
        leaves a file that is both best and resumable), record them and evict; the last name written.

        Raises:
            CheckpointError: the write failed (the disk is full, ...); earlier files are untouched.
        """
        step, score = payload["step"], payload["score"]
        try:
            save_file(payload, targets[0])
            if len(targets) == 2:
                link_atomic(targets[0], targets[1])
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(self._write_failed(targets[0], step, exc)) from exc
        return self._book(step, score, targets, regular=regular, best=best)

    def write_sharded(self, state: dict[str, Any], payload: dict[str, Any] | None, targets: list[str], *,
                      regular: bool, best: bool) -> str:
        """`write` for a sharded checkpoint: every rank calls it with its `state` (`sharded.sharded_state`);
        rank 0 gives the manifest `payload` and keeps the books (the best folder first, the regular name a
        folder of hard links to it). Returns the last name written.

        Raises:
            CheckpointError: on every rank, when the write failed anywhere; earlier checkpoints are untouched.
        """
        sharded.save_sharded(targets[0], state, payload)
        return self.record_sharded(payload, targets, regular=regular, best=best)

    def record_sharded(self, payload: dict[str, Any] | None, targets: list[str], *, regular: bool,
                       best: bool) -> str:
        """The books of a committed sharded save (rank 0): the regular name linked to the best folder, the
        lists, the evictions. Returns the last name written."""
        if not dist.is_main() or payload is None:
            return targets[-1]
        step, score = payload["step"], payload["score"]
        try:
            if len(targets) == 2:
                sharded.link_folder(targets[0], targets[1])
        except OSError as exc:
            raise CheckpointError(self._write_failed(targets[1], step, exc)) from exc
        return self._book(step, score, targets, regular=regular, best=best)

    def _book(self, step: int, score: Any, targets: list[str], *, regular: bool, best: bool) -> str:
        """Record a written save (file or folder) in the regular and best lists, evict what retention no longer
        keeps, and return the last name written."""
        if regular:
            self.regular = [entry for entry in self.regular if entry[1] != targets[-1]] + [(step, targets[-1])]
        if best:
            self.best = [entry for entry in self.best if entry[2] != targets[0]] + [(score, step, targets[0])]
        self.evict()
        return targets[-1]

    def _write_failed(self, path: str, step: int, exc: BaseException) -> str:
        if disk_full(exc):
            return (
                f"could not write checkpoint {path} at iteration {step}: the disk is full (No space left on device) "
                f"in {self.dirname}; earlier checkpoints are untouched. Free some space there or save to a folder "
                "on another disk"
            )
        return f"could not write checkpoint {path} at iteration {step}: {exc}; earlier checkpoints are untouched"

    def tidy(self, step: int) -> None:
        """At the start of a resumed run: take over the folder's files up to `step` and delete those beyond
        keep_last / keep_best, which a kill between a save and its clean-up left."""
        earlier = CheckpointFolder(self.dirname, self.prefix, keep_last=self.keep_last, keep_best=self.keep_best,
                                   rank=self.rank)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # this handler's first save takes the folder over
            earlier.adopt(step)
        earlier.evict()

    def adopt(self, step: int) -> None:
        """Take over files an earlier (resumed) run left here, up to this iteration; leave later ones alone.

        Unreadable (corrupt) files count towards keep_last as the oldest, so they are deleted first. A best file
        that a kill kept from being made (or that is gone) is made again from its step's regular file."""
        self.adopted = True
        regular, best = scan(self.dirname, self.prefix)
        later = sorted(path for s, path in regular + best if s > step)
        if later:
            warnings.warn(
                f"{self.dirname} holds checkpoints from later iterations than this run's {step}: {listed(later)}. "
                "They are left alone, but Checkpoint.latest() will pick them; use a fresh folder or resume first",
                RuntimeWarning,
                stacklevel=5,
            )
        readable, unreadable, scored = [], [], []
        for s, path in sorted(regular):
            if s > step:
                continue
            try:
                scored.append((read_any(path, peek=True).get("score"), s, path))
                readable.append((s, path))
            except CheckpointError:
                unreadable.append((s, path))  # useless for resuming: first in line for eviction
        self.regular = unreadable + readable + self.regular
        for s, path in best:
            if s > step:
                continue
            try:
                saved_score = read_any(path, peek=True).get("score")
            except CheckpointError:
                continue
            if saved_score is not None and math.isfinite(saved_score):
                self.best.append((float(saved_score), s, path))
        self._remake_lost_best(scored)

    def _ranked(self, entries: list[tuple[float, int, str]]) -> list[tuple[float, int, str]]:
        """Best files best first (by `rank` of their score, then the later step)."""
        return sorted(entries, key=lambda entry: (self.rank(entry[0]), entry[1]), reverse=True)

    def _remake_lost_best(self, scored: list[tuple[float | None, int, str]]) -> None:
        """Link `best_` names to the regular files whose recorded score is among the best `keep_best` but that
        have no best file: what a kill between a save and its best link left (when the regular file came
        first, as in earlier versions), or a best file deleted by hand."""
        have = {s for _, s, _ in self.best}
        lost = [(float(score), s, path) for score, s, path in scored
                if self.keep_best and s not in have and score is not None and math.isfinite(score)]
        for entry in self._ranked(self.best + lost)[: self.keep_best]:
            if entry in lost:
                score, s, path = entry
                if sharded.is_folder_checkpoint(path):
                    target = self.best_path(s, score, sharded.SUFFIX)
                    sharded.link_folder(path, target)
                else:
                    target = self.best_path(s, score)
                    link_atomic(path, target)
                self.best.append((score, s, target))

    def evict(self) -> None:
        """Delete regular files beyond keep_last (oldest first) and best files beyond keep_best (worst first)."""
        doomed: list[str] = []
        if self.keep_last is not None and len(self.regular) > self.keep_last:
            cut = len(self.regular) - self.keep_last
            doomed += [path for _, path in self.regular[:cut]]
            self.regular = self.regular[cut:]
        if len(self.best) > self.keep_best:
            self.best = self._ranked(self.best)
            doomed += [path for *_, path in self.best[self.keep_best:]]
            self.best = self.best[: self.keep_best]
        keep = {path for _, path in self.regular} | {path for *_, path in self.best}
        for path in doomed:
            if path in keep:
                continue
            if sharded.is_folder_checkpoint(path):
                sharded.remove_folder(path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
