"""The checkpoint file: a `torch.save` zip container, checked record by record against its CRC-32 on every read.

`torch.save` stores each record (the pickle, every tensor's bytes) uncompressed in a zip archive with the
record's CRC-32; `torch.load` never looks at it. `verify` does, over a read-only memory map of the file, so a
flipped bit in anything that `torch.load` would return is caught (at about a gigabyte per second, a small
share of a save plus a load; benchmarks/checkpoint_integrity.py measures it).
"""

from __future__ import annotations

import io
import mmap
import os
import pickle
import re
import struct
import time
import warnings
import zipfile
import zlib
from numbers import Real
from typing import Any

import torch

FORMAT = "ember-checkpoint"
FORMAT_VERSION = 1
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # a zip local file header, as zipfile reads it
_LOCAL_SIGNATURE = b"PK\x03\x04"
_MAX_LISTED = 20
MAX_DEPTH = 100  # containers nested deeper than this are refused: a real state_dict nests a handful of levels
_CONTAINERS = (dict, list, tuple, set, frozenset)
_END = object()


class CheckpointError(Exception):
    """A checkpoint could not be saved or loaded; the message names the file, the problem and what to do."""


class CorruptCheckpointError(CheckpointError):
    """The file is damaged (empty, truncated, a record that fails its CRC-32) or holds what no run could resume
    from (malformed structure, counters or RNG states, NaN/Inf weights); `resume_latest` falls back past it."""


class RecordingFile(io.FileIO):
    """An unbuffered file whose `write` writes everything it is given and keeps the OSError that stopped it:
    `torch.save` turns a failed write into a vague "unexpected pos" error, and this keeps the cause (ENOSPC)."""

    error: OSError | None = None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                done += super().write(view[done:]) or 0
        except OSError as exc:
            self.error = exc
            raise
        return done


def listed(items: list[str]) -> str:
    """`items` joined with commas, the first 20 of them (for messages that name files or tensors)."""
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none), for one-line reports."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _corrupt(path: str, size: int, detail: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"checkpoint file {path} ({size} bytes) is corrupt or incomplete: {detail}; nothing in it was executed "
        "or loaded. Load an earlier checkpoint"
    )


def verify(path: str, size: int, *, only: str | None = None) -> None:
    """Check every record of the zip container at `path` (or the records whose name ends with `only`)
    against its CRC-32; CorruptCheckpointError names the first bad record."""
    try:
        with open(path, "rb") as f, zipfile.ZipFile(f) as archive:
            infos = [i for i in archive.infolist() if only is None or i.filename.endswith(only)]
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped, memoryview(mapped) as view:
                for info in infos:
                    _check_record(view, info)
    except CorruptCheckpointError as exc:
        raise _corrupt(path, size, str(exc)) from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as exc:
        raise _corrupt(path, size, f"not a complete file written by torch.save ({first_line(exc).rstrip('.')})") \
            from None


def _check_record(view: memoryview, info: zipfile.ZipInfo) -> None:
    header = bytes(view[info.header_offset : info.header_offset + _LOCAL_HEADER.size])
    if len(header) != _LOCAL_HEADER.size or header[:4] != _LOCAL_SIGNATURE:
        raise CorruptCheckpointError(f"the header of record {info.filename} is damaged")
    fields = _LOCAL_HEADER.unpack(header)
    name_len, extra_len = fields[-2], fields[-1]
    start = info.header_offset + _LOCAL_HEADER.size
    if bytes(view[start : start + name_len]).decode("utf-8", "replace") != info.filename:
        raise CorruptCheckpointError(f"the name of record {info.filename} is damaged")
    start += name_len + extra_len
    if info.compress_type != zipfile.ZIP_STORED or start + info.file_size > len(view):
        raise CorruptCheckpointError(f"record {info.filename} is damaged (its size or storage method)")
    if zlib.crc32(view[start : start + info.file_size]) != info.CRC:
        raise CorruptCheckpointError(
            f"record {info.filename} fails its CRC-32 check (the file changed after it was written: bit rot, a "
            "damaged copy or disk)"
        )


def read(path: str, *, peek: bool = False) -> dict[str, Any]:
    """Verify and load an ember checkpoint with weights_only=True; `peek` checks only the pickle record and
    memory-maps tensors, so that just the metadata is read."""
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
    verify(path, size, only="data.pkl" if peek else None)
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
        raise _corrupt(path, size, f"not a complete file written by torch.save ({first_line(exc).rstrip('.')})") \
            from None
    except Exception as exc:
        raise _corrupt(path, size, f"truncated, or not written by torch.save ({first_line(exc).rstrip('.')})") \
            from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        keys = sorted(map(str, payload)) if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path} loads, but is not an ember checkpoint (it holds {keys}); for a bare state_dict use "
            "model.load_state_dict(torch.load(path, weights_only=True))"
        )
    version = payload.get("version", 0)
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}, newer than this ember reads ({FORMAT_VERSION}); "
            "upgrade ember to load it"
        )
    problem = malformed(payload)
    if problem:
        raise CorruptCheckpointError(f"checkpoint file {path} is malformed: {problem}. Load an earlier checkpoint")
    return payload


