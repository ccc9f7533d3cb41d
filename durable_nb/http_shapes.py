"""Durable Functions' JSON shapes for the HTTP API: an instance's status, its history
as ``historyEvents`` (``?showHistory=true``), and values and times as JSON carries them.
No store and no web server here: ``http_api`` reads, this module shapes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

from durable_nb import history
from durable_nb.entity_store import EntitySnapshot
from durable_nb.history import Status
from durable_nb.store import InstanceRecord

# durable_nb's statuses as Durable Functions' runtimeStatus. ``interrupted`` (the run
# stopped before it ended: Ctrl-C, a kernel restart, a kill) has no equivalent: it is
# not finished and nothing runs it until its cell runs again, which is what DF's
# Pending says of an instance; ``durableNbStatus`` keeps the exact value.
RUNTIME_STATUS = {
    Status.PENDING.value: "Pending",
    Status.RUNNING.value: "Running",
    Status.SUSPENDED.value: "Suspended",
    Status.COMPLETED.value: "Completed",
    Status.FAILED.value: "Failed",
    Status.INTERRUPTED.value: "Pending",
    Status.TERMINATED.value: "Terminated",
    Status.CONTINUED_AS_NEW.value: "ContinuedAsNew",
}


def jsonable(value: Any) -> Any:
    """``value`` if JSON can carry it as it is, else its repr: outputs may be any
    Python object (a DataFrame, an array), and a status must still be readable."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)
    return value


def iso_time(timestamp: float | None, timespec: str = "seconds") -> str | None:
    """UTC in ISO 8601 with a ``Z``, as Durable Functions writes times."""
    if not timestamp:
        return None
    moment = datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")


def instance_status(record: InstanceRecord, show_input: bool = True) -> dict[str, Any]:
    """An instance as Durable Functions' get-status answers it, plus ``durableNbStatus``
    (our own status, exact where runtimeStatus is not)."""
    status = str(record.status)
    # As in DF, a failed or terminated instance's output says why.
    output = record.error if status in (Status.FAILED, Status.TERMINATED) else record.output
    body: dict[str, Any] = {
        "name": record.orchestrator,
        "instanceId": record.instance_id,
        "runtimeStatus": RUNTIME_STATUS.get(status, status),
        "durableNbStatus": status,
    }
    if show_input:
        body["input"] = jsonable(record.input)
    body.update(
        customStatus=jsonable(record.custom_status),
        output=jsonable(output),
        createdTime=iso_time(record.created_at),
        lastUpdatedTime=iso_time(record.updated_at or record.created_at),
    )
    return body


def entity_status(snapshot: EntitySnapshot) -> dict[str, Any]:
    """An entity as Durable Functions lists them (``entityId``, ``lastOperationTime``,
    ``state``), plus its queue and lock."""
    entity = snapshot.entity
    return {
        "entityId": {"name": entity.name, "key": entity.key},
        "exists": snapshot.exists,
        "state": jsonable(snapshot.state),
        "lastOperationTime": iso_time(snapshot.updated),
        "waiting": snapshot.waiting,
        "lockedBy": snapshot.locked_by,
        "version": snapshot.version,
    }


def _shaped(event: history.Event, output: bool) -> dict[str, Any]:
    """One history event as a ``historyEvents`` entry: Durable Functions' ``EventType``
    and field names where it has the event, durable_nb's own where it has none
    (``TaskRetried``, ``CustomStatusSet``, ``ControlRequested``)."""
    shape = _SHAPES.get(type(event))
    entry: dict[str, Any] = {
        "EventType": type(event).__name__,
        "Timestamp": iso_time(event.timestamp),
    }
    if shape is not None:
        kind, fields = shape
        entry["EventType"] = kind
        for name, value, is_output in fields(event):
            if output or not is_output:
                entry[name] = jsonable(value)
    return entry


def history_events(events: Iterable[history.Event], output: bool) -> list[dict[str, Any]]:
    """An instance's history as Durable Functions' ``historyEvents``; results, inputs and
    event values only with ``output`` (DF's ``showHistoryOutput``)."""
    return [_shaped(event, output) for event in events]


Fields = Callable[[Any], list[tuple[str, Any, bool]]]  # (name, value, is it output?)
_SHAPES: dict[type[history.Event], tuple[str, Fields]] = {
    history.ExecutionStarted: (
        "ExecutionStarted",
        lambda e: [("Name", e.orchestrator, False), ("Run", e.run, False)],
    ),
    history.TaskScheduled: (
        "TaskScheduled",
        lambda e: [
            ("Name", e.activity, False),
            ("Key", e.key, False),
            ("Input", e.arguments, True),
        ],
    ),
    history.TaskCompleted: (
        "TaskCompleted",
        lambda e: [("Name", e.activity, False), ("Key", e.key, False), ("Result", e.result, True)],
    ),
    history.TaskFailed: (
        "TaskFailed",
        lambda e: [
            ("Name", e.activity, False),
            ("Key", e.key, False),
            ("Reason", f"{e.error_type}: {e.message}", False),
        ],
    ),
    history.TaskRetried: (
        "TaskRetried",
        lambda e: [("Name", e.activity, False), ("Key", e.key, False)],
    ),
    history.TimerCreated: ("TimerCreated", lambda e: [("FireAt", iso_time(e.fire_at), False)]),
    history.TimerFired: ("TimerFired", lambda e: [("Key", e.key, False)]),
    history.EventRaised: (
        "EventRaised",
        lambda e: [("Name", e.name, False), ("Input", e.value, True)],
    ),
    history.SubOrchestrationCompleted: (
        "SubOrchestrationInstanceCompleted",
        lambda e: [("InstanceId", e.instance_id, False), ("Result", e.result, True)],
    ),
    history.SubOrchestrationFailed: (
        "SubOrchestrationInstanceFailed",
        lambda e: [
            ("InstanceId", e.instance_id, False),
            ("Reason", f"{e.error_type}: {e.message}", False),
        ],
    ),
    history.CustomStatusSet: ("CustomStatusSet", lambda e: [("CustomStatus", e.value, True)]),
    history.ControlRequested: (
        "ControlRequested",
        lambda e: [("Action", e.action, False), ("Reason", e.reason, False)],
    ),
    # Durable Functions records a signal to an entity as a message sent.
    history.EntitySignaled: (
        "EventSent",
        lambda e: [
            ("Name", e.operation or e.kind, False),
            ("InstanceId", e.entity, False),
            ("Input", e.arguments, True),
        ],
    ),
    history.ExecutionFinished: (
        "ExecutionCompleted",
        lambda e: [
            ("OrchestrationStatus", RUNTIME_STATUS.get(e.status, e.status), False),
            ("Reason", e.message, False),
        ],
    ),
}
