"""The Engine: Ignite's Engine with ember's loop (precomputed dispatch, exact mid-epoch resume).

`ember.Engine` subclasses `ignite.engine.Engine` and keeps all of Ignite's API and bookkeeping
(`_event_handlers`, `_allowed_events`, `last_event_name`, `state_dict_user_keys`, `logger`, the `should_*`
flags, `interrupt()`, `set_data`, `run(max_iters=)`, the state_dict format), so every Ignite handler, metric
and logger attaches to it. It replaces only the run loop and the dispatch of the four per-iteration events:
their handlers are compiled into plain calls (see `ember.engine.dispatch`), rebuilt only when handlers change,
and termination flags are checked through one attribute that is set only when a flag is raised.
"""

from __future__ import annotations

import time
import warnings
import weakref
from collections.abc import Callable, Generator, Iterable, Mapping
from typing import Any, Literal

from ignite.engine import Engine as IgniteEngine
from ignite.engine.engine import _EngineTerminateException, _EngineTerminateSingleEpochException, _get_none_data_iter
from ignite.engine.events import Events, EventsList, RemovableEventHandle, State
from ignite.engine.utils import _to_hours_mins_secs

from ember.engine import order as order_levels
from ember.engine import plan, resumable
from ember.engine.dispatch import HandlerDict, compile_dispatch, marker
from ember.engine.errors import note_step_failure
from ember.engine.plan import place_last_entry
from ember.engine.state import State as EmberState

ProcessFunction = Callable[["Engine", Any], Any]
HOT_EVENTS = (Events.GET_BATCH_STARTED, Events.GET_BATCH_COMPLETED, Events.ITERATION_STARTED,
              Events.ITERATION_COMPLETED)
TerminateFlag = bool | Literal["skip_completed"]
"""`should_terminate`: False, True, or "skip_completed" after `terminate(skip_completed=True)`."""
EpochTerminateFlag = bool | Literal["skip_epoch_completed"]
"""`should_terminate_single_epoch`: False, True, or "skip_epoch_completed" (skip_epoch_completed=True)."""


def _flag(name: str) -> property:
    """A termination flag that also raises the engine's one `_attn` attribute, which the loop polls.

    The flags keep Ignite's values (`TerminateFlag`, `EpochTerminateFlag`): Ignite's API and its own test suite
    read the string that says which closing event the stop skips.
    """
    slot = "_" + name

    def get(self: Engine) -> TerminateFlag | EpochTerminateFlag:
        return self.__dict__.get(slot, False)

    def set_(self: Engine, value: TerminateFlag | EpochTerminateFlag) -> None:
        self.__dict__[slot] = value
        if value:
            self._attn = True

    return property(get, set_, doc=f"Ignite's `{name}` flag.")


