"""Entity calls of an orchestrator, carried out as activity calls.

``ctx.call_entity`` and ``ctx.lock_entities`` are scheduled, recorded and replayed as
any activity call is (the engine keys them by the entity's name, ``@counter``, and
the runtime resolves the engine's :class:`~durable_nb.engine.entities.EntityTarget`
here). What such a call runs is :class:`EntityCallActivity`'s: queue the message under
an id made of the instance, its history and the call key, then wait for the outcome.
A call made again (its thread was cut short by a kill before the result reached
history) finds its message queued, or applied, under that id: never applied twice.

Signals (``ctx.signal_entity``, a critical section's release) are not calls: the
runtime queues them before the step's history is written (:func:`send_signals`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from durable_nb.definitions import Activity, resolve_activity
from durable_nb.engine.entities import EntityTarget
from durable_nb.engine.entity_ids import ENTITY_PREFIX, LOCK, OPERATION, EntityId, EntitySignal
from durable_nb.entity_store import EntityMessage, message_id
from durable_nb.entity_worker import EntityWorker, worker_for
from durable_nb.leases import holder_alive
from durable_nb.options import ActivityOptions
from durable_nb.resources import DEFAULT
from durable_nb.store import CheckpointStore

# Entity calls are keyed by this in place of a code digest: a recorded call is replayed
# whatever the entity's code or this library's became, since applying it again would
# apply an operation twice.
CODE_DIGEST = "entity-call-v1.0"
# An entity operation is a message applied once: never retried, always on this
# process's threads (the worker and its store live here, not in a process pool).
_OPTIONS = ActivityOptions(retries=0, executor=DEFAULT)


class EntityCallActivity(Activity):
    """The work of an entity call: passed its message id first (``takes_message_id``)."""

    takes_message_id = True

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        super().__init__(fn, _OPTIONS, source_digest=CODE_DIGEST, name=name)

    def code_digest(self, scheme: int = 0) -> str:
        return CODE_DIGEST

    def arguments_mismatch(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        return None


def _call_operation(
    store: CheckpointStore,
    worker: EntityWorker,
    name: str,
    message: str,
    key: str,
    operation: str,
    value: Any,
) -> Any:
    instance = message.split("|", 1)[0]
    entity = EntityId(name, key)
    sent = EntityMessage(message, entity, OPERATION, operation, value, instance)
    where = f"ctx.call_entity({entity}, {operation!r}) of instance {instance}"
    return worker.call(sent, where, partial(_not_running, store))


def _take_locks(
    store: CheckpointStore, worker: EntityWorker, message: str, *entities: str
) -> list[str]:
    instance = message.split("|", 1)[0]
    for number, text in enumerate(entities):  # in the engine's order: never a deadlock
        entity = EntityId.parse(text)
        lock = EntityMessage(f"{message}/{number}", entity, LOCK, None, None, instance)
        where = f"ctx.lock_entities of instance {instance}"
        worker.call(lock, where, partial(_not_running, store))
    return list(entities)


def _not_running(store: CheckpointStore, instance_id: str) -> bool:
    """No run holds the instance's lease: a section it holds will not end by itself."""
    lease = store.get_lease(instance_id)
    return lease is None or not holder_alive(lease, time.time())


class EntityActivities:
    """Resolves what an orchestrator calls, entity calls included, for runs on a store."""

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store
        self.worker = worker_for(store)
        self._made: dict[EntityTarget, EntityCallActivity] = {}

    def resolve(self, ref: Any) -> Activity:
        if isinstance(ref, Activity):
            return ref  # the commonest, first: the replay of every call asks
        if not isinstance(ref, EntityTarget):
            return resolve_activity(ref)
        found = self._made.get(ref)
        if found is None:
            # One object per target: the engine keys calls by definition object.
            if ref.kind == LOCK:
                fn: Callable[..., Any] = partial(_take_locks, self.store, self.worker)
            else:
                fn = partial(_call_operation, self.store, self.worker, ref.name)
            found = self._made[ref] = EntityCallActivity(fn, ENTITY_PREFIX + ref.name)
        return found


def send_signals(
    worker: EntityWorker, instance_id: str, history_id: str, signals: Sequence[EntitySignal]
) -> None:
    """Queue the signals a step sends (before its history is written), then apply them
    on the worker's thread."""
    for signal in signals:
        message = EntityMessage(
            message_id(instance_id, history_id, signal.key),
            signal.entity,
            signal.kind,
            signal.operation,
            signal.input,
            instance_id,
        )
        worker.send(message, apply_now=False)
