"""Capture and restore every global random number generator, in a form `torch.load(weights_only=True)` accepts."""

from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np
import torch


def get_rng_state() -> dict[str, Any]:
    """The states of python `random`, numpy's global RNG, torch CPU and every initialised CUDA device.

    The Mersenne Twister words are int64 tensors rather than lists: `torch.load(weights_only=True)` unpickles
    a list's 1,250 numbers one by one in Python (about 2 ms on each load), a tensor at once."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_key, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss_next": py_gauss},
        "numpy": {
            "bit_generator": str(np_name),
            "key": torch.from_numpy(np_key.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    # Only when CUDA is already in use: querying it otherwise would create a context on every GPU.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _words(words: Any) -> list[int]:
    """Mersenne Twister words saved as a tensor (or, by earlier versions, a list) as a list of ints."""
    return words.tolist() if isinstance(words, torch.Tensor) else list(words)


def _python_state(py: dict[str, Any]) -> tuple:
    return int(py["version"]), tuple(_words(py["state"])), py["gauss_next"]  # setstate refuses non-ints


def _numpy_state(npst: dict[str, Any]) -> tuple:
    key = np.asarray(_words(npst["key"]), dtype=np.uint32)
    return npst["bit_generator"], key, int(npst["pos"]), int(npst["has_gauss"]), float(npst["cached_gaussian"])


_SCRATCH: dict[str, Any] = {}  # generators to try states on, made once (seeding a RandomState takes ~0.1 ms)


def rng_state_problem(state: Any) -> str | None:
    """What `set_rng_state(state)` would fail on, found by restoring it into scratch generators (the global
    ones are not touched), or None when it would succeed."""
    if not _SCRATCH:
        _SCRATCH.update(python=random.Random(0), numpy=np.random.RandomState(0), torch=torch.Generator())
    if not isinstance(state, dict):
        return f"it is a {type(state).__name__}, not a dict of generator states"
    part = ""
    try:
        part = "python"
        if part in state:
            _SCRATCH[part].setstate(_python_state(state[part]))
        part = "numpy"
        if part in state:
            _SCRATCH[part].set_state(_numpy_state(state[part]))
        part = "torch"
        if part in state:
            _SCRATCH[part].set_state(state[part].cpu())
        part = "cuda"
        cuda = state.get(part, [])
        if not isinstance(cuda, (list, tuple)) or not all(
            isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda
        ):
            raise TypeError("not a list of byte tensors")
    except Exception as exc:  # each generator raises its own kind (TypeError, ValueError, KeyError, ...)
        return f"its {part} generator state is unusable ({type(exc).__name__}: {str(exc)[:120]})"
    return None


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generators from `get_rng_state()` output; parts that are absent are left as they are."""
    if "python" in state:
        random.setstate(_python_state(state["python"]))
    if "numpy" in state:
        np.random.set_state(_numpy_state(state["numpy"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if len(cuda_states) != count:
            warnings.warn(
                f"the checkpoint holds CUDA RNG states for {len(cuda_states)} devices but {count} are visible; "
                f"restoring the first {min(count, len(cuda_states))}",
                RuntimeWarning,
                stacklevel=2,
            )
        for index, cuda_state in enumerate(cuda_states[:count]):
            torch.cuda.set_rng_state(cuda_state.cpu(), index)
