"""The store's own SQLite tables: history chunks, instance records, leases, shared results.

A sequential orchestration writes once per activity, and every write must be
durable before the orchestrator sees the result, so the cost of one write is the
floor of a step. diskcache spends ~70 µs on one (several statements, triggers, its
own bookkeeping); a plain table takes a chunk in one short transaction (~20 µs),
reads a whole history back with one indexed query, and lets the writes that must go
together (a new generation's record with its emptied history; a purge) share one
transaction.

The tables live in diskcache's ``cache.db``: diskcache leaves tables it does not
know alone, so the store stays one folder and one database, and diskcache's own
``check()`` still vouches for it. diskcache keeps what it is good at: large results
in files, and small settings. Values here are bytes or text; the store chooses the
serializer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from durable_nb.sqlite_db import WAL_TRUNCATE_BYTES, SqliteDatabase

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS durable_history (
        stream TEXT NOT NULL, n INTEGER NOT NULL, data BLOB NOT NULL,
        PRIMARY KEY (stream, n)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS durable_instances (
        instance_id TEXT PRIMARY KEY, epoch TEXT NOT NULL, data BLOB NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS durable_leases (
        instance_id TEXT PRIMARY KEY, owner TEXT NOT NULL, data TEXT NOT NULL)""",
    # Results of share=True activities, the latest success per activity and digest (code
    # and arguments), answering calls of any instance. ``large`` is the key of the
    # result's file (in the sharing instance's history) or NULL; ``data`` is the encoded
    # result. Added after format 2 without a format bump: it is additive, an older store
    # gets it (empty) when opened, and a release without it ignores it.
    """CREATE TABLE IF NOT EXISTS durable_shared (
        activity TEXT NOT NULL, digest TEXT NOT NULL, finished REAL NOT NULL,
        instance_id TEXT NOT NULL, large TEXT, data BLOB NOT NULL,
        PRIMARY KEY (activity, digest))""",
    """CREATE INDEX IF NOT EXISTS durable_shared_by_instance
        ON durable_shared (instance_id)""",
)

# One shared result to record with a chunk: activity, digest, finished, large key, data.
SharedRow = tuple[str, str, float, str | None, bytes]

# Chunks at least this big on average are not merged by read_compacting: merging them
# would rewrite the history for nothing.
_BIG_CHUNK = 4096


