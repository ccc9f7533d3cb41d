"""Suspend and resume of a live run: while suspended, nothing progresses.

Work the engine asks for is held, and so are the events that arrive (results,
timers firing, raised events). They are durable already; they reach the engine
after the resume, in history order, so the orchestrator does not move meanwhile and
a replay sees the same order. Terminate acts at once, suspended or not.
"""

from __future__ import annotations

from collections.abc import Callable

from durable_nb import history
from durable_nb.history import Status


class Suspension:
    """Whether a run is suspended, and what waits for its resume."""

    def __init__(
        self,
        suspended: bool,
        on_status: Callable[[Status], None],
        on_resume: Callable[[], None],
    ) -> None:
        self.suspended = suspended
        self._on_status = on_status  # the run's status changed (suspended, running)
        self._on_resume = on_resume  # e.g. start an orchestrator that waited for it
        self._work: list[Callable[[], None]] = []
        self._events: list[history.Event] = []
        if suspended:
            on_status(Status.SUSPENDED)

    def hold(self, start: Callable[[], None]) -> None:
        """Start work at the resume (call only while suspended)."""
        self._work.append(start)

    def admit(self, events: list[history.Event]) -> list[history.Event]:
        """The events (in history order) the engine may take now."""
        if not self.suspended:
            for event in events:
                if isinstance(event, history.ControlRequested):
                    break
            else:
                return events  # the common case: nothing to hold, nothing to act on
        ready: list[history.Event] = []
        for event in events:
            action = event.action if isinstance(event, history.ControlRequested) else None
            if action == "terminate":
                ready += self._events
                self._events = []
                ready.append(event)
                continue
            if action == "resume" and self.suspended:
                ready += self._resume()
            elif action == "suspend" and not self.suspended:
                self.suspended = True
                self._on_status(Status.SUSPENDED)
            if self.suspended:
                self._events.append(event)
            else:
                ready.append(event)
        return ready

    def _resume(self) -> list[history.Event]:
        """Let held work go; returns the events that arrived while suspended."""
        self.suspended = False
        self._on_status(Status.RUNNING)
        self._on_resume()
        work, self._work = self._work, []
        for start in work:
            start()
        events, self._events = self._events, []
        return events


def suspended_in(events: list[history.Event]) -> bool:
    """Whether the last suspend/resume request in history was a suspend."""
    for event in reversed(events):
        if isinstance(event, history.ControlRequested) and event.action in ("suspend", "resume"):
            return event.action == "suspend"
    return False
