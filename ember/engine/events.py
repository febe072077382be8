"""Events, filters, handles and State: Ignite's own classes, so that `ember.Events is ignite.engine.Events`.

`FilteredEvent` is ember's earlier name for an event with a filter (`Events.X(every=n)`), Ignite's
`CallableEventWithFilter`; it stays for code written against ember before the two engines became one.
"""

from ignite.engine.events import CallableEventWithFilter, EventEnum, Events, EventsList, RemovableEventHandle, State

FilteredEvent = CallableEventWithFilter

__all__ = ["CallableEventWithFilter", "EventEnum", "Events", "EventsList", "FilteredEvent", "RemovableEventHandle",
           "State"]
