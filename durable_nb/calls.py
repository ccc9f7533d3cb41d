"""The calls of an instance, one row each, read off its history: what ran, when, how
long, how many attempts, how it ended, and whether its result came from a checkpoint.

A durable entity's calls are calls of ``@<entity name>`` (their arguments start with
the entity's key and the operation); its signals (``ctx.signal_entity``, and the
releases of a critical section's locks) are rows of the same name with status
``sent``: one-way, they have no attempts and no duration, only the moment they were
queued.

Shared by ``h.calls()`` (a DataFrame when pandas is installed), ``durable-nb show ID
--calls`` and the timeline (timeline.py), so that the three never disagree. Pure: it
reads events, nothing else.

A call is *cached* when its result was not computed by the latest run of the
instance: it was checkpointed by an earlier run and replayed, or reused from another
instance's shared result (``attempts`` 0).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from durable_nb import history
from durable_nb.errors import ConfigurationError

STATUSES = ("completed", "failed", "running", "retrying", "waiting", "sent")
_ARGUMENTS = 80  # characters of a signal's arguments: its key, then the event's preview


@dataclass(slots=True)
class Attempt:
    """One try of a call: when it began to run (None if not recorded: a store of an
    older format, an adopted thread) and ended, how, and the backoff after it."""

    number: int
    started: float | None
    ended: float | None
    outcome: str  # completed, failed, retried, running
    backoff: float = 0.0
    error: str = ""


@dataclass(slots=True)
class CallRow:
    """One call (an activity call or a sub-orchestration) of an instance."""

    activity: str
    key: str
    arguments: str
    status: str
    attempts: int
    scheduled: float | None
    started: float | None
    finished: float | None
    error: str
    cached: bool
    attempt_log: list[Attempt] = field(default_factory=list, repr=False)

    @property
    def duration(self) -> float | None:
        """Seconds from the start of its first attempt (or its scheduling) to its end."""
        begun = self.started if self.started is not None else self.scheduled
        if begun is None or self.finished is None:
            return None
        return max(0.0, self.finished - begun)

    def as_dict(self) -> dict[str, Any]:
        row = asdict(self)
        del row["attempt_log"]
        row["duration"] = self.duration
        return row


COLUMNS = (
    "activity",
    "key",
    "arguments",
    "status",
    "attempts",
    "started",
    "duration",
    "error",
    "cached",
    "scheduled",
    "finished",
)


def call_rows(events: Sequence[history.Event]) -> list[CallRow]:
    """The calls of a history in the order they were first scheduled (or, for results
    of calls whose scheduling an older store did not keep, first seen)."""
    latest_run = _latest_run_start(events)
    rows: dict[str, CallRow] = {}

    def row(key: str, activity: str, at: float | None) -> CallRow:
        found = rows.get(key)
        if found is None:
            found = rows[key] = CallRow(activity, key, "", "waiting", 0, at, None, None, "", False)
        return found

    for event in events:
        if isinstance(event, history.TaskScheduled):
            call = row(event.key, event.activity, event.timestamp)
            call.arguments = event.arguments or call.arguments
            if call.status == "waiting":
                call.status = "running"
        elif isinstance(event, history.TaskRetried):
            call = row(event.key, event.activity, None)
            error = f"{event.error_type}: {event.message}"
            call.attempt_log.append(
                Attempt(
                    event.attempt, event.started, event.timestamp, "retried", event.delay, error
                )
            )
            call.status, call.attempts = "retrying", event.attempt
        elif isinstance(event, history.TaskCompleted):
            call = row(event.key, event.activity, None)
            call.attempt_log.append(
                Attempt(event.attempts, event.started, event.timestamp, "completed")
            )
            call.status, call.attempts, call.finished = "completed", event.attempts, event.timestamp
            call.cached = event.attempts == 0 or event.timestamp < latest_run
        elif isinstance(event, history.TaskFailed):
            call = row(event.key, event.activity, None)
            error = f"{event.error_type}: {event.message}"
            call.attempt_log.append(
                Attempt(event.attempts, event.started, event.timestamp, "failed", error=error)
            )
            call.status, call.attempts, call.finished = "failed", event.attempts, event.timestamp
            call.error, call.cached = error, False
        elif isinstance(event, history.EntitySignaled):
            call = row(event.key, _entity_activity(event.entity), event.timestamp)
            call.arguments = _signal_arguments(event)
            call.status, call.started, call.finished = "sent", event.timestamp, event.timestamp
            call.cached = event.timestamp < latest_run
        elif isinstance(event, (history.SubOrchestrationCompleted, history.SubOrchestrationFailed)):
            call = row(event.key, event.key.split("/", 1)[0], None)
            call.arguments = call.arguments or event.instance_id
            call.attempts, call.finished = 1, event.timestamp
            if isinstance(event, history.SubOrchestrationFailed):
                call.status, call.error = "failed", f"{event.error_type}: {event.message}"
            else:
                call.status, call.cached = "completed", event.timestamp < latest_run
    for call in rows.values():
        if call.status == "sent":
            continue  # an instant: started and finished when it was queued
        firsts = [a.started for a in call.attempt_log if a.started is not None]
        call.started = firsts[0] if firsts else None
        if call.status in ("running", "retrying") and not call.attempts:
            call.attempts = 1
    return list(rows.values())


def _entity_activity(entity: str) -> str:
    """``@counter`` of ``@counter@c1``: what the entity's calls are recorded under."""
    return "@" + entity[1:].partition("@")[0]


def _signal_arguments(event: history.EntitySignaled) -> str:
    """Like an entity call's arguments (key, operation, input): ``'c1', 'add', 3``; a
    lock's release shows as ``'c1', (unlock)``."""
    key = repr(event.entity[1:].partition("@")[2])
    text = f"{key}, {event.arguments}" if event.kind == "operation" else f"{key}, ({event.kind})"
    return text if len(text) <= _ARGUMENTS else text[: _ARGUMENTS - 1] + "…"


def _latest_run_start(events: Sequence[history.Event]) -> float:
    started = [e.timestamp for e in events if isinstance(e, history.ExecutionStarted)]
    return started[-1] if started else float("-inf")


def select(
    rows: Iterable[CallRow],
    status: str | Sequence[str] | None = None,
    activity: str | Sequence[str] | None = None,
) -> list[CallRow]:
    """The rows with one of these statuses and activities (None: any)."""
    statuses = _choices("status", status, STATUSES)
    wanted = (
        None if activity is None else {activity} if isinstance(activity, str) else set(activity)
    )
    return [
        r
        for r in rows
        if (statuses is None or r.status in statuses) and (not wanted or r.activity in wanted)
    ]


def _choices(
    name: str, value: str | Sequence[str] | None, allowed: Sequence[str]
) -> set[str] | None:
    if value is None:
        return None
    chosen = {value} if isinstance(value, str) else set(value)
    unknown = sorted(chosen - set(allowed))
    if unknown:
        raise ConfigurationError(
            f"unknown call {name} {', '.join(map(repr, unknown))}: use one of {', '.join(allowed)}",
            setting=name,
            value=value,
        )
    return chosen


def calls_frame(rows: Sequence[CallRow]) -> Any:
    """A pandas DataFrame of the rows (times as UTC timestamps, duration in seconds),
    or the rows as dicts when pandas is not installed."""
    records = [{column: r.as_dict()[column] for column in COLUMNS} for r in rows]
    try:
        import pandas as pd
    except ImportError:
        return records
    frame = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    for column in ("started", "scheduled", "finished"):
        frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
    return frame
