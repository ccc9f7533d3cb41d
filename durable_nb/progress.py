"""Live progress of one run, fed by the runtime and read by views (widgets, text).

The model only counts; views subscribe and are told at most ``max_rate`` times a
second, plus always once when the run ends, because widget messages beyond a
thousand or so queued are dropped and servers rate-limit output.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from durable_nb import history


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
        self.waiting_events: list[str] = []
        self.timers: dict[str, float] = {}  # timer key -> fire time (epoch seconds)
        self.custom_status: object = None
        self.children: list[Progress] = []  # sub-orchestrations, each with its own rows
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
        self._last_notice = float("-inf")
        self._dirty = False

    # ----------------------------------------------------------- counting

    def row(self, name: str) -> ActivityRow:
        found = self.rows.get(name)
        if found is None:
            found = self.rows[name] = ActivityRow(name)
        return found

    def cached(self, name: str) -> None:
        row = self.row(name)
        row.total += 1
        row.cached += 1
        self._dirty = True

    def reused(self, name: str) -> None:
        """A scheduled call was answered by a shared result of another instance."""
        self.row(name).cached += 1
        self._dirty = True

    def scheduled(self, name: str) -> None:
        self.row(name).total += 1
        self._dirty = True

    def attempt_started(self, name: str) -> None:
        self.row(name).running += 1
        self._dirty = True

    def attempt_ended(self, name: str) -> None:
        self.row(name).running -= 1
        self._dirty = True

    def ran(self, name: str) -> None:
        self.row(name).ran += 1
        self._dirty = True

    def failed(self, name: str) -> None:
        self.row(name).failed += 1
        self._dirty = True

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
        self._dirty = True

    def retry_started(self, name: str) -> None:
        self.row(name).backing_off -= 1
        self._dirty = True

    # ----------------------------------------------------------- totals

    @property
    def elapsed(self) -> float:
        end = self.finished if self.finished is not None else self._clock()
        return end - self.started

    def child(self, orchestrator: str, instance_id: str) -> Progress:
        """The progress of a sub-orchestration; its changes show in this one's views."""
        child = Progress(orchestrator, instance_id, clock=self._clock)
        child._interval = float("inf")  # only the root notifies views
        self.children.append(child)
        return child

    def all_rows(self) -> list[ActivityRow]:
        """This run's rows and its sub-orchestrations' rows, recursively."""
        rows = list(self.rows.values())
        for child in self.children:
            rows += child.all_rows()
        return rows

    def grouped_rows(self) -> list[tuple[str, list[ActivityRow]]]:
        """Rows grouped: this orchestrator's first, then one group per child orchestrator."""
        groups: dict[str, dict[str, ActivityRow]] = {}
        for child in self.children:
            merged = groups.setdefault(child.orchestrator, {})
            for row in child.all_rows():
                into = merged.setdefault(row.name, ActivityRow(row.name))
                for column in (
                    "total",
                    "cached",
                    "ran",
                    "running",
                    "failed",
                    "retried",
                    "backing_off",
                ):
                    setattr(into, column, getattr(into, column) + getattr(row, column))
        result = [(self.orchestrator, list(self.rows.values()))]
        result += [(name, list(rows.values())) for name, rows in groups.items()]
        return result

    def totals(self) -> ActivityRow:
        """The sum of every row, sub-orchestrations included."""
        total = ActivityRow("all")
        for row in self.all_rows():
            total.total += row.total
            total.cached += row.cached
            total.ran += row.ran
            total.running += row.running
            total.failed += row.failed
            total.retried += row.retried
            total.backing_off += row.backing_off
        return total

    # ----------------------------------------------------------- notification

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def begin(self) -> None:
        self.status, self.message, self.finished = "running", "", None
        self._notify()

    @property
    def dirty(self) -> bool:
        return self._dirty or any(child.dirty for child in self.children)

    def changed(self) -> None:
        """Tell listeners, unless they were told less than one interval ago."""
        if self.dirty and self._clock() - self._last_notice >= self._interval:
            self._notify()

    def finish(self, status: str, message: str = "") -> None:
        """The run ended; listeners are always told."""
        self.status, self.message = str(status), message  # a Status is stored as its value
        self.finished = self._clock()
        self._notify()

    def _notify(self) -> None:
        self._last_notice = self._clock()
        self._dirty = False
        for child in self.children:
            child._dirty = False
        for listener in self._listeners:
            listener(self)


def _call_name(key: str) -> str:
    """The name a call key starts with ("sub:<orchestrator>" for a child): what comes
    before its code and arguments digests."""
    return key.rsplit("/", 2)[0]