class StoreTables(SqliteDatabase):
    """Atomic operations on the tables, safe across threads and processes."""

    def __init__(self, database: str, timeout: float = 60.0) -> None:
        super().__init__(database, timeout)
        # The number the next chunk of a stream most likely gets: the one after this
        # store's last append to it. See append().
        self._expected: dict[str, int] = {}
        with self._transaction() as connection:
            for statement in _SCHEMA:
                connection.execute(statement)

    # ------------------------------------------------------------ history

    def append(
        self, stream: str, data: bytes, instance_id: str = "", shared: Sequence[SharedRow] = ()
    ) -> int:
        """Add a chunk after the stream's last one; returns its number (0, 1, ...).

        ``shared``: results of the chunk to share, recorded for ``instance_id`` in the
        same transaction, so a crash leaves both or neither: never a shared row without
        its history. (A large result's file is written before this transaction; a crash
        in between leaves it to its instance, whose purge deletes it, like any large
        result.) Only while the instance has a record: a run appending after its
        instance was purged shares nothing (its large file may be gone already)."""
        if shared:
            return self._expect(stream, self._append_shared(stream, data, instance_id, shared))
        # The hot path (a chunk per activity, a run being the only writer of its stream):
        # one autocommit INSERT at the number after this store's last append, where
        # BEGIN, SELECT MAX, INSERT and COMMIT cost four statements (about 7 µs of CPU
        # per chunk on SQLite 3.40). The number is taken only if its predecessor is
        # there (the subquery is NULL otherwise, which NOT NULL refuses) and it is free
        # (the primary key): numbers are dense, so that is the stream's last plus one,
        # checked by SQLite in the statement itself. The number expected comes from this
        # store's last append to the stream or its last full read of it (a run's load).
        # Refused (another writer appended, or emptied the stream), the chunk goes after
        # the last in a transaction; a run then sees others' chunks as the numbers its
        # own chunk skipped, as before.
        expected = self._expected.get(stream)
        try:
            connection = self._connection()
            number = -1
            if expected is not None:
                try:
                    if expected == 0:  # a new history (its load found it empty), if still so
                        connection.execute(_INSERT_FIRST_CHUNK, (stream, data))
                    else:
                        connection.execute(_INSERT_NEXT_CHUNK, (stream, expected - 1, data))
                    number = expected
                except sqlite3.IntegrityError:
                    pass
            if number < 0:
                connection.execute("BEGIN IMMEDIATE")
                try:
                    number = _append_in(connection, stream, data)
                except BaseException:
                    if connection.in_transaction:
                        connection.execute("ROLLBACK")
                    raise
                connection.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise self._explained(exc) from exc
        self._expect(stream, number)
        if len(data) >= WAL_TRUNCATE_BYTES:
            self._after_write(len(data))
        return number

    def _expect(self, stream: str, appended: int) -> int:
        if len(self._expected) >= _EXPECTED_STREAMS:
            self._expected.clear()  # a kernel that ran very many instances: start over
        self._expected[stream] = appended + 1
        return appended

    def _append_shared(
        self, stream: str, data: bytes, instance_id: str, shared: Sequence[SharedRow]
    ) -> int:
        with self._transaction() as connection:
            number = _append_in(connection, stream, data)
            if connection.execute(
                "SELECT 1 FROM durable_instances WHERE instance_id = ?", (instance_id,)
            ).fetchone():
                connection.executemany(
                    "INSERT OR REPLACE INTO durable_shared "
                    "(activity, digest, finished, instance_id, large, data) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(a, d, t, instance_id, large, v) for a, d, t, large, v in shared],
                )
        self._after_write(len(data))
        return number

    def append_if(self, stream: str, data: bytes, instance_id: str, history_id: str) -> bool:
        """Append only while the instance is on history ``history_id`` (the ``epoch``
        column of its record), in one transaction."""
        with self._transaction() as connection:
            row = connection.execute(
                "SELECT epoch FROM durable_instances WHERE instance_id = ?", (instance_id,)
            ).fetchone()
            if row is None or row[0] != history_id:
                return False
            self._expect(stream, _append_in(connection, stream, data))
        self._after_write(len(data))
        return True

    def insert_chunks(self, stream: str, chunks: list[tuple[int, bytes]]) -> None:
        """Put chunks at given numbers, keeping any already there (for migrations)."""
        with self._transaction() as connection:
            connection.executemany(
                "INSERT OR IGNORE INTO durable_history (stream, n, data) VALUES (?, ?, ?)",
                [(stream, number, data) for number, data in chunks],
            )
        self._expected.pop(stream, None)

    def read(self, stream: str, start: int = 0) -> list[tuple[int, bytes]]:
        """The chunks numbered ``start`` and up, in order."""
        rows = self._query(
            "SELECT n, data FROM durable_history WHERE stream = ? AND n >= ? ORDER BY n",
            stream,
            start,
        )
        return [(int(number), bytes(data)) for number, data in rows]

    def read_all(self, stream: str) -> tuple[list[bytes], int]:
        """All the stream's chunks in order, and the number the next one gets."""
        rows = self._query(
            "SELECT n, data FROM durable_history WHERE stream = ? ORDER BY n", stream
        )
        following = rows[-1][0] + 1 if rows else 0
        self._expect(stream, following - 1)
        return [row[1] for row in rows], following

    def read_compacting(
        self, stream: str, more_than: int, merge: Callable[[list[bytes]], bytes]
    ) -> tuple[list[bytes], int]:
        """The stream's chunks in order and the number the next one gets; when there are
        more than ``more_than`` and they are small on average (a chain's: a row each costs
        more to read than its events to decode; a fan-out's batches are worth no
        rewrite), replaced by one, ``merge`` of them all, in the read's own transaction.
        A write by another connection since the read began (an append, a purge) makes
        the upgrade to a write fail at once (WAL, diskcache's journal mode: a reader
        never blocks a writer): the chunks read are returned as they are, uncompacted,
        and nothing is lost (a later load compacts them)."""
        try:
            connection = self._connection()
            connection.execute("BEGIN")  # deferred: a snapshot to read, written if unchanged
            try:
                rows = connection.execute(
                    "SELECT n, data FROM durable_history WHERE stream = ? ORDER BY n", (stream,)
                ).fetchall()
                chunks = [bytes(data) for _, data in rows]
                following = int(rows[-1][0]) + 1 if rows else 0
                if len(rows) <= more_than or sum(map(len, chunks)) > len(rows) * _BIG_CHUNK:
                    connection.execute("COMMIT")  # few chunks, or big ones: kept as they are
                    self._expect(stream, following - 1)
                    return chunks, following
                merged = merge(chunks)
                try:
                    _delete_stream_in(connection, stream)
                    _append_in(connection, stream, merged)  # number 0: the stream is empty
                    connection.execute("COMMIT")
                except sqlite3.OperationalError:  # written meanwhile (or now): keep it all
                    connection.execute("ROLLBACK")
                    return chunks, following
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as exc:
            raise self._explained(exc) from exc
        self._expect(stream, 0)  # the merged chunk is number 0
        self._after_write(len(merged))
        return [merged], 1

    def count(self, stream: str) -> int:
        (row,) = self._query("SELECT COUNT(*) FROM durable_history WHERE stream = ?", stream)
        return int(row[0])

    def compact(self, stream: str, merge: Callable[[list[bytes]], bytes]) -> None:
        """Replace the stream's chunks by one, ``merge`` of them all, atomically."""
        with self._transaction() as connection:
            rows = connection.execute(
                "SELECT data FROM durable_history WHERE stream = ? ORDER BY n", (stream,)
            ).fetchall()
            if len(rows) <= 1:
                return
            merged = merge([bytes(data) for (data,) in rows])
            _delete_stream_in(connection, stream)
            _append_in(connection, stream, merged)  # number 0: the stream is empty
        self._expected.pop(stream, None)
        self._after_write(len(merged))

    def streams(self) -> list[str]:
        rows = self._query("SELECT DISTINCT stream FROM durable_history")
        return [str(stream) for (stream,) in rows]

    def delete_stream(self, stream: str) -> None:
        with self._transaction() as connection:
            _delete_stream_in(connection, stream)
        self._expected.pop(stream, None)

    # ------------------------------------------------------------ instances

    def get_instance(self, instance_id: str) -> bytes | None:
        rows = self._query("SELECT data FROM durable_instances WHERE instance_id = ?", instance_id)
        return bytes(rows[0][0]) if rows else None

    def put_instance(self, instance_id: str, data: bytes, history_id: str) -> bytes | None:
        """Write the record; returns the one it replaced (None if there was none)."""
        with self._transaction() as connection:
            old = _get_instance_in(connection, instance_id)
            _put_instance_in(connection, instance_id, data, history_id)
        self._after_write(len(data))
        return old

    def instances(self) -> list[bytes]:
        return [bytes(data) for (data,) in self._query("SELECT data FROM durable_instances")]

    def reset(self, stream: str, instance_id: str, data: bytes, history_id: str) -> bytes | None:
        """Empty the history and write the record, in one transaction; returns the record
        it replaced. Shared results whose file goes with the history go too; small ones
        stay shared."""
        with self._transaction() as connection:
            old = _get_instance_in(connection, instance_id)
            _delete_stream_in(connection, stream)
            _put_instance_in(connection, instance_id, data, history_id)
            connection.execute(
                "DELETE FROM durable_shared WHERE instance_id = ? AND large IS NOT NULL",
                (instance_id,),
            )
        self._expected.pop(stream, None)
        self._after_write(len(data))
        return old

    def purge(self, stream: str, instance_id: str) -> bool:
        """Delete the record, history and lease, in one transaction; False if none was there."""
        removed = 0
        with self._transaction() as connection:
            for sql, key in (
                ("DELETE FROM durable_history WHERE stream = ?", stream),
                ("DELETE FROM durable_instances WHERE instance_id = ?", instance_id),
                ("DELETE FROM durable_leases WHERE instance_id = ?", instance_id),
            ):
                removed += connection.execute(sql, (key,)).rowcount
            # Its shared results go with it (not counted: they are no instance).
            connection.execute("DELETE FROM durable_shared WHERE instance_id = ?", (instance_id,))
        self._expected.pop(stream, None)
        return removed > 0

    # ------------------------------------------------------------ shared results

    def find_shared(
        self, activity: str, digests: Sequence[str]
    ) -> list[tuple[str, float, str, str | None, bytes]]:
        """The shared results of ``activity`` with these digests: digest, finished,
        instance, large key, data. Primary-key lookups, up to 500 digests a query."""
        found = []
        for start in range(0, len(digests), 500):
            part = digests[start : start + 500]
            rows = self._query(
                "SELECT digest, finished, instance_id, large, data FROM durable_shared "
                f"WHERE activity = ? AND digest IN ({', '.join('?' * len(part))})",
                activity,
                *part,
            )
            found += [(str(d), float(t), str(i), large, bytes(v)) for d, t, i, large, v in rows]
        return found

    def forget_shared(self, activity: str, digest: str, instance_id: str) -> None:
        """Drop a shared row that turned out unusable (its file is gone), if still that one."""
        with self._transaction() as connection:
            connection.execute(
                "DELETE FROM durable_shared WHERE activity = ? AND digest = ? AND instance_id = ?",
                (activity, digest, instance_id),
            )

    # ------------------------------------------------------------ leases

    def get_lease(self, instance_id: str) -> str | None:
        rows = self._query("SELECT data FROM durable_leases WHERE instance_id = ?", instance_id)
        return str(rows[0][0]) if rows else None

    def swap_lease(
        self, instance_id: str, expected: str | None, owner: str | None, data: str | None
    ) -> bool:
        """Compare-and-swap on the lease's owner; ``owner=None`` releases it."""
        with self._transaction() as connection:
            if _lease_owner_in(connection, instance_id) != expected:
                return False
            if owner is None:
                connection.execute(
                    "DELETE FROM durable_leases WHERE instance_id = ?", (instance_id,)
                )
            else:
                connection.execute(_PUT_LEASE, (instance_id, owner, data))
        return True

    # ------------------------------------------------------------ a run's two ends

    def open_run(
        self,
        instance_id: str,
        expected: str | None,
        owner: str,
        lease: str,
        seen: bytes | None,
        data: bytes,
        history_id: str,
    ) -> bool:
        """A run's start, one transaction: the lease taken from ``expected`` (None: no
        lease) and the record ``data`` written, made from ``seen`` (the record as it was
        read, None if there was none). False, and nothing written, when the lease is no
        longer ``expected``'s or the record no longer ``seen``."""
        with self._transaction() as connection:
            if _lease_owner_in(connection, instance_id) != expected:
                return False
            if _get_instance_in(connection, instance_id) != seen:
                return False
            connection.execute(_PUT_LEASE, (instance_id, owner, lease))
            _put_instance_in(connection, instance_id, data, history_id)
        self._after_write(len(data))
        return True

    def close_run(
        self,
        stream: str,
        chunk: bytes | None,
        instance_id: str,
        data: bytes,
        history_id: str,
        owner: str | None,
    ) -> bytes | None:
        """A run's end, one transaction: ``chunk`` after the stream's last (None: none),
        the record ``data``, and the lease given back if ``owner`` still holds it (None:
        kept as it is). Returns the record it replaced."""
        with self._transaction() as connection:
            number = _append_in(connection, stream, chunk) if chunk is not None else None
            old = _get_instance_in(connection, instance_id)
            _put_instance_in(connection, instance_id, data, history_id)
            if owner is not None:
                connection.execute(
                    "DELETE FROM durable_leases WHERE instance_id = ? AND owner = ?",
                    (instance_id, owner),
                )
        if number is not None:
            self._expect(stream, number)
        self._after_write(len(data) + len(chunk or b""))
        return old


