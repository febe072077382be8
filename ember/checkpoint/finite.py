"""NaN/Inf checks of weights and optimizer state, with one host sync per device when all is well: a save
must not keep weights no run can continue from, and a load must not restore them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ember import distributed as dist


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether no tensor holds NaN or Inf, with one host sync per device: a tensor's sum is finite when all its
    values are (a reduction far cheaper than `isfinite`'s mask); a sum that is not (NaN/Inf, or an overflow)
    gets the exact check."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        by_device.setdefault(t.device, []).append(t.detach())
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
    return [name for name, t in named if not bool(torch.isfinite(t).all())]


def float_tensors(state: Any, where: str) -> Iterator[tuple[str, torch.Tensor]]:
    """The floating-point (and complex) tensors in a nested state, each named by its path from `where`."""
    if isinstance(state, torch.Tensor):
        if state.is_floating_point() or state.is_complex():
            yield where, state
    elif isinstance(state, Mapping):
        for key, value in state.items():
            yield from float_tensors(value, f"{where}.{key}")
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            yield from float_tensors(value, f"{where}.{i}")


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
