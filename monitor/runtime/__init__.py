"""The monitored runtime: ``attach`` → :class:`GuardedModel`, hooks, sessions, events."""

from __future__ import annotations

from monitor.runtime.events import (
    CollectingDispatcher,
    DegradedEvent,
    Dispatcher,
    MatchEvent,
    NullDispatcher,
    StepStats,
)
from monitor.runtime.guarded import GuardedModel, attach
from monitor.runtime.report import Firing, MonitorReport, RowReport

__all__ = [
    "CollectingDispatcher",
    "DegradedEvent",
    "Dispatcher",
    "Firing",
    "GuardedModel",
    "MatchEvent",
    "MonitorReport",
    "NullDispatcher",
    "RowReport",
    "StepStats",
    "attach",
]
