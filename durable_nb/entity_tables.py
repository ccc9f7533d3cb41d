"""Durable entities in the store's database: :class:`SqliteEntities`, the
:class:`~durable_nb.entity_store.EntityStore` of a
:class:`~durable_nb.store.DiskCacheStore`.

Two tables of their own in ``cache.db``, beside the history's (:mod:`durable_nb.tables`,
whose connections and error messages they share): ``durable_entities`` (one row per
entity: its encoded state, version and lock holder) and ``durable_entity_messages``
(the queue: numbered by SQLite as they arrive, a unique message id, done once
applied, with the outcome). Applying a message is one transaction that checks the
version and that the message still waits, so two kernels applying the same queue
never both apply one message, and a kill leaves either all of it or none.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from typing import Any

from durable_nb.engine.entity_ids import EntityId
from durable_nb.entity_store import (
    Applied,
    EntityFailure,
    EntityMessage,
    EntitySnapshot,
    MessageOutcome,
)
from durable_nb.tables import StoreTables

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS durable_entities (
        entity TEXT PRIMARY KEY, name TEXT NOT NULL, key TEXT NOT NULL,
        state BLOB, version INTEGER NOT NULL, locked_by TEXT, updated REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS durable_entity_messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL UNIQUE,
        entity TEXT NOT NULL, name TEXT NOT NULL, key TEXT NOT NULL,
        kind TEXT NOT NULL, operation TEXT, input BLOB NOT NULL, source TEXT,
        queued REAL NOT NULL, done REAL, result BLOB,
        error_type TEXT, error_message TEXT, error BLOB)""",
    """CREATE INDEX IF NOT EXISTS durable_entity_messages_waiting
        ON durable_entity_messages (entity, done, seq)""",
    """CREATE INDEX IF NOT EXISTS durable_entity_messages_by_source
        ON durable_entity_messages (source)""",
)


class _Refused(Exception):
    """A commit that must not happen: rolled back by the transaction."""


_COLUMNS = "message_id, name, key, kind, operation, input, source, seq, queued"


