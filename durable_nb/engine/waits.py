"""Replay state of durable timers and external events.

Timers are keyed by the order in which the run creates them (``timer#0``,
``timer#1``...); their fire time is taken from history when the history has it, so
a restarted kernel waits only for what is left.

External events queue by name: the n-th wait that receives an event under a name
gets the n-th event raised under it. A wait with a timeout competes with its timer;
on replay the one that came first *in history* wins, exactly as it did live.
"""

from __future__ import annotations

import collections
import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

from durable_nb.engine.tasks import EventTask, Task, TimerCall
from durable_nb.errors import EventTimeoutError, OrchestratorError


def event_timeout(
    orchestrator: str, instance_id: str, name: str, timeout: Any
) -> EventTimeoutError:
    """The error a wait for event ``name`` fails with when its timeout fires."""
    return EventTimeoutError(
        f"orchestrator {orchestrator!r} (instance {instance_id}) waited for event "
        f"{name!r} longer than its timeout ({timeout}); raise it sooner, or catch "
        "TimeoutError in the orchestrator to go on without it",
        orchestrator=orchestrator,
        event=name,
        timeout=timeout,
        instance_id=instance_id,
    )


def fire_time(when: Any, now: float, orchestrator: str) -> float:
    """When a new timer fires (epoch seconds): ``when`` is seconds from ``now``, a
    timedelta, or an aware datetime."""
    if isinstance(when, _dt.datetime):
        if when.tzinfo is None:
            raise OrchestratorError(
                f"orchestrator {orchestrator!r}: create_timer got a naive datetime; use an "
                "aware one, e.g. ctx.current_utc_datetime + timedelta(minutes=5)",
                orchestrator=orchestrator,
            )
        return when.timestamp()
    if isinstance(when, _dt.timedelta):
        when = when.total_seconds()
    if isinstance(when, (int, float)) and not isinstance(when, bool) and when >= 0:
        return now + float(when)
    raise OrchestratorError(
        f"orchestrator {orchestrator!r}: a timer needs seconds >= 0, a timedelta or an aware "
        f"datetime, got {when!r}",
        orchestrator=orchestrator,
    )


@dataclass
class RaisedEvent:
    value: Any
    timestamp: float
    position: int  # order among all events of the instance's history
    replayed: bool


@dataclass
class TimerBook:
    """Timers of one run: what history says, and which tasks wait on which timer."""

    created: dict[str, float] = field(default_factory=dict)  # key -> fire_at
    fired: dict[str, int] = field(default_factory=dict)  # key -> history position
    waiting: dict[str, Task] = field(default_factory=dict)  # key -> timer or event task
    count: int = 0

    def next_key(self) -> str:
        key = f"timer#{self.count}"
        self.count += 1
        return key

    def new(self, when: Any, now: float, orchestrator: str) -> TimerCall:
        """The run's next timer; its fire time is the recorded one if history has it (not
        new), else ``when`` from ``now``: the later of the replayed clock and this run's
        start, so a timer first created on a rerun does not fire at once."""
        key = self.next_key()
        recorded = self.created.get(key)
        if recorded is not None:
            return TimerCall(key, recorded, False)
        return TimerCall(key, fire_time(when, now, orchestrator), True)


@dataclass
class EventBook:
    """External events by name, and the waits that have not received one yet."""

    log: dict[str, list[RaisedEvent]] = field(default_factory=dict)
    consumed: dict[str, int] = field(default_factory=dict)
    waiting: dict[str, collections.deque[EventTask]] = field(default_factory=dict)

    def add(self, name: str, event: RaisedEvent) -> None:
        self.log.setdefault(name, []).append(event)

    def next_for(self, name: str, before: int | None) -> RaisedEvent | None:
        """The next unconsumed event under ``name``, if it came before position ``before``."""
        events = self.log.get(name, ())
        index = self.consumed.get(name, 0)
        if index < len(events) and (before is None or events[index].position < before):
            return events[index]
        return None

    def consume(self, name: str) -> None:
        self.consumed[name] = self.consumed.get(name, 0) + 1

    def wait(self, task: EventTask) -> None:
        self.waiting.setdefault(task.name, collections.deque()).append(task)

    def first_waiting(self, name: str) -> EventTask | None:
        queue = self.waiting.get(name)
        while queue:
            if not queue[0].is_done:
                return queue[0]
            queue.popleft()  # timed out meanwhile
        return None

    def waiting_names(self) -> list[str]:
        if not self.waiting:  # most steps: nothing ever waited for an event
            return []
        return sorted(n for n in self.waiting if self.first_waiting(n) is not None)
