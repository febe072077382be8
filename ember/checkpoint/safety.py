"""The weights_only probe: a checkpoint is only written when `torch.load(weights_only=True)` takes it back.

A state_dict that holds an object of the user's (a dataclass, a numpy scalar) saves fine and then refuses to
load at resume time, when nothing can be done about it. `probe` loads every new file once before it gets
its name and, when the load is refused, says which value of the payload is to blame (`find_unsafe`).
"""

from __future__ import annotations

import pickle
import re
import warnings
from typing import Any

import torch

from ember.checkpoint.format import CheckpointError, first_line

SAFE_LEAVES = (int, float, bool, str, bytes, complex, type(None), torch.dtype, torch.device)


def find_unsafe(obj: Any, where: str) -> str | None:
    """Where in a payload the first value sits that `torch.load(weights_only=True)` would refuse."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            found = find_unsafe(key, f"{where} key") or find_unsafe(value, f"{where}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(obj, (list, tuple, set, frozenset)):
        for index, value in enumerate(obj):
            found = find_unsafe(value, f"{where}[{index}]")
            if found:
                return found
        return None
    if isinstance(obj, torch.Tensor) or type(obj) in SAFE_LEAVES:
        return None
    return f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}"


def probe(tmp: str, payload: dict[str, Any], path: str) -> None:
    """Load the just-written `tmp` (memory-mapped) with weights_only=True; CheckpointError, naming `path` and
    the value to blame, when it is refused."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.load(tmp, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        where = find_unsafe(payload, "checkpoint")
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"it contains {found.group(1)}" if found else first_line(exc)
        raise CheckpointError(
            f"refusing to write {path}: it would not load with torch.load(weights_only=True): {what}"
            f"{f' ({where})' if where else ''}. Make state_dict() return tensors, numbers, strings and "
            "lists/dicts of them"
        ) from None
