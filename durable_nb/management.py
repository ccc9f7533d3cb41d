"""Managing instances in a store, from any process: raise events, terminate, suspend,
resume, rewind, list and purge with filters.

Requests are appended to the instance's history, where a live run notices them
within a second (it polls) and a later run finds them (events wait there).
"""

from __future__ import annotations

import re
import time
from typing import Any

from durable_nb import history
from durable_nb.definitions import Orchestrator, find_orchestrator
from durable_nb.errors import (
    ConfigurationError,
    DurableNbError,
    InstanceFinishedError,
    InstanceInputMissingError,
    InstanceNotFoundError,
    OrchestratorNotFoundError,
)
from durable_nb.history import Status
from durable_nb.leases import holder_alive
from durable_nb.store import CheckpointStore, InstanceRecord

ACTIONS = ("terminate", "suspend", "resume")
FINISHED = tuple(s.value for s in Status if s.is_final)
# What a request makes of an instance nobody runs (a later run honours suspend/resume).
_STATUS_AFTER = {
    "terminate": Status.TERMINATED,
    "suspend": Status.SUSPENDED,
    "resume": Status.PENDING,
}
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> float:
    """Seconds in ``90``, ``30s``, ``15m``, ``2h``, ``7d`` or ``1w``."""
    match = _AGE.match(text)
    if match is None:
        raise ConfigurationError(
            f"an age looks like 90s, 15m, 2h, 7d or 1w; got {text!r}", setting="age", value=text
        )
    return float(match.group(1)) * _UNIT[match.group(2)]


def _record(store: CheckpointStore, instance_id: str) -> InstanceRecord:
    record = store.get_instance(instance_id)
    if record is None:
        raise InstanceNotFoundError(
            f"no instance {instance_id!r} in {store.location}", instance_id=instance_id
        )
    return record


def is_running(store: CheckpointStore, instance_id: str) -> bool:
    lease = store.get_lease(instance_id)
    return lease is not None and holder_alive(lease, time.time())


def raise_event(store: CheckpointStore, instance_id: str, name: str, value: Any = None) -> None:
    """Deliver an event to an instance, running or not; it waits in the store until used."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(
            f"an event name must be a non-empty string, got {name!r}",
            setting="name",
            value=name,
            instance_id=instance_id,
        )
    record = _record(store, instance_id)
    if record.status in FINISHED:
        raise InstanceFinishedError(
            f"instance {instance_id!r} is {record.status}; an event raised now would never "
            "be received",
            instance_id=instance_id,
            status=record.status,
        )
    try:
        store.append(instance_id, [history.EventRaised(time.time(), name, value)])
    except Exception as exc:
        if isinstance(exc, DurableNbError):
            raise
        raise ConfigurationError(
            f"could not raise event {name!r} to {instance_id!r}: the value of type "
            f"{type(value).__qualname__} cannot be stored ({exc}); send plain data",
            setting="value",
            value=value,
            instance_id=instance_id,
        ) from exc


def rewind_target(store: CheckpointStore, instance_id: str) -> tuple[Orchestrator, dict[str, Any]]:
    """What a rewind of the instance runs: its orchestrator, defined in this kernel, and
    its stored input."""
    record = _record(store, instance_id)
    orch = find_orchestrator(record.orchestrator)
    if orch is None:
        raise OrchestratorNotFoundError(
            f"cannot rewind {instance_id!r}: orchestrator {record.orchestrator!r} is not "
            "defined in this kernel; run its %%orchestrator cell first",
            orchestrator=record.orchestrator,
            instance_id=instance_id,
        )
    if record.input is None:
        raise InstanceInputMissingError(
            f"cannot rewind {instance_id!r}: its input was not stored (it could not be "
            "pickled); call the orchestrator again with the same arguments instead",
            instance_id=instance_id,
            status=record.status,
        )
    return orch, dict(record.input)


def request(store: CheckpointStore, instance_id: str, action: str, reason: str = "") -> str:
    """Ask an instance to terminate, suspend or resume; returns what happened."""
    if action not in ACTIONS:
        raise ConfigurationError(
            f"action must be one of {ACTIONS}, got {action!r}",
            setting="action",
            value=action,
            instance_id=instance_id,
        )
    record = _record(store, instance_id)
    if record.status in FINISHED:
        return f"{instance_id} is already {record.status}; nothing to {action}"
    store.append(
        instance_id, [history.ControlRequested(time.time(), action, reason or "requested")]
    )
    if is_running(store, instance_id):
        return f"asked the running {instance_id} to {action}"
    # Nobody runs it: the record says so at once; a later run honours suspend/resume.
    record.status = _STATUS_AFTER[action].value
    record.updated_at = time.time()
    if action == "terminate":
        record.error = f"terminated: {reason or 'requested'}"
        # Its critical section, if it was in one, ends with it (a run would release it).
        store.entities.release_locks(instance_id)
    store.put_instance(record)
    return f"{instance_id} is now {record.status}"


def select(
    store: CheckpointStore,
    *,
    name: str | None = None,
    status: str | None = None,
    older_than: float | None = None,
    newer_than: float | None = None,
) -> list[InstanceRecord]:
    """Instances filtered by orchestrator name, status and age of their last update."""
    now = time.time()
    chosen = []
    for record in store.list_instances():
        age = now - (record.updated_at or record.created_at)
        if name is not None and record.orchestrator != name:
            continue
        if status is not None and record.status != status:
            continue
        if older_than is not None and age < older_than:
            continue
        if newer_than is not None and age > newer_than:
            continue
        chosen.append(record)
    return chosen


def purge(store: CheckpointStore, instance_ids: list[str]) -> tuple[list[str], list[str]]:
    """Purge instances; running ones are refused. Returns (purged, not purged: why)."""
    purged, refused = [], []
    for instance_id in instance_ids:
        if is_running(store, instance_id):
            refused.append(f"{instance_id} (running)")
        elif store.purge(instance_id):
            store.entities.release_locks(instance_id)  # no run of it will release them
            purged.append(instance_id)
        else:
            refused.append(f"{instance_id} (not found)")
    return purged, refused


def rewind(store: CheckpointStore, instance_id: str) -> str:
    """Without a kernel: mark a failed, terminated or interrupted instance as pending, so
    that the next run of its notebook cell resumes it (successes replay, failures rerun)."""
    record = _record(store, instance_id)
    if record.status not in (Status.FAILED, Status.TERMINATED, Status.INTERRUPTED):
        return (
            f"{instance_id} is {record.status}; only failed, terminated or interrupted ones rewind"
        )
    record.status, record.error, record.updated_at = Status.PENDING.value, None, time.time()
    store.put_instance(record)
    return (
        f"{instance_id} is pending again; run its notebook cell (or %durable rewind in the "
        "kernel) to resume it: successes replay, failures run again"
    )
