"""NaN/Inf checks of weights and optimizer state, with one host sync per device when all is well: a save
must not keep weights no run can continue from, and a load must not restore them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ember import distributed as dist


def stored(t: torch.Tensor) -> torch.Tensor:
    """The elements `t` views, each once: a view that repeats elements (an `expand`, a zero stride: 10^14
    elements over one stored value) is checked through the span of storage it covers, so a check costs what
    the file holds, not what the view shows."""
    t = t.detach()
    if t.numel() <= 1 or t.is_contiguous():
        return t
    span = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    return t.as_strided((span,), (1,), t.storage_offset()) if span < t.numel() else t


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether no tensor holds NaN or Inf, with one host sync per device: a tensor's sum is finite when all its
    values are (a reduction far cheaper than `isfinite`'s mask); a sum that is not (NaN/Inf, or an overflow)
    gets the exact check."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        by_device.setdefault(t.device, []).append(stored(t))
    for ts in by_device.values():
        sums = torch.stack([t.sum().to(torch.float64) if not t.is_complex() else t.sum().abs().double() for t in ts])
        if not bool(torch.isfinite(sums).all()):
            bad = ~torch.isfinite(sums)
            if any(not bool(torch.isfinite(t).all()) for t, b in zip(ts, bad.tolist()) if b):
                return False
    return True


def non_finite(named: list[tuple[str, torch.Tensor]]) -> list[str]:
    """The names of the tensors in `named` that hold NaN or Inf (one sync per device when there are none)."""
    if all_finite([t for _, t in named]):
        return []
    return [name for name, t in named if not bool(torch.isfinite(stored(t)).all())]


def float_tensors(state: Any, where: str) -> Iterator[tuple[str, torch.Tensor]]:
    """The floating-point (and complex) tensors in a nested state, each named by its path from `where`."""
    return ((name, t) for name, t in tensors(state, where) if t.is_floating_point() or t.is_complex())


def tensors(state: Any, where: str) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors in a nested state, each named by its path from `where`; each tensor and container is
    visited once (by id), without recursion, so the walk is as long as the state."""
    seen: set[int] = set()
    stack: list[tuple[Any, str]] = [(state, where)]
    while stack:
        value, name = stack.pop()
        if id(value) in seen:
            continue
        if isinstance(value, torch.Tensor):
            seen.add(id(value))
            yield name, value
        elif isinstance(value, Mapping):
            seen.add(id(value))
            stack.extend((v, f"{name}.{k}") for k, v in reversed(list(value.items())))
        elif isinstance(value, (list, tuple)):
            seen.add(id(value))
            stack.extend((v, f"{name}.{i}") for i, v in reversed(list(enumerate(value))))


def modules_non_finite(objects: Mapping[str, Any]) -> list[str]:
    """`name.parameter` of the floating-point parameters and buffers of the modules among `objects` that hold
    NaN/Inf (one host sync per device when all is well). Of an FSDP2 model only this rank's shards are looked at
    (no communication): the ranks combine their answers where they must agree."""
    named: list[tuple[str, torch.Tensor]] = []
    for name, obj in objects.items():
        if isinstance(obj, nn.Module):
            module = dist.unwrap(obj)
            for key, t in [*module.named_parameters(), *module.named_buffers()]:
                if t.is_floating_point() or t.is_complex():
                    t = t.to_local() if hasattr(t, "to_local") else t  # a DTensor: this rank's shard
                    named.append((f"{name}.{key}", t.detach()))
    return non_finite(named)
