"""The engine's State: Ignite's, plus the fields ember's handlers set, declared rather than bolted on."""

from __future__ import annotations

from ignite.engine.events import State as IgniteState


class State(IgniteState):
    """`ignite.engine.State` (an instance of it) with the outcome fields of ember's handlers.

    They are class-level defaults, not instance attributes, so `repr(state)` and `state.__dict__` stay as
    Ignite's until a handler sets one:

    - `stop_reason`: the signal that asked GracefulStop to end the run ("SIGTERM"), else None.
    - `terminated_on_nan`: (epoch, iteration) of the first non-finite output TerminateOnNan saw, else None.
    - `early_stopped`: EarlyStopping's message when it ended the run, else None.
    - `epoch_end_pending`: True when the state was loaded from a checkpoint saved at an epoch's last iteration
      before that epoch's end (its EPOCH_COMPLETED handlers) ran; the next `run` fires that EPOCH_COMPLETED
      right after STARTED, so the resumed run goes through the epoch end the interrupted one missed.
    """

    stop_reason: str | None = None
    terminated_on_nan: tuple[int, int] | None = None
    early_stopped: str | None = None
    epoch_end_pending: bool = False
