"""HandlerStates: the state of every stateful handler attached to an engine, saved and restored as one object."""

from __future__ import annotations

import warnings
from collections.abc import Container, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn, optim

from ember.engine import Engine, Events
from ember.engine.order import FIRST, unwrap


def registered_handlers(engine: Any) -> Iterator[Any]:
    """Every handler callable attached to `engine` (ember's or Ignite's), in event order then attachment order;
    a handler attached to a filtered event is yielded itself, not its wrapper (`unwrap`)."""
    for entries in list(engine._event_handlers.values()):
        for fn, *_ in list(entries):
            yield unwrap(fn)[0]


def _owner(fn: Any) -> Any:
    """The object whose state a handler callable carries: itself, the object of a bound method, or None."""
    for candidate in (fn, getattr(fn, "__self__", None), getattr(fn, "func", None)):
        if candidate is None or isinstance(candidate, (Engine, nn.Module, optim.Optimizer, HandlerStates)):
            continue
        if callable(getattr(candidate, "state_dict", None)) and callable(getattr(candidate, "load_state_dict", None)):
            return candidate
    return None


class HandlerStates:
    """The `state_dict()` of every handler attached to `engine` that has `state_dict`/`load_state_dict`.

    `Checkpoint` saves one of these under "handlers" by default, so a resumed run continues EarlyStopping's
    patience, a scheduler's position, a printer's or timer's window mid-epoch, exactly where it stopped.
    Handlers are found when the state is taken, so those attached after the Checkpoint count too.

    Keys are the handler's class name, plus `:<name>` when it has a string `name` attribute, plus `#k` for
    the k-th handler with the same class and name: they do not change when other handlers are added.
    Restoring waits for the engine's next STARTED (where it runs first), so that handlers attached after the
    checkpoint was loaded, as `ember.fit` attaches its own, get their state too. A handler in the checkpoint
    but not attached, or attached but not in the checkpoint, gives a warning naming it and nothing fails.
    """

    ember_order = FIRST

    def __init__(self, engine: Any, exclude: Iterable[Any] = ()) -> None:
        self.engine = engine
        self._exclude = list(exclude)
        self._pending: dict[str, Any] | None = None
        self._restore_handle: Any = None

    def handlers(self) -> dict[str, Any]:
        """The stateful handlers attached now, by their stable key."""
        skip = {id(obj) for obj in self._exclude}
        found: dict[str, Any] = {}
        counts: dict[str, int] = {}
        for fn in registered_handlers(self.engine):
            obj = _owner(fn)
            if obj is None or id(obj) in skip:
                continue
            skip.add(id(obj))
            name = getattr(obj, "name", None)
            base = type(obj).__name__ + (f":{name}" if isinstance(name, str) and name else "")
            counts[base] = counts.get(base, 0) + 1
            found[base if counts[base] == 1 else f"{base}#{counts[base]}"] = obj
        return found

    def state_dict(self) -> dict[str, Any]:
        """Each stateful handler's `state_dict()`, by key."""
        return {key: obj.state_dict() for key, obj in self.handlers().items()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Check the saved states' shape now; hand them to the handlers at the engine's next STARTED."""
        if not isinstance(state_dict, Mapping) or not all(isinstance(k, str) for k in state_dict):
            raise ValueError(f"handler states must be a dict of handler key -> state, got {type(state_dict).__name__}")
        self._pending = dict(state_dict)
        if self._restore_handle is None:
            self._restore_handle = self.engine.add_event_handler(Events.STARTED, self._restore)

    def _restore(self, engine: Any) -> None:
        pending, self._pending = self._pending, None
        self._restore_handle.remove()
        self._restore_handle = None
        if pending is None:
            return
        attached = self.handlers()
        for key, obj in attached.items():
            if key in pending:
                try:
                    obj.load_state_dict(pending[key])
                except Exception as exc:
                    raise ValueError(
                        f"cannot restore the state of handler {key} from the checkpoint: {exc}; the handler "
                        "changed since the checkpoint was written: resume with the same handlers"
                    ) from exc
        new = sorted(set(attached) - set(pending))
        gone = sorted(set(pending) - set(attached))
        if new:
            warnings.warn(f"handlers not in the checkpoint start afresh: {', '.join(new)}", RuntimeWarning,
                          stacklevel=2)
        if gone:
            warnings.warn(f"handler states in the checkpoint but no such handler attached, ignored: {', '.join(gone)}",
                          RuntimeWarning, stacklevel=2)


def implicit_objects(engine: Engine | None, objects: Mapping[str, Any], *, saved: Container[str] | None = None,
                     handlers: bool = True) -> dict[str, Any]:
    """The objects a checkpoint of `engine` holds without their being named in `objects`: the one rule, for
    saving and loading alike.

    They are the engine's fp16 GradScaler (`engine.scaler`) as "scaler" ("trainer_scaler" when that name is
    taken) and, with `handlers`, the state of its stateful handlers as "handlers" (`HandlerStates`). A save
    (`saved=None`) takes every one that applies; a load only those the file holds (`saved`: its names).
    """
    extra: dict[str, Any] = {}
    if engine is None:
        return extra
    scaler = getattr(engine, "scaler", None)
    if isinstance(scaler, torch.amp.GradScaler) and not any(obj is scaler for obj in objects.values()):
        name = "scaler" if "scaler" not in objects else "trainer_scaler"
        if saved is None or name in saved:
            extra[name] = scaler
    if handlers and "handlers" not in objects and (saved is None or "handlers" in saved):
        extra["handlers"] = HandlerStates(engine, exclude=[*objects.values(), *extra.values()])
    return extra
