"""Argument checks shared by the handlers: each raises ValueError naming the argument, what it must be and
the value it got (`every must be a positive integer, got 0`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def is_int(value: Any) -> bool:
    """An int that is not a bool (`True` is an int to Python, never a count to a caller)."""
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(name: str, value: Any, what: str = "a positive integer", *, optional: bool = False) -> None:
    """Raise unless `value` is an int >= 1 (or None when `optional`); `what` is the message's requirement."""
    if optional and value is None:
        return
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be {what}, got {value!r}")


def non_negative_int(name: str, value: Any, what: str = "an integer >= 0", *, optional: bool = False) -> None:
    """Raise unless `value` is an int >= 0 (or None when `optional`); `what` is the message's requirement."""
    if optional and value is None:
        return
    if not is_int(value) or value < 0:
        raise ValueError(f"{name} must be {what}, got {value!r}")


def non_negative(name: str, value: float, what: str = ">= 0") -> None:
    """Raise when the number `value` is below 0."""
    if value < 0:
        raise ValueError(f"{name} must be {what}, got {value!r}")


def one_of(name: str, value: Any, choices: Mapping[str, str]) -> None:
    """Raise unless `value` is a key of `choices`, whose values say what each choice means ("" for nothing):
    `mode must be 'min' (lower is better) or 'max' (higher is better), got 'up'`."""
    if value not in choices:
        listed = " or ".join(f"{c!r} ({meaning})" if meaning else repr(c) for c, meaning in choices.items())
        raise ValueError(f"{name} must be {listed}, got {value!r}")
