"""A SQLite database shared by threads and processes: one connection per thread, short
write transactions, and errors that say where and what to do.

The store's tables (:mod:`durable_nb.tables`, :mod:`durable_nb.entity_tables`) are rows of
diskcache's ``cache.db``, written through these connections (WAL, diskcache's journal
mode: a reader never blocks a writer).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

from durable_nb.errors import StoreError

# A write at least this big truncates the WAL after it (SqliteDatabase._after_write).
WAL_TRUNCATE_BYTES = 1 << 20


class SqliteDatabase:
    """Connections to one SQLite file, one per thread, and its transactions."""

    def __init__(self, database: str, timeout: float = 60.0) -> None:
        self._database = database
        self._timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []

    def _connection(self) -> sqlite3.Connection:
        # One connection per thread: a late result is written from a worker thread.
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(
                self._database,
                timeout=self._timeout,
                isolation_level=None,
                check_same_thread=False,  # used by its thread only; close() runs anywhere
            )
            # WAL is already on (diskcache sets it on the file); NORMAL keeps every
            # commit through a process crash, like diskcache's own connections.
            connection.execute("PRAGMA synchronous = NORMAL")
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._errors_explained():
            connection = self._connection()
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def _after_write(self, size: int) -> None:
        """After a write of ``size`` bytes or more (a batch of results just under the size
        that gets a file), fold the WAL into the database and truncate it, so that the
        WAL does not keep a second copy on disk. Skipped, not waited for, while another
        connection is reading or writing: a later big write does it."""
        if size < WAL_TRUNCATE_BYTES:
            return
        connection = self._connection()
        with contextlib.suppress(sqlite3.Error):
            connection.execute("PRAGMA busy_timeout = 0")
            try:
                connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            finally:
                connection.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")

    def _query(self, sql: str, *parameters: object) -> list[Any]:
        with self._errors_explained():
            return self._connection().execute(sql, parameters).fetchall()

    # For the store's other tables (entity_tables.py): the same connections and errors.
    transaction = _transaction
    query = _query

    @contextlib.contextmanager
    def _errors_explained(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise self._explained(exc) from exc

    def _explained(self, exc: sqlite3.DatabaseError) -> StoreError:
        """SQLite's errors, with where and what to do (a full disk, a lock held by
        another process for longer than the timeout, a damaged file)."""
        location = os.path.dirname(self._database)
        if isinstance(exc, sqlite3.OperationalError):
            locked = "locked" in str(exc)
            advice = (
                f"another process held it for over {self._timeout:g} s; stop the other "
                "kernel or command using this store, then rerun"
                if locked
                else "free disk space or fix the folder's permissions, then rerun"
            )
            return StoreError(
                f"the checkpoint store database {self._database} could not be used ({exc}): "
                f"{advice}. Results checkpointed before are kept.",
                location=location,
            )
        if isinstance(exc, sqlite3.DataError):
            return StoreError(
                f"the checkpoint store database {self._database} refused a value ({exc}); "
                "return smaller results from each activity, or arrays and frames, which "
                "are stored in files of their own",
                location=location,
            )
        return StoreError(
            f"the checkpoint store database {self._database} is damaged ({exc}); "
            f"`durable-nb doctor --store {location}` tells what to do",
            location=location,
        )

    def data_version(self) -> int:
        """SQLite's ``data_version`` of this thread's connection: it moves when another
        connection (another process, another thread of this one) committed a change."""
        try:
            (version,) = self._connection().execute("PRAGMA data_version").fetchone()
        except sqlite3.DatabaseError as exc:
            raise self._explained(exc) from exc
        return int(version)

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            with contextlib.suppress(sqlite3.Error):
                connection.close()
        self._local = threading.local()
