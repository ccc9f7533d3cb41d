"""Durable entities from outside an orchestrator: ``durable_nb.signal_entity`` and
``durable_nb.read_entity_state`` (Durable Functions' client names), on the store of this
kernel's runtime unless another is given."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from durable_nb.engine.entity_ids import EntityId, as_entity_id
from durable_nb.entity_worker import client_message, worker_for
from durable_nb.errors import ConfigurationError
from durable_nb.runtime import get_runtime
from durable_nb.store import CheckpointStore, DiskCacheStore


@dataclass(frozen=True)
class EntityStateResponse:
    """What :func:`read_entity_state` answers, in Durable Functions' names
    (``entity_exists``, ``entity_state``), with the queue and the lock besides."""

    entity_exists: bool
    entity_state: Any = None
    waiting: int = 0  # messages queued and not applied: no kernel defining it ran them yet
    locked_by: str | None = None  # the instance whose critical section holds it
    version: int = 0  # how many changes (operations, locks) were applied


def signal_entity(
    entity_id: EntityId | str,
    operation_name: str,
    operation_input: Any = None,
    *,
    store: CheckpointStore | str | os.PathLike[str] | None = None,
) -> None:
    """Send ``operation_name`` (with ``operation_input``) to the entity, one-way.

    The message is queued durably, then applied here at once if this kernel defines the
    entity and no critical section holds it; otherwise it waits in the entity's queue
    for a kernel that does (it is never lost, and applied once)."""
    entity = as_entity_id(entity_id, "signal_entity")
    if not isinstance(operation_name, str) or not operation_name:
        raise ConfigurationError(
            f"signal_entity to {entity} needs the operation's name as a non-empty string, "
            f"got {operation_name!r}",
            setting="operation_name",
            value=operation_name,
        )
    worker_for(_store(store)).send(client_message(entity, operation_name, operation_input))


def read_entity_state(
    entity_id: EntityId | str,
    *,
    store: CheckpointStore | str | os.PathLike[str] | None = None,
) -> EntityStateResponse:
    """The entity's state, after applying here what waits in its queue (when this kernel
    defines it and no critical section holds it)."""
    entity = as_entity_id(entity_id, "read_entity_state")
    worker = worker_for(_store(store))
    worker.apply_waiting(entity)
    found = worker.entities.read(entity)
    if found is None:
        return EntityStateResponse(False)
    return EntityStateResponse(
        found.exists, found.state, found.waiting, found.locked_by, found.version
    )


_OPENED: dict[str, DiskCacheStore] = {}


def _store(given: CheckpointStore | str | os.PathLike[str] | None) -> CheckpointStore:
    if given is None:
        return get_runtime().store
    if isinstance(given, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(given))
        found = _OPENED.get(path)
        if found is None:
            found = _OPENED[path] = DiskCacheStore(path)
        return found
    return given