class Engine(IgniteEngine):
    """Runs `process_function(engine, batch)` over data for some epochs, firing `Events` to attached handlers.

    A drop-in `ignite.engine.Engine`: same events, order, counters, filters, handles, state and state_dict.
    Differences: resuming mid-epoch from a state_dict skips the batches already seen (Ignite replays the
    epoch from its first batch), ember's own exception observers never swallow an exception, and `run()` after
    a run that raised inside an epoch finishes that epoch (see `_internal_run_as_gen`; Ignite's returns without
    running, and its next `run()` counts the rest of the epoch as a new one).
    """

    should_terminate = _flag("should_terminate")
    should_terminate_single_epoch = _flag("should_terminate_single_epoch")
    should_interrupt = _flag("should_interrupt")

    def __init__(self, process_function: ProcessFunction) -> None:
        self._attn = True
        self._dispatch: tuple | None = None
        self._compiled: tuple | None = None  # per hot event, the handler entries its dispatch function runs
        self._raised_in: tuple[int, int, bool] | None = None  # (epoch, iteration, in the step) of a failed run
        self._step_raised_at: int | None = None  # the iteration whose step raised, in this run
        super().__init__(process_function)
        self.state: EmberState = EmberState()  # the one place an Engine creates its run's state

    # ------------------------------------------------------------------ bookkeeping
    @property
    def _event_handlers(self) -> HandlerDict:
        return self.__dict__["_ember_handlers"]

    @_event_handlers.setter
    def _event_handlers(self, value: Mapping) -> None:
        self.__dict__["_ember_handlers"] = HandlerDict(self, value)
        self._handlers_changed()

    def _handlers_changed(self) -> None:
        self._dispatch = None
        self._attn = True

    def _handler_wrapper(self, handler: Callable, event_name: Any, event_filter: Callable) -> Callable:
        wrapper = super()._handler_wrapper(handler, event_name, event_filter)
        wrapper._ember_filtered = (handler, event_filter)  # type: ignore[attr-defined]
        return wrapper

    def _assert_allowed_event(self, event_name: Any) -> None:
        if event_name not in self._allowed_events:
            self.logger.error(f"attempt to add event handler to an invalid event {event_name}")
            raise ValueError(
                f"Event {event_name} is not a valid event for this {self.__class__.__name__}. Register custom "
                f"events first with engine.register_events(...); built-in events come from ignite.engine.Events"
            )

    def add_event_handler(self, event_name: Any, handler: Callable, *args: Any, **kwargs: Any) -> RemovableEventHandle:
        """Ignite's `add_event_handler`, with the handler placed by its declared `ember_order` (see
        `ember.engine.order`): after every handler of the event with a lower or equal order, so ties keep
        attachment order."""
        handle = super().add_event_handler(event_name, handler, *args, **kwargs)
        if not isinstance(event_name, EventsList):
            place_last_entry(self._event_handlers[event_name])
        return handle

    def add(self, callback: Any, order: int | None = None) -> Any:
        """Attach a callback object (anything with `attach(engine)`) and return it; `order` places all its handlers.

        `order` is stored as the callback's `ember_order` attribute (any `order` attribute of its own is left alone).
        """
        if order is not None:
            setattr(callback, order_levels.ATTRIBUTE, order)
        callback.attach(self)
        return callback

    def describe(self) -> str:
        """The plan of a run: per event, in firing order, the handlers that will run, in order, with their order
        values and filters (`print(trainer.describe())`, or `ember train NAME --show-plan`)."""
        return plan.describe(self)

    def _hot_dispatch(self) -> tuple:
        """The per-iteration events' dispatch functions (None where nothing runs), rebuilt after a change."""
        if self._dispatch is None:
            if type(self)._fire_event is not Engine._fire_event:
                self._dispatch = tuple(_fire_through(self, ev) for ev in HOT_EVENTS)
                self._compiled = None
            else:
                handlers = self._event_handlers
                self._compiled = tuple(tuple(handlers.get(ev) or ()) for ev in HOT_EVENTS)
                self._dispatch = tuple(compile_dispatch(self, ev, entries or None)
                                       for ev, entries in zip(HOT_EVENTS, self._compiled))
        return self._dispatch

    def _fire_event(self, event_name: Any, *event_args: Any, **event_kwargs: Any) -> None:
        """Ignite's `_fire_event`: every handler of the event, including those added while it fires, each once.

        As on Ignite, a handler added by a handler of the same event runs in that same firing and one removed
        before its turn does not run. Ignite walks the list by position, so a handler that removes itself makes
        it skip the next one, and one that ember places before the running handler (by its order) would make the
        running one run again: here each entry runs once, and an entry placed earlier runs next.
        """
        self.logger.debug(f"{self.state.epoch} | {self.state.iteration}, Firing handlers for event {event_name}")
        self.last_event_name = event_name
        entries = self._event_handlers[event_name]  # this list, as Ignite walks it (removal replaces the list)
        done: dict[tuple, tuple] = {}
        i = 0
        while i < len(entries):
            entry = entries[i]
            i += 1
            if _key(entry) in done:
                continue
            done[_key(entry)] = entry
            _call(entry, event_args, event_kwargs)
            if i > len(entries) or entries[i - 1] is not entry:
                i = 0  # the list changed before this position: look again from the start (run entries skip)

    def _run_added_while_firing(self, index: int) -> None:
        """Run the handlers added to hot event `HOT_EVENTS[index]` while its compiled dispatch ran, as Ignite does
        (in that same firing, after the others). Called on the slow path only, when the handlers changed."""
        if self._compiled is None:
            return  # dispatch through `_fire_event`, which saw them
        event = HOT_EVENTS[index]
        done = {_key(entry): entry for entry in self._compiled[index]}
        while True:
            entry = next((e for e in self._event_handlers.get(event, ()) if _key(e) not in done), None)
            if entry is None:
                return
            done[_key(entry)] = entry
            self.last_event_name = event
            _call(entry, (), {})

    # ------------------------------------------------------------------ exceptions
    def _handle_exception(self, e: BaseException) -> None:
        """Ignite's rule (an attached `EXCEPTION_RAISED` handler handles it), with observers not counting."""
        handlers = self._event_handlers
        dispatched = e.__dict__.setdefault("_ember_dispatched", set())
        if Events.EXCEPTION_RAISED not in handlers or id(self) in dispatched:
            raise e  # no handler, or a handler re-raised it: Ignite would fire the event again, ember once
        dispatched.add(id(self))
        handled = any(not marker(f, "_ember_observer") for f, _, _ in handlers[Events.EXCEPTION_RAISED])
        self._fire_event(Events.EXCEPTION_RAISED, e)
        if not handled:
            raise e

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Any:
        """Ignite's state_dict, plus `seed` when one is set (Ignite's loader accepts the extra key)."""
        sd = super().state_dict()
        if self.state.seed is not None and "seed" not in sd:
            sd["seed"] = self.state.seed
        return sd

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Ignite's load_state_dict; also restores `seed`, and the next run resumes at the saved iteration."""
        super().load_state_dict(state_dict)
        self._raised_in = None  # the loaded counters replace those of a run that raised
        if "seed" in state_dict:
            self.state.seed = state_dict["seed"]

    def _setup_engine(self) -> None:
        """Like Ignite's, but a run resumed mid-epoch skips the batches of this epoch already processed."""
        if self._init_iter is None:
            self._init_iter = self.state.iteration % self.state.epoch_length if self.state.epoch_length else 0
        self._new_iter(skip=self._init_iter)

    def _setup_dataloader_iter(self) -> None:
        if type(self)._setup_engine is not Engine._setup_engine:
            super()._setup_dataloader_iter()  # the subclass orders its data itself (DeterministicEngine)
        else:
            self._new_iter()

    def _new_iter(self, skip: int = 0) -> None:
        """A fresh data iterator for the current epoch, `skip` batches in, through `ember.engine.resumable`."""
        data = self.state.dataloader
        if data is None:
            if self.state.epoch_length is None:
                raise RuntimeError("epoch_length should be provided if data is None")
            self._dataloader_iter = _get_none_data_iter(self.state.epoch_length - skip)
            return
        skip = resumable.start_epoch(data, max(self.state.epoch - 1, 0), skip)
        self._dataloader_iter = iter(data)
        for _ in range(skip):
            next(self._dataloader_iter)

    # ------------------------------------------------------------------ running
    def run(
        self,
        data: Iterable | None = None,
        max_epochs: int | None = None,
        max_iters: int | None = None,
        epoch_length: int | None = None,
    ) -> State:
        """Ignite's `run`, with ember's clearer errors for empty or non-iterable data; a state loaded before the
        last epoch's end (`state.epoch_end_pending`) runs that end and COMPLETED rather than starting over."""
        if data is not None and not isinstance(data, Iterable):
            raise TypeError(f"Argument data should be iterable (a list or DataLoader of batches), got "
                            f"{type(data).__name__}")
        state = self.state
        if getattr(state, "epoch_end_pending", False) and max_epochs in (None, state.max_epochs) and max_iters is None \
                and state.max_epochs is not None and self._is_done(state) and self._internal_run_generator is None:
            # Loaded at the last iteration before the last epoch's end: run just that end (Ignite would restart).
            state.dataloader = data
            return self._internal_run()
        return super().run(data, max_epochs=max_epochs, max_iters=max_iters, epoch_length=epoch_length)

    def _take_pending_epoch_end(self) -> bool:
        """Whether the state was loaded at an epoch's last iteration before that epoch's end ran (clearing it)."""
        state = self.state
        pending = bool(getattr(state, "epoch_end_pending", False))
        state.epoch_end_pending = False
        return pending and bool(state.epoch_length) and state.iteration > 0 \
            and state.iteration % state.epoch_length == 0

    def _internal_run(self) -> State:
        """Ignite's, except that a run that raised leaves no spent generator behind: the next `run` starts."""
        if self._internal_run_generator is None:
            self._internal_run_generator = self._internal_run_as_gen()
        try:
            return next(self._internal_run_generator)
        except StopIteration as out:
            self._internal_run_generator = None
            return out.value
        except BaseException:
            self._internal_run_generator = None
            raise

    def _attend(self, fired: int) -> Generator:
        """The slow path, taken when `_attn` is up after hot event `HOT_EVENTS[fired]`: a termination flag, an
        interrupt, or changed handlers (those added to that event while it fired run now, as on Ignite)."""
        self._attn = False
        if self._dispatch is None:
            self._run_added_while_firing(fired)
        yield from self._maybe_terminate_or_interrupt()
        if self.should_terminate or self.should_terminate_single_epoch or self.should_interrupt:
            self._attn = True

    def _resume_raised_epoch(self) -> None:
        """After a run that raised inside an epoch, go back into that epoch instead of starting the next one.

        The loop adds 1 to `state.epoch` before each epoch, so the epoch the run raised in is counted back, and
        the batches it completed are skipped (`_setup_engine`). When the step itself raised, its iteration is
        counted back too, so that batch runs again; when a handler raised, the batch is not run twice. Only when
        the counters are still those the run raised at: a new state or a loaded state_dict starts as Ignite's.
        """
        raised, self._raised_in = self._raised_in, None
        if raised is None or (self.state.epoch, self.state.iteration) != raised[:2] or self.state.epoch < 1:
            return
        self.state.epoch -= 1
        if raised[2]:
            self.state.iteration -= 1

    def _internal_run_as_gen(self) -> Generator[Any, None, State]:
        self.should_terminate = self.should_terminate_single_epoch = self.should_interrupt = False
        self._resume_raised_epoch()
        self._step_raised_at, in_epoch = None, False
        self._init_timers(self.state)
        start_time = time.time()
        try:
            try:
                self._fire_event(Events.STARTED)
                yield from self._maybe_terminate_or_interrupt()
                if self._take_pending_epoch_end():
                    self._fire_event(Events.EPOCH_COMPLETED)  # the end the checkpoint's run did not reach
                    yield from self._maybe_terminate_or_interrupt()
                while not self._is_done(self.state) and not self.should_terminate:
                    self.state.epoch += 1
                    in_epoch = True
                    handlers_start_time = time.time()
                    self._fire_event(Events.EPOCH_STARTED)
                    epoch_time_taken = time.time() - handlers_start_time
                    yield from self._maybe_terminate_or_interrupt()
                    if self._dataloader_iter is None:
                        self._setup_engine()
                    epoch_time_taken += yield from self._run_once_on_dataset_as_gen()
                    in_epoch = False  # its iterations are done: a rerun after EPOCH_COMPLETED raised goes on
                    self.state.times[Events.EPOCH_COMPLETED.name] = epoch_time_taken
                    if self.should_terminate_single_epoch != "skip_epoch_completed":
                        handlers_start_time = time.time()
                        self._fire_event(Events.EPOCH_COMPLETED)
                        epoch_time_taken += time.time() - handlers_start_time
                        self.state.times[Events.EPOCH_COMPLETED.name] = epoch_time_taken
                    if self.should_terminate_single_epoch:
                        self.should_terminate_single_epoch = False
                    yield from self._maybe_terminate_or_interrupt()
                    hours, mins, secs = _to_hours_mins_secs(epoch_time_taken)
                    self.logger.info(
                        f"Epoch[{self.state.epoch}] Complete. Time taken: {hours:02d}:{mins:02d}:{secs:06.3f}"
                    )
            except _EngineTerminateException:
                in_epoch = False  # a terminated epoch is over, as on Ignite: a rerun starts the next one
                self._fire_event(Events.TERMINATE)
            except _EngineTerminateSingleEpochException:
                raise RuntimeError(
                    "The method terminate_epoch() should not be called on Event.STARTED or Event.EPOCH_STARTED; "
                    "call it from an iteration event"
                ) from None
            time_taken = time.time() - start_time
            self.state.times[Events.COMPLETED.name] = time_taken
            if self.should_terminate != "skip_completed":
                handlers_start_time = time.time()
                self._fire_event(Events.COMPLETED)
                time_taken += time.time() - handlers_start_time
                self.state.times[Events.COMPLETED.name] = time_taken
            hours, mins, secs = _to_hours_mins_secs(time_taken)
            self.logger.info(f"Engine run finished. Time taken: {hours:02d}:{mins:02d}:{secs:06.3f}")
        except BaseException as e:
            self._dataloader_iter = None
            self._dispatch = self._compiled = None
            if in_epoch and not isinstance(e, GeneratorExit):  # GeneratorExit: an interrupted run was dropped
                step = self._step_raised_at == self.state.iteration
                self._raised_in = (self.state.epoch, self.state.iteration, step)
            self.logger.error(f"Engine run is terminating due to exception: {e}")
            self._handle_exception(e)
        self._dataloader_iter = None
        self._dispatch = self._compiled = None  # drop the compiled calls (and the engine they hold) between runs
        return self.state

    def _run_once_on_dataset_as_gen(self) -> Generator[State, None, float]:
        start_time = time.time()
        iter_counter = self._init_iter or 0
        self._init_iter = None
        state = self.state
        has_data = state.dataloader is not None
        process = self._process_function
        get_started, get_completed, it_started, it_completed = self._hot_dispatch()
        max_iters = state.max_iters
        restarted = False
        try:
            while True:
                state.batch = None
                if get_started is not None and has_data and not restarted:
                    get_started(state)
                    if self._attn:
                        yield from self._attend(0)
                        get_started, get_completed, it_started, it_completed = self._hot_dispatch()
                try:
                    state.batch = next(self._dataloader_iter)  # type: ignore[arg-type]
                except StopIteration:
                    if state.epoch_length is None:
                        state.epoch_length = iter_counter
                        if state.max_iters is not None:
                            state.max_epochs = -(-state.max_iters // state.epoch_length)
                        break
                    if restarted:
                        if not self._is_done(state):
                            total = state.epoch_length * state.max_epochs if state.max_epochs else state.max_iters
                            warnings.warn(
                                "Data iterator can not provide data anymore but required total number of "
                                f"iterations to run is not reached. Current iteration: {state.iteration} vs "
                                f"Total iterations to run : {total}",
                                stacklevel=2,
                            )
                        break
                    if has_data:
                        self._fire_event(Events.DATALOADER_STOP_ITERATION)
                        yield from self._maybe_terminate_or_interrupt()
                    self._setup_dataloader_iter()
                    restarted = True
                    continue
                restarted = False
                state.output = None
                if get_completed is not None and has_data:
                    get_completed(state)
                    if self._attn:
                        yield from self._attend(1)
                        get_started, get_completed, it_started, it_completed = self._hot_dispatch()
                iter_counter += 1
                state.iteration += 1
                if it_started is not None:
                    it_started(state)
                    if self._attn:
                        yield from self._attend(2)
                        get_started, get_completed, it_started, it_completed = self._hot_dispatch()
                try:
                    state.output = process(self, state.batch)
                except Exception as exc:
                    note_step_failure(exc, state.epoch, state.iteration, state.batch)
                    self._step_raised_at = state.iteration
                    raise
                if it_completed is not None:
                    it_completed(state)
                if self._attn:
                    yield from self._attend(3)
                    get_started, get_completed, it_started, it_completed = self._hot_dispatch()
                if iter_counter == state.epoch_length:
                    break
                if max_iters is not None and state.iteration == max_iters:
                    self.should_terminate = True
                    raise _EngineTerminateException()
        except _EngineTerminateSingleEpochException:
            self._fire_event(Events.TERMINATE_SINGLE_EPOCH, iter_counter=iter_counter)
            self._setup_dataloader_iter()
        except _EngineTerminateException:
            raise
        except Exception as e:
            self.logger.error(f"Current run is terminating due to exception: {e}")
            self._handle_exception(e)
        return time.time() - start_time


def _key(entry: tuple) -> tuple[int, int, int]:
    """What identifies a registered `(func, args, kwargs)` entry: its three objects, which Ignite keeps when it
    rebuilds the list (`remove_event_handler`). The entries are held while a key is in use, so no id is reused."""
    return id(entry[0]), id(entry[1]), id(entry[2])


def _call(entry: tuple, event_args: tuple, event_kwargs: dict) -> None:
    """Call one registered `(func, args, kwargs)` entry as Ignite's `_fire_event` does."""
    func, args, kwargs = entry
    kwargs.update(event_kwargs)
    if args and isinstance(args[0], weakref.ref):
        engine = args[0]()
        if engine is None:
            raise RuntimeError("Engine reference not resolved. Cannot execute event handler.")
        func(engine, *event_args, *args[1:], **kwargs)
    else:
        func(*event_args, *args, **kwargs)


def _fire_through(engine: Engine, event: Any) -> Callable[[State], None]:
    """Dispatch through `engine._fire_event`, for subclasses that override it (they see every event)."""

    def fire(state: State) -> None:
        engine._fire_event(event)

    return fire
