"""Live progress of one run, fed by the runtime and read by views (widgets, text).

The model only counts; views subscribe and are told at most ``max_rate`` times a
second, plus always once when the run ends, because widget messages beyond a
thousand or so queued are dropped and servers rate-limit output.

Three rules keep a view honest (issue 13):

- A change held back by the rate is told when its interval ends (a timer on the run's
  loop), not at the next change: a fan-out of threads that all end within one interval
  would otherwise go from its start straight to its end.
- While the run is alive and nothing changed, clock listeners are told once every
  ``CLOCK_SECONDS`` (the execution's tick calls :meth:`Progress.changed`), so the
  elapsed time and a timer's countdown move; only what shows the time needs redrawing.
- The final notice, the only one after :meth:`Progress.finish`, waits until no row of
  the run or of its sub-orchestrations counts a call in flight: a parent that ends
  first stops its children, whose rows settle a loop turn later.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from durable_nb import history

CLOCK_SECONDS = 1.0  # at most one clock notice a second while nothing else changes


@dataclass
class ActivityRow:
    """Counts for one activity name within a run."""

    name: str
    total: int = 0
    cached: int = 0
    ran: int = 0
    running: int = 0
    failed: int = 0
    retried: int = 0
    backing_off: int = 0  # calls waiting for their next attempt

    @property
    def done(self) -> int:
        return self.cached + self.ran + self.failed

    def counts(self, live: bool) -> dict[str, int]:
        """The counts an instance record keeps; ``live`` adds the calls running now."""
        counts = {"calls": self.total, "cached": self.cached, "ran": self.ran}
        if live:
            counts["running"] = self.running
        counts.update(failed=self.failed, retried=self.retried)
        return counts


Listener = Callable[["Progress"], None]


class Handle(Protocol):
    """What a scheduled call returns (an ``asyncio.TimerHandle``)."""

    def cancel(self) -> None: ...


CallLater = Callable[[float, Callable[[], None]], Handle]  # ``loop.call_later``


class Progress:
    """Counts of one run by activity, with throttled change notification."""

    def __init__(
        self,
        orchestrator: str,
        instance_id: str,
        *,
        max_rate: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.orchestrator = orchestrator
        self.instance_id = instance_id
        self.status = "starting"
        self.message = ""
        self.rows: dict[str, ActivityRow] = {}
        self._waiting_events: list[str] = []
        self.timers: dict[str, float] = {}  # timer key -> fire time (epoch seconds)
        self._custom_status: object = None
        self.children: list[Progress] = []  # sub-orchestrations, each with its own rows
        self._child_of_id: dict[str, Progress] = {}
        # Children with changes not told yet: a fan-out of thousands of children must not
        # ask each of them at every change (each child's change is told by the root).
        self._stale_children: set[Progress] = set()
        # The children's rows merged by orchestrator (grouped_rows), kept up to date from
        # the children that changed since, each one's share kept to take it out again.
        self._groups: dict[str, dict[str, ActivityRow]] = {}
        self._shares: dict[Progress, list[tuple[ActivityRow, tuple[int, ...]]]] = {}
        self._regroup: set[Progress] = set()
        self._parent: Progress | None = None
        self.on_approval: Callable[[str, object], None] | None = None  # set by the runtime
        self._clock = clock
        self._interval = 1.0 / max_rate
        self.started = clock()
        self.finished: float | None = None
        # A run started in the background (``h = orch.start()``) ends after the cell that
        # showed its widget: its final summary for saved notebooks is shown by whoever
        # awaits its handle (widgets.py); pending until then.
        self.summary_deferred = False
        self.summary_pending = False
        self._listeners: list[Listener] = []
        self._clock_listeners: list[Listener] = []
        self._last_notice = float("-inf")  # the last notice of a change
        self._last_told = float("-inf")  # the last notice of any kind, clock included
        self._dirty = False
        self._call_later: CallLater | None = None
        self._held: Handle | None = None  # the notice of a change held back by the rate
        self._final_waits = False  # finished; the final notice waits for calls in flight

    # ----------------------------------------------------------- counting

    def row(self, name: str) -> ActivityRow:
        found = self.rows.get(name)
        if found is None:
            found = self.rows[name] = ActivityRow(name)
        return found

    def cached_calls(self, names: list[str]) -> None:
        """Calls answered from history, counted by name at once (a replayed chain's
        thousands come in one step)."""
        for name, count in Counter(names).items():
            row = self.row(name)
            row.total += count
            row.cached += count
        self._touch()

    def reused(self, name: str) -> None:
        """A scheduled call was answered by a shared result of another instance."""
        self.row(name).cached += 1
        self._touch()

    def scheduled(self, name: str) -> None:
        self.row(name).total += 1
        self._touch()

    def sent(self, name: str) -> None:
        """A one-way message to an entity was sent: done as it is sent."""
        row = self.row(name)
        row.total += 1
        row.ran += 1
        self._touch()

    def attempt_started(self, name: str) -> None:
        self.row(name).running += 1
        self._touch()

    def attempt_ended(self, name: str) -> None:
        self.row(name).running -= 1
        self._touch()
        self._root()._tell_final_if_settled()

    def ran(self, name: str) -> None:
        self.row(name).ran += 1
        self._touch()

    def failed(self, name: str) -> None:
        self.row(name).failed += 1
        self._touch()

    def settled(self, event: history.Event) -> None:
        """Count an outcome once it is final: written to history (journal.py)."""
        if isinstance(event, history.TaskCompleted):
            if event.attempts:
                self.ran(event.activity)
            else:
                self.reused(event.activity)  # a shared result of another instance
        elif isinstance(event, history.TaskFailed):
            self.failed(event.activity)
        elif isinstance(event, history.SubOrchestrationCompleted):
            self.ran(_call_name(event.key))
        elif isinstance(event, history.SubOrchestrationFailed):
            self.failed(_call_name(event.key))

    def retried(self, name: str) -> None:
        row = self.row(name)
        row.retried += 1
        row.backing_off += 1
        self._touch()

    def child_retried(self, name: str, counted: bool) -> None:
        """The next attempt of a sub-orchestration under a retry policy: the failure
        before it was a retry, not a failed call (``counted``: it was counted failed in
        this run); a call whose failures were in an earlier run is counted now."""
        row = self.row(name)
        if counted:
            row.failed -= 1
        else:
            row.total += 1
        row.retried += 1
        self._touch()

    def retry_started(self, name: str) -> None:
        self.row(name).backing_off -= 1
        self._touch()

    def timer_armed(self, key: str, fire_at: float) -> None:
        """A durable timer waits, to fire at ``fire_at`` (epoch seconds)."""
        self.timers[key] = fire_at
        self._touch()

    def timer_ended(self, key: str) -> None:
        """A timer fired."""
        if self.timers.pop(key, None) is not None:
            self._touch()

    def timers_stopped(self) -> None:
        """The run's timers were stopped with it."""
        if self.timers:
            self.timers.clear()
            self._touch()

    @property
    def waiting_events(self) -> list[str]:
        return self._waiting_events

    @waiting_events.setter
    def waiting_events(self, names: list[str]) -> None:
        if names != self._waiting_events:  # set after every step, mostly unchanged
            self._waiting_events = names
            self._touch()

    @property
    def custom_status(self) -> object:
        return self._custom_status

    @custom_status.setter
    def custom_status(self, value: object) -> None:
        self._custom_status = value
        self._touch()

    # ----------------------------------------------------------- totals

    @property
    def elapsed(self) -> float:
        end = self.finished if self.finished is not None else self._clock()
        return end - self.started

    def child(self, orchestrator: str, instance_id: str) -> Progress:
        """The progress of a sub-orchestration; its changes show in this one's views. A
        child run again (a retry) keeps its one row group."""
        found = self._child_of_id.get(instance_id)
        if found is None:
            found = Progress(orchestrator, instance_id, clock=self._clock)
            found._parent = self  # only the root notifies views; a child's changes go there
            self.children.append(found)
            self._child_of_id[instance_id] = found
            self._groups.setdefault(orchestrator, {})  # groups in the order children came
            self._regroup.add(found)
        return found

    def all_rows(self) -> list[ActivityRow]:
        """This run's rows and its sub-orchestrations' rows, recursively."""
        rows = list(self.rows.values())
        for child in self.children:
            rows += child.all_rows()
        return rows

    def grouped_rows(self) -> list[tuple[str, list[ActivityRow]]]:
        """Rows grouped: this orchestrator's first, then one group per child orchestrator
        (each child's rows, its own children's included, merged by activity). The merged
        rows are the views' to read, not to change."""
        self._merge_changed_children()
        result = [(self.orchestrator, list(self.rows.values()))]
        result += [(name, list(rows.values())) for name, rows in self._groups.items()]
        return result

    def totals(self) -> ActivityRow:
        """The sum of every row, sub-orchestrations included."""
        self._merge_changed_children()
        total = ActivityRow("all")
        for rows in (self.rows, *self._groups.values()):
            for row in rows.values():
                _add(total, _counts(row), 1)
        return total

    def _merge_changed_children(self) -> None:
        """Merge again only the children that changed since the last time: a view is told
        of a fan-out of thousands of children ten times a second."""
        regroup, self._regroup = self._regroup, set()
        for child in regroup:
            for taken, counts in self._shares.get(child, ()):
                _add(taken, counts, -1)
            merged = self._groups[child.orchestrator]
            share = []
            for row in child.all_rows():
                into = merged.get(row.name)
                if into is None:
                    into = merged[row.name] = ActivityRow(row.name)
                counts = _counts(row)
                _add(into, counts, 1)
                share.append((into, counts))
            self._shares[child] = share

    # ----------------------------------------------------------- notification

    def subscribe(self, listener: Listener) -> None:
        """Told of changes, at most ``max_rate`` times a second, and once at the end."""
        self._listeners.append(listener)

    def subscribe_clock(self, listener: Listener) -> None:
        """Told when only time moved: at most once every ``CLOCK_SECONDS`` while the run
        is alive and no change was told in that time (a change tells ``subscribe``'s
        listeners instead, who show the time too)."""
        self._clock_listeners.append(listener)

    def begin(self, call_later: CallLater | None = None) -> None:
        """A run (or a new generation) starts. ``call_later`` (the loop's) lets a change
        held back by the rate be told when its interval ends. Nothing is told here: the
        first notice shows the run with its first calls, not an empty one that would
        hold them back for an interval."""
        self.status, self.message, self.finished = "running", "", None
        self._final_waits = False
        self._call_later = call_later
        self._touch()

    @property
    def dirty(self) -> bool:
        return self._dirty or bool(self._stale_children)

    def changed(self) -> None:
        """Tell listeners now if something changed and the last notice is one interval
        old; if it is younger, when the interval ends. If nothing changed, tell clock
        listeners once the last notice of any kind is ``CLOCK_SECONDS`` old."""
        if self._parent is not None:
            self._root().changed()
            return
        if self.finished is not None:
            return  # only the final notice comes after the end
        now = self._clock()
        if self.dirty:
            wait = self._last_notice + self._interval - now
            if wait <= 0:
                self._notify()
            elif self._held is None and self._call_later is not None:
                self._held = self._call_later(wait, self._tell_held)
        elif now - self._last_told >= CLOCK_SECONDS:
            self._last_told = now
            for listener in self._clock_listeners:
                listener(self)

    def _tell_held(self) -> None:
        self._held = None
        self.changed()

    def finish(self, status: str, message: str = "") -> None:
        """The run ended; listeners are always told, once no row counts a call in
        flight (its own calls were stopped before; its children's stop a turn later)."""
        self.status, self.message = str(status), message  # a Status is stored as its value
        self.finished = self._clock()
        for row in self.rows.values():
            row.backing_off = 0  # its retries were cancelled with the run's work
        self._touch()  # also counts set on its rows directly (a recorded outcome's)
        if self._held is not None:
            self._held.cancel()
            self._held = None
        if self._parent is None:
            self._final_waits = True
        self._root()._tell_final_if_settled()

    def in_flight(self) -> int:
        """Calls of this run and its sub-orchestrations running or waiting to retry."""
        totals = self.totals()
        return totals.running + totals.backing_off

    def _tell_final_if_settled(self) -> None:
        if self._final_waits and self.in_flight() == 0:
            self._final_waits = False
            self._notify()

    def _root(self) -> Progress:
        progress = self
        while progress._parent is not None:
            progress = progress._parent
        return progress

    def _notify(self) -> None:
        self._last_notice = self._last_told = self._clock()
        self._clear_dirty()
        for listener in self._listeners:
            listener(self)

    def _clear_dirty(self) -> None:
        self._dirty = False
        stale, self._stale_children = self._stale_children, set()
        for child in stale:
            child._clear_dirty()

    def _touch(self) -> None:
        """Something a view shows changed (told by the root at its next notice)."""
        self._dirty = True
        if self._parent is not None:
            self._parent._child_changed(self)

    def _child_changed(self, child: Progress) -> None:
        # Told up to the root every time: the stale sets are emptied by a notice, the
        # sets to merge again by whoever asks for the rows, each in its own time.
        self._stale_children.add(child)
        self._regroup.add(child)
        if self._parent is not None:
            self._parent._child_changed(self)


def _counts(row: ActivityRow) -> tuple[int, ...]:
    return (
        row.total,
        row.cached,
        row.ran,
        row.running,
        row.failed,
        row.retried,
        row.backing_off,
    )


def _add(into: ActivityRow, counts: tuple[int, ...], sign: int) -> None:
    total, cached, ran, running, failed, retried, backing_off = counts
    into.total += sign * total
    into.cached += sign * cached
    into.ran += sign * ran
    into.running += sign * running
    into.failed += sign * failed
    into.retried += sign * retried
    into.backing_off += sign * backing_off


def _call_name(key: str) -> str:
    """The name a call key starts with ("sub:<orchestrator>" for a child): what comes
    before its code and arguments digests."""
    return key.rsplit("/", 2)[0]
