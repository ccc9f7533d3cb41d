"""Applying the messages queued to durable entities, in this process.

Any process that defines an entity may apply its queue: the kernel that sends a
message applies it at once (a signal on a thread of its own, a call on the call's
activity thread), and whoever touches the entity later applies what is left, such as
the messages of a kernel killed before it applied them. Messages are applied in the
order they arrived, one at a time per entity; :mod:`durable_nb.entity_store` makes each
apply once, whichever process gets there first.

While an instance holds an entity's lock (a critical section), only that instance's
messages are applied; the others wait in the queue, in their order.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any

from durable_nb.engine.entity_ids import LOCK, UNLOCK, EntityId
from durable_nb.entities import Entity, find_entity
from durable_nb.entity_store import (
    Applied,
    EntityFailure,
    EntityMessage,
    EntitySnapshot,
    EntityStore,
    MessageOutcome,
)
from durable_nb.errors import (
    ActivityFailedError,
    EntityLockedError,
    EntityNotFoundError,
    ResultNotStorableError,
)

logger = logging.getLogger(__name__)

_BATCH = 64  # messages read per query of a queue
_FIRST_WAIT, _LONGEST_WAIT = 0.002, 0.2  # seconds between looks while a call waits


class EntityWorker:
    """Applies messages to the entities of one store."""

    def __init__(
        self, entities: EntityStore, find: Callable[[str], Entity | None] = find_entity
    ) -> None:
        self.entities = entities
        self._find = find
        self._locks: dict[EntityId, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._kicked: queue.SimpleQueue[EntityId] = queue.SimpleQueue()
        self._kicker: threading.Thread | None = None
        self._pending_kicks: set[EntityId] = set()

    # ------------------------------------------------------------ sending

    def send(self, message: EntityMessage, apply_now: bool = True) -> bool:
        """Queue a one-way message (False: queued before, under its id) and apply the
        entity's queue, now or (``apply_now`` False) on this worker's thread."""
        queued = self.entities.enqueue(message)
        if apply_now:
            self.apply_waiting(message.entity)
        else:
            self.kick(message.entity)
        return queued

    def call(
        self,
        message: EntityMessage,
        where: str,
        holder_gone: Callable[[str], bool] | None = None,
    ) -> Any:
        """Queue ``message`` (or find it queued: a call made again after a kill) and wait
        for its outcome, applying the queue meanwhile: the operation's result, or its
        exception raised here.

        While a critical section of another instance holds the entity, the call waits;
        ``holder_gone(instance)`` tells whether that instance no longer runs (interrupted
        inside its section), and then the call raises EntityLockedError rather than
        wait for a release no run will make (its message stays queued)."""
        # A message just queued has no outcome yet: the first look is skipped.
        queued_now = self.entities.enqueue(message)
        wait = _FIRST_WAIT
        while True:
            outcome = None if queued_now else self.entities.outcome(message.message_id)
            queued_now = False
            if outcome is None:
                applied: dict[str, MessageOutcome] = {}
                self.apply_waiting(message.entity, applied)
                outcome = applied.get(message.message_id) or self.entities.outcome(
                    message.message_id
                )
            if outcome is not None:
                return _unwrapped(outcome, message, where)
            if self._find(message.entity.name) is None and message.kind not in (LOCK, UNLOCK):
                raise EntityNotFoundError(
                    f"{where}: no entity {message.entity.name!r} is defined in this kernel, so "
                    f"the operation {message.operation!r} on {message.entity} waits in its "
                    "queue; run the cell that defines it (%%entity or @entity), then run "
                    "again (the queued operation is applied once, not sent again)",
                    entity=str(message.entity),
                )
            if holder_gone is not None:
                self._check_holder(message, where, holder_gone)
            time.sleep(wait)  # a critical section of another instance holds the entity
            wait = min(wait * 2, _LONGEST_WAIT)

    def _check_holder(
        self, message: EntityMessage, where: str, holder_gone: Callable[[str], bool]
    ) -> None:
        found = self.entities.read(message.entity)
        holder = found.locked_by if found is not None else None
        if holder is None or holder == message.source or not holder_gone(holder):
            return
        # A run that left its section queues the unlock before its lease goes back: one
        # that has just ended has its unlock in the queue. Applied, it frees the entity.
        self.apply_waiting(message.entity)
        found = self.entities.read(message.entity)
        if (found.locked_by if found is not None else None) != holder:
            return
        raise EntityLockedError(
            f"{where}: entity {message.entity} is held by the critical section of instance "
            f"{holder}, which is not running (it stopped inside the section). Run that "
            f"instance again to finish its section, or terminate it (durable-nb terminate "
            f"{holder}) to release the lock; this call's message stays queued and is applied "
            "once, when the lock is released",
            entity=str(message.entity),
            instance_id=holder,
        )

    def kick(self, entity: EntityId) -> None:
        """Apply the entity's queue soon, on this worker's thread (a daemon: an
        operation cut short by the process's exit is applied by the next to come)."""
        with self._locks_lock:
            if entity in self._pending_kicks:
                return  # its queue is applied soon already (a fan-out of signals)
            self._pending_kicks.add(entity)
        self._kicked.put(entity)
        if self._kicker is None or not self._kicker.is_alive():
            self._kicker = threading.Thread(
                target=self._apply_kicked, name="durable_nb-entities", daemon=True
            )
            self._kicker.start()

    def _apply_kicked(self) -> None:
        while True:
            entity = self._kicked.get()
            with self._locks_lock:
                self._pending_kicks.discard(entity)  # a signal from now on kicks again
            try:
                self.apply_waiting(entity)
            except Exception:  # the store failed: the messages stay queued for later
                logger.warning("could not apply the queue of entity %s", entity, exc_info=True)

    # ------------------------------------------------------------ applying

    def apply_waiting(
        self, entity: EntityId, outcomes: dict[str, MessageOutcome] | None = None
    ) -> int:
        """Apply the entity's waiting messages that can be applied here, in order;
        returns how many this call applied (and their outcomes in ``outcomes``, by
        message id, when given).

        A batch read from the store is applied one message after another on the state
        the last commit kept (a copy of it: an operation that changes it in place and
        then fails must not change the kept one); the store is read again only when the
        batch is used up or a commit is refused (another process applied one first)."""
        applied = 0
        with self._lock_of(entity):
            snapshot, messages = self._read(entity)
            while True:
                message = _next_runnable(snapshot, messages)
                if message is None:
                    if snapshot.waiting <= len(messages):
                        return applied  # all of the queue was read: nothing runnable
                    snapshot, messages = self._read(entity)
                    if _next_runnable(snapshot, messages) is None:
                        return applied
                    continue
                outcome = self._apply(snapshot, message)
                if outcome is None:
                    return applied  # not defined here: left for a kernel that defines it
                if not self._commit(message, snapshot, outcome):
                    snapshot, messages = self._read(entity)
                    continue
                applied += 1
                if outcomes is not None:
                    outcomes[message.message_id] = outcome.outcome
                messages.remove(message)
                snapshot = EntitySnapshot(
                    entity,
                    outcome.exists,
                    copy.deepcopy(outcome.state) if outcome.exists else None,
                    snapshot.version + 1,
                    outcome.locked_by,
                    snapshot.updated,
                    snapshot.waiting - 1,
                )

    def _read(self, entity: EntityId) -> tuple[EntitySnapshot, list[EntityMessage]]:
        snapshot, messages = self.entities.waiting(entity, _BATCH)
        if snapshot.locked_by and snapshot.waiting > len(messages):
            # A critical section holds it: its holder's messages may wait further back.
            snapshot, messages = self.entities.waiting(entity, snapshot.waiting)
        return snapshot, messages

    def _apply(self, snapshot: EntitySnapshot, message: EntityMessage) -> Applied | None:
        if message.kind == LOCK:
            return Applied(snapshot.exists, snapshot.state, message.source, MessageOutcome())
        if message.kind == UNLOCK:
            holder = None if snapshot.locked_by == message.source else snapshot.locked_by
            return Applied(snapshot.exists, snapshot.state, holder, MessageOutcome())
        definition = self._find(message.entity.name)
        if definition is None:
            return None
        assert message.operation is not None
        try:
            done = definition.apply(
                message.entity, snapshot.exists, snapshot.state, message.operation, message.input
            )
        except Exception as exc:  # the operation failed: its state is not kept
            failure = EntityFailure(type(exc).__qualname__, str(exc), exc)
            return Applied(snapshot.exists, snapshot.state, snapshot.locked_by, _failed(failure))
        return Applied(done.exists, done.state, snapshot.locked_by, MessageOutcome(done.result))

    def _commit(self, message: EntityMessage, snapshot: EntitySnapshot, applied: Applied) -> bool:
        try:
            return self.entities.commit(message, snapshot.version, applied)
        except (TypeError, ValueError, AttributeError) as exc:  # not storable
            error = ResultNotStorableError(
                f"entity {message.entity}: the state or result of operation "
                f"{message.operation!r} cannot be stored by this store's serializer ({exc}); "
                "keep entity states and results to plain data (JSON-like values for a "
                "JSON store)"
            )
            failure = EntityFailure(type(error).__name__, str(error), error)
            kept = Applied(snapshot.exists, snapshot.state, snapshot.locked_by, _failed(failure))
            return self.entities.commit(message, snapshot.version, kept)

    def _lock_of(self, entity: EntityId) -> threading.Lock:
        # One thread of this process applies a queue at a time: the others would only
        # lose their commit to it.
        with self._locks_lock:
            found = self._locks.get(entity)
            if found is None:
                found = self._locks[entity] = threading.Lock()
            return found


def _next_runnable(snapshot: EntitySnapshot, messages: list[EntityMessage]) -> EntityMessage | None:
    holder = snapshot.locked_by
    for message in messages:
        if holder is None or message.source == holder:
            return message
    return None


def _failed(failure: EntityFailure) -> MessageOutcome:
    return MessageOutcome(None, failure)


def _unwrapped(outcome: MessageOutcome, message: EntityMessage, where: str) -> Any:
    failure = outcome.failure
    if failure is None:
        return outcome.result
    if failure.error is not None:
        raise failure.error
    raise ActivityFailedError(
        f"{failure.error_type}: {failure.message} (operation {message.operation!r} of entity "
        f"{message.entity}, in {where})",
        activity=f"@{message.entity.name}",
        error_type=failure.error_type,
    )


def client_message(entity: EntityId, operation: str, value: Any) -> EntityMessage:
    """A message from outside any orchestrator: an id of its own, no source."""
    return EntityMessage(uuid.uuid4().hex, entity, "operation", operation, value, None)


_WORKERS: weakref.WeakKeyDictionary[Any, EntityWorker] = weakref.WeakKeyDictionary()
_WORKERS_LOCK = threading.Lock()


def worker_for(store: Any) -> EntityWorker:
    """The worker of a store (a :class:`~durable_nb.store.CheckpointStore`), one per store
    object in this process."""
    with _WORKERS_LOCK:
        found = _WORKERS.get(store)
        if found is None:
            found = _WORKERS[store] = EntityWorker(store.entities)
        return found
