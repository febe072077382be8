"""The Engine: runs a process function over batches and fires events for handlers, with Ignite's semantics."""

from __future__ import annotations

import functools
import inspect
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from ember.engine.events import EVENT_TO_ATTR, EventEnum, Events, EventsList, FilteredEvent
from ember.engine.state import State

ProcessFunction = Callable[["Engine", Any], Any]


class _Terminate(Exception):
    """Raised inside the loop to unwind to TERMINATE."""


class _TerminateEpoch(Exception):
    """Raised inside the loop to unwind to TERMINATE_SINGLE_EPOCH."""


class _Handler:
    """One registered handler, with its engine-first binding resolved once at registration."""

    __slots__ = ("handler", "prefix", "args", "kwargs", "call", "filter", "attr", "every")

    def __init__(self, handler: Callable, prefix: tuple, args: tuple, kwargs: dict, flt: Any, attr: str | None):
        self.handler = handler
        self.prefix = prefix
        self.args = args
        self.kwargs = kwargs
        self.call = functools.partial(handler, *prefix, *args, **kwargs)
        self.filter = flt
        self.attr = attr
        self.every = getattr(flt, "every", 0) if attr is not None else 0


class RemovableEventHandle:
    """Returned by `add_event_handler`; `remove()` (or leaving a `with` block) detaches the handler."""

    def __init__(self, engine: Engine, event: Any, entry: _Handler) -> None:
        self._engine = engine
        self._event = event
        self._entry = entry

    def remove(self) -> None:
        """Detach the handler; removing twice is harmless."""
        handlers = self._engine._handlers.get(self._event, [])
        if self._entry in handlers:
            handlers.remove(self._entry)

    def __enter__(self) -> RemovableEventHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def describe(obj: Any, depth: int = 0) -> str:
    """A short description of a batch (types and tensor shapes) for error messages."""
    shape = getattr(obj, "shape", None)
    if shape is not None:
        return f"{type(obj).__name__}(shape={tuple(shape)}, dtype={getattr(obj, 'dtype', '?')})"
    if depth < 2 and isinstance(obj, (list, tuple)):
        inner = ", ".join(describe(o, depth + 1) for o in obj[:4])
        return f"{type(obj).__name__}[{inner}{', ...' if len(obj) > 4 else ''}]"
    if depth < 2 and isinstance(obj, Mapping):
        inner = ", ".join(f"{k!r}: {describe(v, depth + 1)}" for k, v in list(obj.items())[:4])
        return f"dict{{{inner}}}"
    return type(obj).__name__


