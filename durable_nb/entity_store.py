"""Where durable entities live: their state and the messages queued to them.

An entity is a row of state (with how many operations it has applied, and who holds
its lock) and a queue of messages, numbered in the order they arrived. A message is
applied by committing, in one transaction, the state it produced and the message
marked done, only if no other operation was applied meanwhile (the state's version
is unchanged) and the message is still waiting. So whatever process applies it, and
whenever one is killed, each message changes the state exactly once; an operation
cut short before its commit simply runs again.

A message's id is what makes it one message: an orchestrator's is its instance, its
history and its call key, so queueing it again after a kill is a no-op
(:meth:`EntityStore.enqueue` answers False), and a caller that died before it read
its result reads it later by that id.

:class:`EntityStore` is the seam; :class:`MemoryEntities` keeps entities in memory (for
:class:`~durable_nb.memory_store.MemoryStore`), ``entity_tables.SqliteEntities`` in the
store's database.
"""

from __future__ import annotations

import copy
import itertools
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Protocol

from durable_nb.engine.entity_ids import EntityId


def message_id(instance_id: str, history_id: str, key: str) -> str:
    """The id of a message an instance sends under call ``key``: the same in every run
    of one history, another after a purge or a continue_as_new."""
    return f"{instance_id}|{history_id}|{key}"


@dataclass(frozen=True)
class EntityMessage:
    """A message to an entity: an operation, or (``kind``) the taking or release of its
    lock. ``source`` is the instance that sent it (None: a client, outside any
    orchestrator)."""

    message_id: str
    entity: EntityId
    kind: str
    operation: str | None
    input: Any
    source: str | None
    seq: int = 0  # its number in the queue: the order it arrived in
    queued: float = 0.0


@dataclass(frozen=True)
class EntityFailure:
    """How an operation failed: the exception's type and message, and the exception
    itself when the store could keep it (a pickle store)."""

    error_type: str
    message: str
    error: BaseException | None = None


@dataclass(frozen=True)
class MessageOutcome:
    """A message once applied: the operation's result, or its failure."""

    result: Any = None
    failure: EntityFailure | None = None
    done: float = 0.0


@dataclass(frozen=True)
class EntitySnapshot:
    """An entity's state as last committed; ``version`` counts its changes (operations
    applied, locks taken and released)."""

    entity: EntityId
    exists: bool = False  # it has a state (set by an operation, not deleted since)
    state: Any = None
    version: int = 0
    locked_by: str | None = None
    updated: float = 0.0
    waiting: int = 0  # messages queued, not applied yet


@dataclass(frozen=True)
class Applied:
    """What applying one message did: the entity's new state and lock, and the outcome."""

    exists: bool
    state: Any
    locked_by: str | None
    outcome: MessageOutcome


class EntityStore(Protocol):
    """The seam between entity processing and storage."""

    def enqueue(self, message: EntityMessage) -> bool:
        """Queue ``message`` (numbered after every message queued before); False when a
        message with its id was queued already (then nothing changes)."""

    def waiting(self, entity: EntityId, limit: int) -> tuple[EntitySnapshot, list[EntityMessage]]:
        """The entity's state (a copy of its own: the caller may change it) and the first
        ``limit`` messages waiting, oldest first."""

    def commit(self, message: EntityMessage, version: int, applied: Applied) -> bool:
        """Atomically: the entity's new state, ``message`` done with its outcome; only
        if the entity is still at ``version`` and the message still waits (else False,
        and nothing changes)."""

    def outcome(self, message_id: str) -> MessageOutcome | None:
        """The outcome of an applied message; None while it waits (or is unknown)."""

    def is_queued(self, message_id: str) -> bool: ...

    def read(self, entity: EntityId) -> EntitySnapshot | None:
        """The entity as last committed (None: no state, nothing queued)."""

    def entities(self, name: str | None = None) -> list[EntitySnapshot]:
        """Every entity with a state or a message, or those of definition ``name``."""

    def purge(self, entity: EntityId) -> bool:
        """Delete the entity's state and every message to it; False if there was none."""

    def release_locks(self, holder: str) -> list[EntityId]:
        """Release every lock ``holder`` (an instance) holds: its run ended."""

    def forget_sent(self, source: str) -> None:
        """Drop the applied messages ``source`` sent (its instance was purged)."""