def is_count(value: Any) -> bool:
    """An int >= 0 that is not a bool: what counters must be."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def structure_problem(root: Any) -> str | None:
    """Why walking `root` could not be bounded by the file's size, or None.

    One iterative pass that visits each container once (by id): containers nested more than MAX_DEPTH deep
    (a recursive walk would overflow the stack), a container inside itself, or containers reused so often that
    a walk by paths (as `Optimizer.load_state_dict` does) would visit far more places than the file has
    entries: a list holding one sublist twice at each of 60 levels is 2^60 paths in 1.6 KB.
    """
    if not isinstance(root, _CONTAINERS):
        return None
    sizes: dict[int, int] = {}  # paths below each container walked, by id
    active = {id(root)}
    stack = [(root, iter(_children(root)))]
    totals = [1]
    edges = 0
    while stack:
        node, children = stack[-1]
        child = next(children, _END)
        if child is _END:
            stack.pop()
            active.discard(id(node))
            size = totals.pop()
            sizes[id(node)] = size
            if totals:
                totals[-1] += size
            continue
        edges += 1
        key = id(child)
        if not isinstance(child, _CONTAINERS):
            totals[-1] += 1
        elif key in active:
            return f"a {type(child).__name__} in it contains itself"
        elif key in sizes:
            totals[-1] += sizes[key]
        elif len(stack) >= MAX_DEPTH:
            return f"its lists and dicts nest more than {MAX_DEPTH} levels deep"
        else:
            active.add(key)
            stack.append((child, iter(_children(child))))
            totals.append(1)
    if sizes[id(root)] > 2 * edges + 1_000_000:
        return (f"it reuses the same lists or dicts so that a walk through it would visit {sizes[id(root)]:.3g} "
                f"places from {edges} entries (a file made to keep loading busy without end)")
    return None


def _children(node: Any) -> list[Any]:
    return [*node.keys(), *node.values()] if isinstance(node, dict) else list(node)


def malformed(payload: dict[str, Any]) -> str | None:
    """What is wrong with the structure of a loaded ember checkpoint, or None."""
    problem = structure_problem(payload)
    if problem:
        return problem
    objects = payload.get("objects")
    if not isinstance(objects, dict):
        return "it has no 'objects' dict of saved states" if objects is None else (
            f"its 'objects' is a {type(objects).__name__}, not a dict of saved states")
    if not all(isinstance(name, str) for name in objects):
        return "its 'objects' has names that are not strings"
    for key in ("step", "epoch"):
        if not is_count(payload.get(key)):
            return f"its {key!r} is {payload.get(key)!r}, not a count >= 0"
    score = payload.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, Real)):
        return f"its 'score' is {score!r}, not a number"
    if "rng" in payload and not isinstance(payload["rng"], dict):
        return f"its 'rng' is a {type(payload['rng']).__name__}, not a dict of generator states"
    if not isinstance(payload.get("epoch_end_pending", False), bool):
        return f"its 'epoch_end_pending' is {payload['epoch_end_pending']!r}, not True or False"
    ranks = payload.get("rng_ranks")
    if ranks is not None and not (isinstance(ranks, list) and all(isinstance(r, dict) for r in ranks)):
        return "its 'rng_ranks' is not a list of generator states"
    return None


def make_payload(
    *, step: int, epoch: int, score: float | None, monitor: str | None, objects: dict[str, Any],
    rng: dict[str, Any] | None = None, rng_ranks: list[dict[str, Any]] | None = None,
    epoch_end_pending: bool = False,
) -> dict[str, Any]:
    """The dict a checkpoint file holds, which `read` and `malformed` check.

    Args:
        step: the trainer's iteration when it was saved.
        epoch: the trainer's epoch when it was saved.
        score: the monitored value of these weights, or None.
        monitor: the name of the monitored metric, or None (none, or a function of the engine).
        objects: each saved object's state_dict, by name.
        rng: the process's generator states (`ember.utils.rng.get_rng_state`), when saved.
        rng_ranks: every rank's generator states under torchrun, when saved.
        epoch_end_pending: saved at an epoch's last iteration before that epoch's end (its EPOCH_COMPLETED
            handlers) ran: loading it has the trainer run that end first (`State.epoch_end_pending`).
    """
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "step": step,
        "epoch": epoch,
        "score": score,
        "monitor": monitor,
        "saved_at": time.time(),
        "torch_version": str(torch.__version__),
        "objects": objects,
        "epoch_end_pending": epoch_end_pending,
    }
    if rng is not None:
        payload["rng"] = rng
        if rng_ranks is not None:
            payload["rng_ranks"] = rng_ranks
    return payload