class Engine:
    """Runs `process_function(engine, batch)` over data for some epochs, firing `Events` to attached handlers."""

    def __init__(self, process_function: ProcessFunction) -> None:
        if not callable(process_function):
            raise TypeError(f"process_function must be callable as fn(engine, batch), got {process_function!r}")
        self._process_function = process_function
        self.state = State()
        self.should_terminate: bool | str = False
        self.should_terminate_single_epoch: bool | str = False
        self._allowed: set[Any] = set(Events)
        self._event_to_attr: dict[Any, str] = dict(EVENT_TO_ATTR)
        self._fire_counts: dict[Any, int] = {}
        self._handlers: dict[Any, list[_Handler]] = {e: [] for e in Events}
        self._iter: Iterator | None = None
        self._init_iter: int | None = None

    @property
    def _event_handlers(self) -> dict[Any, list[tuple[Callable, tuple, dict]]]:
        """Ignite's view of the registered handlers: event -> [(handler, args, kwargs)] in running order."""
        return {e: [(h.handler, h.args, h.kwargs) for h in hs] for e, hs in self._handlers.items()}

    # ------------------------------------------------------------------ handlers
    def register_events(self, *event_names: str | EventEnum, event_to_attr: dict | None = None) -> None:
        """Allow custom events to be fired with `fire_event`; `event_to_attr` names the State counter of each."""
        for name in event_names:
            if not isinstance(name, (str, EventEnum)):
                raise TypeError(f"custom events must be str or EventEnum members, got {name!r}")
            self._allowed.add(name)
            self._handlers.setdefault(name, [])
            if event_to_attr and name in event_to_attr:
                attr = event_to_attr[name]
                self._event_to_attr[name] = attr
                if not hasattr(self.state, attr):
                    setattr(self.state, attr, 0)

    def has_registered_events(self, event: Any) -> bool:
        """True if `event` may be fired on this engine."""
        return event in self._allowed

    def add_event_handler(self, event: Any, handler: Callable, *args: Any, **kwargs: Any) -> RemovableEventHandle:
        """Call `handler(engine, *args, **kwargs)` (or `handler(*args, **kwargs)`) whenever `event` fires."""
        if isinstance(event, EventsList):
            handles = [self.add_event_handler(e, handler, *args, **kwargs) for e in event]
            return _MultiHandle(handles)  # type: ignore[return-value]
        flt = None
        if isinstance(event, FilteredEvent):
            event, flt = event.event, event.filter
        if event not in self._allowed:
            raise ValueError(
                f"Unknown event {event!r}: register custom events first with engine.register_events({event!r})"
            )
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {handler!r}")
        extra = ("exception",) if event is Events.EXCEPTION_RAISED else ()
        prefix = (self,) if self._takes_engine(handler, extra, args, kwargs) else ()
        attr = self._event_to_attr.get(event) if flt is not None else None
        entry = _Handler(handler, prefix, args, kwargs, flt, attr)
        self._handlers[event].append(entry)
        return RemovableEventHandle(self, event, entry)

    def _takes_engine(self, handler: Callable, extra: tuple, args: tuple, kwargs: dict) -> bool:
        try:
            sig = inspect.signature(handler)
        except (TypeError, ValueError):
            return True
        try:
            sig.bind(self, *extra, *args, **kwargs)
            return True
        except TypeError:
            pass
        try:
            sig.bind(*extra, *args, **kwargs)
            return False
        except TypeError:
            name = getattr(handler, "__qualname__", repr(handler))
            raise ValueError(
                f"Handler {name}{sig} cannot be called with the engine{' and the exception' if extra else ''}"
                f" plus args={args!r} kwargs={kwargs!r}; give it a first parameter for the engine"
            ) from None

    def on(self, event: Any, *args: Any, **kwargs: Any) -> Callable[[Callable], Callable]:
        """Decorator form of `add_event_handler`."""

        def decorator(fn: Callable) -> Callable:
            self.add_event_handler(event, fn, *args, **kwargs)
            return fn

        return decorator

    def has_event_handler(self, handler: Callable, event: Any | None = None) -> bool:
        """True if `handler` is attached (to `event`, or to any event)."""
        events = [event.event if isinstance(event, FilteredEvent) else event] if event is not None else self._handlers
        return any(h.handler == handler for e in events for h in self._handlers.get(e, []))

    def remove_event_handler(self, handler: Callable, event: Any) -> None:
        """Detach every registration of `handler` on `event`."""
        event = event.event if isinstance(event, FilteredEvent) else event
        handlers = self._handlers.get(event, [])
        kept = [h for h in handlers if h.handler != handler]
        if len(kept) == len(handlers):
            raise ValueError(f"{handler!r} is not attached to {event!r}")
        handlers[:] = kept

    def add(self, callback: Any) -> Any:
        """Attach a callback object (anything with `attach(engine)`) and return it."""
        callback.attach(self)
        return callback

    def fire_event(self, event: Any) -> None:
        """Fire a registered (custom or built-in) event now, running its handlers."""
        if event not in self._allowed:
            raise ValueError(f"Unknown event {event!r}: register it first with engine.register_events")
        self._fire(event)

    def _fire(self, event: Any, *event_args: Any) -> None:
        self._fire_handlers(self._handlers[event], event, event_args)

    def _fire_handlers(self, handlers: list[_Handler], event: Any, event_args: tuple = ()) -> None:
        if not isinstance(event, Events):
            self._fire_counts[event] = self._fire_counts.get(event, 0) + 1
        state = self.state
        for h in handlers[:]:
            if h.filter is not None:
                if h.every:
                    if getattr(state, h.attr) % h.every:
                        continue
                elif not h.filter(self, getattr(state, h.attr) if h.attr else self._fire_counts.get(event, 0)):
                    continue
            if event_args:
                h.handler(*h.prefix, *event_args, *h.args, **h.kwargs)
            else:
                h.call()

    # ------------------------------------------------------------------ control
    def terminate(self, skip_completed: bool = False) -> None:
        """Stop the run after the current iteration; TERMINATE then COMPLETED (unless skipped) fire."""
        self.should_terminate = "skip_completed" if skip_completed else True

    def terminate_epoch(self, skip_epoch_completed: bool = False) -> None:
        """End the current epoch after the current iteration; the run goes on with the next epoch."""
        self.should_terminate_single_epoch = "skip_epoch_completed" if skip_epoch_completed else True

    def state_dict(self) -> dict[str, Any]:
        """Counters needed to resume: epoch, iteration, max_epochs, epoch_length and seed."""
        s = self.state
        return {
            "epoch": s.epoch,
            "iteration": s.iteration,
            "max_epochs": s.max_epochs,
            "epoch_length": s.epoch_length,
            "seed": s.seed,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore counters so that the next `run(data)` resumes at `iteration` (mid-epoch included)."""
        missing = {"iteration", "max_epochs", "epoch_length"} - set(state_dict)
        if missing:
            raise ValueError(f"engine state_dict lacks {sorted(missing)}; got keys {sorted(state_dict)}")
        s = self.state
        s.iteration = int(state_dict["iteration"])
        s.epoch_length = state_dict["epoch_length"]
        s.max_epochs = state_dict["max_epochs"]
        s.seed = state_dict.get("seed")
        if s.epoch_length:
            s.epoch = s.iteration // s.epoch_length
        else:
            s.epoch = int(state_dict.get("epoch", 0))
        if s.max_epochs is not None and s.max_epochs < s.epoch:
            raise ValueError(f"max_epochs={s.max_epochs} is smaller than the restored epoch {s.epoch}")
        self._init_iter = None
        self._iter = None

    # ------------------------------------------------------------------ running
    def run(
        self, data: Iterable | None = None, max_epochs: int | None = None, epoch_length: int | None = None
    ) -> State:
        """Run over `data` until `max_epochs`; a finished engine restarts, an unfinished one continues."""
        if data is not None and not isinstance(data, Iterable):
            raise TypeError(f"data must be an iterable of batches, got {type(data).__name__}")
        s = self.state
        if s.max_epochs is not None and max_epochs is not None:
            if max_epochs < s.epoch:
                raise ValueError(
                    f"max_epochs={max_epochs} is smaller than the current epoch {s.epoch}; set "
                    "engine.state.max_epochs = None to start again from the beginning"
                )
            s.max_epochs = max_epochs
        if s.max_epochs is None or s.is_done():
            if epoch_length is None and data is not None and hasattr(data, "__len__"):
                epoch_length = len(data)
            if epoch_length is None and data is None:
                raise ValueError("epoch_length is required when data is None")
            if epoch_length is not None and epoch_length < 1:
                raise ValueError("data is empty: give at least one batch (or a positive epoch_length)")
            s.iteration = s.epoch = 0
            s.max_epochs = 1 if max_epochs is None else max_epochs
            s.epoch_length = epoch_length
            self._init_iter = None
        else:
            if s.epoch_length is not None and epoch_length is not None and epoch_length != s.epoch_length:
                raise ValueError(
                    f"epoch_length cannot change on resume: given {epoch_length}, state has {s.epoch_length}"
                )
            if s.epoch_length is None:
                s.epoch_length = epoch_length if epoch_length is not None else getattr(data, "__len__", lambda: None)()
            if self.should_terminate:
                self._init_iter = 0
        s.dataloader = data
        return self._run()

    def _new_iter(self, skip: int = 0) -> None:
        data = self.state.dataloader
        if data is None:
            self._iter = _nones(self.state.epoch_length)
            return
        epoch_index = max(self.state.epoch - 1, 0)
        sampler = _sampler_of(data)
        if hasattr(data, "set_epoch"):
            data.set_epoch(epoch_index)
        elif sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch_index)
        if skip and hasattr(data, "skip_batches"):
            data.skip_batches(skip)
            skip = 0
        elif skip and sampler is not None and hasattr(sampler, "skip_samples") and data.batch_size:
            sampler.skip_samples(skip * data.batch_size)
            skip = 0
        self._iter = iter(data)
        for _ in range(skip):
            next(self._iter)

    def _check(self) -> None:
        if self.should_terminate:
            raise _Terminate
        if self.should_terminate_single_epoch:
            raise _TerminateEpoch

    def _run(self) -> State:
        s = self.state
        self.should_terminate = self.should_terminate_single_epoch = False
        s.times["EPOCH_COMPLETED"] = s.times["COMPLETED"] = 0.0
        start = time.perf_counter()
        try:
            try:
                self._fire(Events.STARTED)
                self._check()
                while not s.is_done() and not self.should_terminate:
                    s.epoch += 1
                    t0 = time.perf_counter()
                    self._fire(Events.EPOCH_STARTED)
                    self._check()
                    if self._iter is None:
                        if self._init_iter is None:
                            self._init_iter = s.iteration % s.epoch_length if s.epoch_length else 0
                        self._new_iter(skip=self._init_iter)
                    self._run_epoch()
                    s.times["EPOCH_COMPLETED"] = time.perf_counter() - t0
                    if self.should_terminate_single_epoch != "skip_epoch_completed":
                        self._fire(Events.EPOCH_COMPLETED)
                        s.times["EPOCH_COMPLETED"] = time.perf_counter() - t0
                    self.should_terminate_single_epoch = False
                    self._check()
            except _Terminate:
                self._fire(Events.TERMINATE)
            except _TerminateEpoch:
                raise RuntimeError("terminate_epoch() cannot be called on STARTED or EPOCH_STARTED") from None
            s.times["COMPLETED"] = time.perf_counter() - start
            if self.should_terminate != "skip_completed":
                self._fire(Events.COMPLETED)
                s.times["COMPLETED"] = time.perf_counter() - start
        except BaseException as exc:
            self._iter = None
            if self._handlers[Events.EXCEPTION_RAISED]:
                self._fire(Events.EXCEPTION_RAISED, exc)
            raise
        self._iter = None
        return s

    def _run_epoch(self) -> None:
        s = self.state
        h = self._handlers
        get_started, get_completed = h[Events.GET_BATCH_STARTED], h[Events.GET_BATCH_COMPLETED]
        it_started, it_completed = h[Events.ITERATION_STARTED], h[Events.ITERATION_COMPLETED]
        has_data = s.dataloader is not None
        process = self._process_function
        counter = self._init_iter or 0
        self._init_iter = None
        restarted = False
        try:
            while True:
                s.batch = None
                if get_started and has_data and not restarted:
                    self._fire(Events.GET_BATCH_STARTED)
                    self._check()
                try:
                    s.batch = next(self._iter)  # type: ignore[arg-type]
                except StopIteration:
                    if s.epoch_length is None:
                        s.epoch_length = counter
                        break
                    if restarted:
                        if not s.is_done():
                            warnings.warn(
                                f"data ran out at iteration {s.iteration} before the run's "
                                f"{s.epoch_length * (s.max_epochs or 1)} iterations; stopping this epoch",
                                stacklevel=2,
                            )
                        break
                    self._new_iter()
                    restarted = True
                    continue
                restarted = False
                s.output = None
                if get_completed and has_data:
                    self._fire(Events.GET_BATCH_COMPLETED)
                    self._check()
                counter += 1
                s.iteration += 1
                if it_started:
                    self._fire_handlers(it_started, Events.ITERATION_STARTED)
                    self._check()
                try:
                    s.output = process(self, s.batch)
                except Exception as exc:
                    exc.add_note(f"ember: raised by the process function at epoch {s.epoch}, iteration "
                                 f"{s.iteration}; batch: {describe(s.batch)}")
                    raise
                if it_completed:
                    self._fire_handlers(it_completed, Events.ITERATION_COMPLETED)
                if self.should_terminate or self.should_terminate_single_epoch:
                    self._check()
                if counter == s.epoch_length:
                    break
        except _TerminateEpoch:
            self._fire(Events.TERMINATE_SINGLE_EPOCH)
            self._new_iter()


class _MultiHandle:
    """Handle for a handler attached to several events at once."""

    def __init__(self, handles: list[RemovableEventHandle]) -> None:
        self._handles = handles

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _nones(n: int | None) -> Iterator[None]:
    for _ in range(n or 0):
        yield None


def _sampler_of(data: Any) -> Any:
    batch_sampler = getattr(data, "batch_sampler", None)
    sampler = getattr(batch_sampler, "sampler", None)
    return sampler if sampler is not None else getattr(data, "sampler", None)
