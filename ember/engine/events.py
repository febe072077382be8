"""Events, filters, handles and State: Ignite's own classes, so that `ember.Events is ignite.engine.Events`."""

from ignite.engine.events import CallableEventWithFilter, EventEnum, Events, EventsList, RemovableEventHandle, State

__all__ = ["CallableEventWithFilter", "EventEnum", "Events", "EventsList", "RemovableEventHandle", "State"]