class SqliteEntities:
    """Entities in ``tables``' database; values encoded by the store's serializer."""

    def __init__(
        self,
        tables: StoreTables,
        dumps: Callable[[Any], bytes],
        loads: Callable[[bytes], Any],
        keep_exceptions: bool,
    ) -> None:
        self._tables = tables
        self._dumps, self._loads = dumps, loads
        # A pickle store keeps a failed operation's exception, so its caller gets it back
        # as it was raised; a JSON store keeps its type and message only.
        self._keep_exceptions = keep_exceptions
        with tables.transaction() as connection:
            for statement in _SCHEMA:
                connection.execute(statement)

    def enqueue(self, message: EntityMessage) -> bool:
        entity = message.entity
        row = (
            message.message_id,
            str(entity),
            entity.name,
            entity.key,
            message.kind,
            message.operation,
            self._dumps(message.input),
            message.source,
            time.time(),
        )
        with self._tables.transaction() as connection:
            cursor = connection.execute(
                "INSERT OR IGNORE INTO durable_entity_messages (message_id, entity, name, key, "
                "kind, operation, input, source, queued) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            return cursor.rowcount == 1

    def waiting(self, entity: EntityId, limit: int) -> tuple[EntitySnapshot, list[EntityMessage]]:
        # Plain reads, no transaction: a commit checks the version and the message
        # again, so a state read a moment before its queue is never applied wrongly.
        query = self._tables.query
        state = query(
            "SELECT state, version, locked_by, updated FROM durable_entities WHERE entity = ?",
            str(entity),
        )
        rows = query(
            f"SELECT {_COLUMNS} FROM durable_entity_messages "
            "WHERE entity = ? AND done IS NULL ORDER BY seq LIMIT ?",
            str(entity),
            limit,
        )
        count = len(rows)
        if count >= limit:  # the whole queue is longer than what was read: count it
            count = query(
                "SELECT COUNT(*) FROM durable_entity_messages WHERE entity = ? AND done IS NULL",
                str(entity),
            )[0][0]
        snapshot = self._snapshot(entity, state[0] if state else None, count)
        return snapshot, [self._message(row) for row in rows]

    def commit(self, message: EntityMessage, version: int, applied: Applied) -> bool:
        entity, now = message.entity, time.time()
        state = self._dumps(applied.state) if applied.exists else None
        outcome = applied.outcome
        failure = outcome.failure
        result = None if failure is not None else self._dumps(outcome.result)
        try:
            with self._tables.transaction() as connection:
                if version == 0:
                    changed = connection.execute(
                        "INSERT OR IGNORE INTO durable_entities "
                        "(entity, name, key, state, version, locked_by, updated) "
                        "VALUES (?, ?, ?, ?, 1, ?, ?)",
                        (str(entity), entity.name, entity.key, state, applied.locked_by, now),
                    ).rowcount
                else:
                    changed = connection.execute(
                        "UPDATE durable_entities SET state = ?, version = version + 1, "
                        "locked_by = ?, updated = ? WHERE entity = ? AND version = ?",
                        (state, applied.locked_by, now, str(entity), version),
                    ).rowcount
                if changed != 1:
                    raise _Refused  # another operation was applied first
                done = connection.execute(
                    "UPDATE durable_entity_messages SET done = ?, result = ?, error_type = ?, "
                    "error_message = ?, error = ? WHERE message_id = ? AND done IS NULL",
                    (now, result, *self._failure_columns(failure), message.message_id),
                ).rowcount
                if done != 1:
                    raise _Refused  # applied already: the state stays as it was
        except _Refused:
            return False
        return True

    def _failure_columns(self, failure: EntityFailure | None) -> tuple[Any, Any, Any]:
        if failure is None:
            return None, None, None
        kept = None
        if self._keep_exceptions and failure.error is not None:
            try:
                kept = pickle.dumps(failure.error)
            except Exception:  # an exception that does not pickle: known by name only
                kept = None
        return failure.error_type, failure.message, kept

    def outcome(self, message_id: str) -> MessageOutcome | None:
        rows = self._tables.query(
            "SELECT done, result, error_type, error_message, error "
            "FROM durable_entity_messages WHERE message_id = ? AND done IS NOT NULL",
            message_id,
        )
        if not rows:
            return None
        done, result, error_type, message, error = rows[0]
        if error_type is None:
            return MessageOutcome(self._loads(result), None, done)
        exception = None
        if error is not None:
            try:
                exception = pickle.loads(error)
            except Exception:  # its class is gone from this kernel: known by name only
                exception = None
        return MessageOutcome(None, EntityFailure(error_type, message or "", exception), done)

    def is_queued(self, message_id: str) -> bool:
        return bool(
            self._tables.query(
                "SELECT 1 FROM durable_entity_messages WHERE message_id = ?", message_id
            )
        )

    def read(self, entity: EntityId) -> EntitySnapshot | None:
        snapshot, _ = self.waiting(entity, 0)
        return snapshot if snapshot.version or snapshot.waiting else None

    def entities(self, name: str | None = None) -> list[EntitySnapshot]:
        where, parameters = ("WHERE name = ?", (name,)) if name is not None else ("", ())
        known = self._tables.query(
            f"SELECT name, key FROM durable_entities {where} UNION "
            f"SELECT name, key FROM durable_entity_messages {where} ORDER BY 1, 2",
            *parameters,
            *parameters,
        )
        found = [self.read(EntityId(n, k)) for n, k in known]
        return [snapshot for snapshot in found if snapshot is not None]

    def purge(self, entity: EntityId) -> bool:
        with self._tables.transaction() as connection:
            removed = connection.execute(
                "DELETE FROM durable_entities WHERE entity = ?", (str(entity),)
            ).rowcount
            removed += connection.execute(
                "DELETE FROM durable_entity_messages WHERE entity = ?", (str(entity),)
            ).rowcount
        return removed > 0

    def release_locks(self, holder: str) -> list[EntityId]:
        with self._tables.transaction() as connection:
            held = connection.execute(
                "SELECT name, key FROM durable_entities WHERE locked_by = ?", (holder,)
            ).fetchall()
            # A change like any other (the version moves): a commit that read the lock
            # held fails and reads again.
            connection.execute(
                "UPDATE durable_entities SET locked_by = NULL, version = version + 1, "
                "updated = ? WHERE locked_by = ?",
                (time.time(), holder),
            )
        return [EntityId(name, key) for name, key in held]

    def forget_sent(self, source: str) -> None:
        with self._tables.transaction() as connection:
            connection.execute(
                "DELETE FROM durable_entity_messages WHERE source = ? AND done IS NOT NULL",
                (source,),
            )

    def _snapshot(self, entity: EntityId, row: Any, waiting: int) -> EntitySnapshot:
        if row is None:
            return EntitySnapshot(entity, waiting=waiting)
        state, version, locked_by, updated = row
        exists = state is not None
        value = self._loads(state) if exists else None
        return EntitySnapshot(entity, exists, value, version, locked_by, updated, waiting)

    def _message(self, row: Any) -> EntityMessage:
        message_id, name, key, kind, operation, data, source, seq, queued = row
        entity = EntityId(name, key)
        return EntityMessage(
            message_id, entity, kind, operation, self._loads(data), source, seq, queued
        )