def _append_in(connection: sqlite3.Connection, stream: str, data: bytes) -> int:
    """Within a write transaction: add a chunk after the stream's last; its number."""
    (number,) = connection.execute(
        "SELECT COALESCE(MAX(n) + 1, 0) FROM durable_history WHERE stream = ?", (stream,)
    ).fetchone()
    connection.execute(_INSERT_CHUNK, (stream, number, data))
    return int(number)


_INSERT_CHUNK = "INSERT INTO durable_history (stream, n, data) VALUES (?, ?, ?)"
_INSERT_NEXT_CHUNK = (
    "INSERT INTO durable_history (stream, n, data) VALUES "
    "(?1, (SELECT n + 1 FROM durable_history WHERE stream = ?1 AND n = ?2), ?3)"
)
# As _INSERT_NEXT_CHUNK: the number is NULL, which NOT NULL refuses, unless the stream is
# empty. (Not INSERT ... SELECT, which copies the chunk once more: 145 MiB more at the
# peak of a fan-out of 1,000,000, whose first chunk holds every TaskScheduled.)
_INSERT_FIRST_CHUNK = (
    "INSERT INTO durable_history (stream, n, data) VALUES "
    "(?1, (SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM durable_history WHERE stream = ?1)), ?2)"
)
_EXPECTED_STREAMS = 10_000


def _delete_stream_in(connection: sqlite3.Connection, stream: str) -> None:
    connection.execute("DELETE FROM durable_history WHERE stream = ?", (stream,))


def _get_instance_in(connection: sqlite3.Connection, instance_id: str) -> bytes | None:
    row = connection.execute(
        "SELECT data FROM durable_instances WHERE instance_id = ?", (instance_id,)
    ).fetchone()
    return bytes(row[0]) if row is not None else None


def _put_instance_in(
    connection: sqlite3.Connection, instance_id: str, data: bytes, history_id: str
) -> None:
    connection.execute(
        "INSERT OR REPLACE INTO durable_instances (instance_id, epoch, data) VALUES (?, ?, ?)",
        (instance_id, history_id, data),
    )


def _lease_owner_in(connection: sqlite3.Connection, instance_id: str) -> str | None:
    row = connection.execute(
        "SELECT owner FROM durable_leases WHERE instance_id = ?", (instance_id,)
    ).fetchone()
    return str(row[0]) if row is not None else None


_PUT_LEASE = "INSERT OR REPLACE INTO durable_leases (instance_id, owner, data) VALUES (?, ?, ?)"