class MemoryEntities:
    """An :class:`EntityStore` in memory. States are copied in and out, so an operation
    that fails after changing its state in place leaves the kept state as it was."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[EntityId, EntitySnapshot] = {}
        self._messages: dict[str, EntityMessage] = {}
        self._outcomes: dict[str, MessageOutcome] = {}
        self._numbers = itertools.count(1)

    def enqueue(self, message: EntityMessage) -> bool:
        with self._lock:
            if message.message_id in self._messages:
                return False
            queued = replace(message, seq=next(self._numbers), queued=time.time())
            self._messages[message.message_id] = replace(queued, input=copy.deepcopy(queued.input))
            return True

    def _waiting_for(self, entity: EntityId) -> list[EntityMessage]:
        return sorted(
            (
                m
                for m in self._messages.values()
                if m.entity == entity and m.message_id not in self._outcomes
            ),
            key=lambda m: m.seq,
        )

    def waiting(self, entity: EntityId, limit: int) -> tuple[EntitySnapshot, list[EntityMessage]]:
        with self._lock:
            waiting = self._waiting_for(entity)
            snapshot = self._states.get(entity) or EntitySnapshot(entity)
            snapshot = replace(snapshot, state=copy.deepcopy(snapshot.state), waiting=len(waiting))
            return snapshot, [replace(m, input=copy.deepcopy(m.input)) for m in waiting[:limit]]

    def commit(self, message: EntityMessage, version: int, applied: Applied) -> bool:
        with self._lock:
            current = self._states.get(message.entity) or EntitySnapshot(message.entity)
            if current.version != version or message.message_id in self._outcomes:
                return False
            now = time.time()
            self._states[message.entity] = EntitySnapshot(
                message.entity,
                applied.exists,
                copy.deepcopy(applied.state) if applied.exists else None,
                version + 1,
                applied.locked_by,
                now,
            )
            self._outcomes[message.message_id] = replace(applied.outcome, done=now)
            return True

    def outcome(self, message_id: str) -> MessageOutcome | None:
        with self._lock:
            return self._outcomes.get(message_id)

    def is_queued(self, message_id: str) -> bool:
        with self._lock:
            return message_id in self._messages

    def read(self, entity: EntityId) -> EntitySnapshot | None:
        with self._lock:
            waiting = len(self._waiting_for(entity))
            found = self._states.get(entity)
            if found is None and not waiting:
                return None
            found = found or EntitySnapshot(entity)
            return replace(found, state=copy.deepcopy(found.state), waiting=waiting)

    def entities(self, name: str | None = None) -> list[EntitySnapshot]:
        with self._lock:
            known = set(self._states) | {m.entity for m in self._messages.values()}
        found = [self.read(e) for e in sorted(known, key=str) if name in (None, e.name)]
        return [snapshot for snapshot in found if snapshot is not None]

    def purge(self, entity: EntityId) -> bool:
        with self._lock:
            had = self._states.pop(entity, None) is not None
            for message_id in [i for i, m in self._messages.items() if m.entity == entity]:
                del self._messages[message_id]
                self._outcomes.pop(message_id, None)
                had = True
            return had

    def release_locks(self, holder: str) -> list[EntityId]:
        with self._lock:
            held = [e for e, s in self._states.items() if s.locked_by == holder]
            for entity in held:
                # A change like any other: a commit that read the lock held fails.
                state = self._states[entity]
                self._states[entity] = replace(state, locked_by=None, version=state.version + 1)
            return held

    def forget_sent(self, source: str) -> None:
        with self._lock:
            for message_id in [
                i for i, m in self._messages.items() if m.source == source and i in self._outcomes
            ]:
                del self._messages[message_id]
                del self._outcomes[message_id]
