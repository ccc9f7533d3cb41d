"""Schedules kept in a store: a table of their own in the store's ``cache.db``.

A schedule runs a notebook headless against the store it is kept in, every N seconds
or at the times of a cron expression (UTC; :mod:`durable_nb.schedule_times`). The
table ``durable_schedules`` is one row per schedule::

    schedule_id TEXT PRIMARY KEY   the name `durable-nb schedule` shows and takes
    data        TEXT               JSON: notebook, every or cron, parameters, created
    done        REAL               the last tick handled (run or skipped), NULL: none
    state       TEXT               JSON: the last run (tick, instance, started, error),
                                   the claimer while it launches, the skipped ticks

The notebook is kept relative to the folder that holds the store when it lies inside
it (the usual ``project/.durable_nb`` beside ``project/report.ipynb``), so the project
folder can be moved; otherwise as an absolute path.

Several schedulers may serve one store at once (a Jupyter server and a terminal's
``durable-nb schedule run``). A tick is taken by a compare-and-set: in one ``BEGIN
IMMEDIATE`` transaction (SQLite lets one writer at a time in, across processes), the
row's ``done`` is checked to be what the scheduler read and set to the tick; so of
two schedulers that both saw the tick due exactly one takes it and launches, and the
other finds ``done`` moved and goes on. The state is changed in the same transaction,
from what the row holds then, so a skip counted by one scheduler and the run's id
recorded by another never overwrite each other. Adding the table needed no format
bump: it is created when the first schedule is added; releases without it ignore it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from durable_nb.errors import ConfigurationError, StoreError
from durable_nb.processes import on_this_host, process_exists, this_process
from durable_nb.schedule_times import Timing

logger = logging.getLogger(__name__)

_TABLE = "durable_schedules"
# A claim whose run was never recorded (its scheduler died on another host, or could
# not write) blocks the schedule for this long at most; launching takes under a second.
STALE_CLAIM_SECONDS = 600.0
_SCHEMA = f"""CREATE TABLE IF NOT EXISTS {_TABLE} (
    schedule_id TEXT PRIMARY KEY, data TEXT NOT NULL, done REAL,
    state TEXT NOT NULL DEFAULT '{{}}')"""


@dataclass(frozen=True)
class Schedule:
    """One schedule as stored. ``state`` holds what its runs left: ``instance`` (the
    last run's id), ``tick`` (the tick it ran for), ``started``, ``error`` (a launch
    that failed), ``launching`` (the scheduler process between taking a tick and
    knowing the run's id), ``skipped`` (ticks skipped because a run was still going)
    and ``skipped_tick`` (the last of them)."""

    schedule_id: str
    notebook: str
    timing: Timing
    parameters: dict[str, Any] = field(default_factory=dict)
    done: float | None = None
    state: dict[str, Any] = field(default_factory=dict)

    def notebook_path(self, store: Path) -> Path:
        """The notebook's path: kept relative to the store's parent folder, or absolute."""
        return (Path(store).resolve().parent / self.notebook).resolve()

    @property
    def launching(self) -> bool:
        """Whether a scheduler took a tick and is (still, alive) starting its run."""
        claimer = self.state.get("launching")
        if not claimer:
            return False
        if time.time() - float(claimer.get("since", 0.0)) > STALE_CLAIM_SECONDS:
            return False  # its record never came (a store error): do not block forever
        # Another host's process cannot be checked from here: trust it for a while.
        return process_exists(int(claimer["pid"])) if on_this_host(claimer["host"]) else True

    def _data(self) -> str:
        return json.dumps(
            {
                "notebook": self.notebook,
                "every": self.timing.every,
                "cron": self.timing.cron,
                "created": self.timing.created,
                "parameters": self.parameters,
            }
        )


def stored_notebook(notebook: Path, store: Path) -> str:
    """How a schedule keeps ``notebook``: relative to the store's parent if inside it."""
    path = notebook.resolve()
    base = store.resolve().parent
    return path.relative_to(base).as_posix() if path.is_relative_to(base) else str(path)


class ScheduleBook:
    """The schedules of one store folder. Opening it creates nothing; ``add`` creates
    the table. Each method uses a short connection of its own, so a book may be used
    from any thread."""

    def __init__(self, store: Path, timeout: float = 30.0) -> None:
        self.store = Path(store).resolve()
        self._database = self.store / "cache.db"
        self._timeout = timeout
        if not self._database.is_file():
            raise StoreError(
                f"no checkpoint store at {self.store}: it has no cache.db. Pass the "
                "folder of a store (--store DIR), or add a schedule to create one.",
                location=str(self.store),
            )

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        try:
            connection = sqlite3.connect(
                self._database, timeout=self._timeout, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise self._explained(exc) from exc
        try:
            yield connection
        except sqlite3.Error as exc:
            raise self._explained(exc) from exc
        finally:
            connection.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: BEGIN IMMEDIATE makes its read and its write one step
        for every other connection, in any process."""
        with self._connection() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def _explained(self, exc: sqlite3.Error) -> StoreError:
        return StoreError(
            f"the schedules of the store at {self.store} cannot be read or written ({exc}); "
            f"`durable-nb doctor --store {self.store}` checks the store.",
            location=str(self.store),
        )

    def _has_table(self, connection: sqlite3.Connection) -> bool:
        row = connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (_TABLE,)
        ).fetchone()
        return row is not None

    # ------------------------------------------------------------ reading

    def list(self) -> list[Schedule]:
        """Every schedule, by id."""
        with self._connection() as connection:
            if not self._has_table(connection):
                return []
            rows = connection.execute(
                f"SELECT schedule_id, data, done, state FROM {_TABLE} ORDER BY schedule_id"
            ).fetchall()
        return [_decoded(row) for row in rows]

    def get(self, schedule_id: str) -> Schedule | None:
        with self._connection() as connection:
            if not self._has_table(connection):
                return None
            row = connection.execute(
                f"SELECT schedule_id, data, done, state FROM {_TABLE} WHERE schedule_id = ?",
                (schedule_id,),
            ).fetchone()
        return None if row is None else _decoded(row)

    # ------------------------------------------------------------ writing

    def add(
        self,
        notebook: Path,
        timing: Timing,
        parameters: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> Schedule:
        """Keep a new schedule; its id is ``name`` or the notebook's stem and a suffix."""
        if name is not None and (not name.strip() or name != name.strip() or "\n" in name):
            raise ConfigurationError(
                f"a schedule's --name must be a non-empty word without surrounding "
                f"spaces, got {name!r}",
                setting="name",
                value=name,
            )
        schedule = Schedule(
            schedule_id=name or f"{notebook.stem}-{secrets.token_hex(3)}",
            notebook=stored_notebook(notebook, self.store),
            timing=timing,
            parameters=dict(parameters or {}),
        )
        with self._connection() as connection:
            connection.execute(_SCHEMA)
            try:
                connection.execute(
                    f"INSERT INTO {_TABLE} (schedule_id, data) VALUES (?, ?)",
                    (schedule.schedule_id, schedule._data()),
                )
            except sqlite3.IntegrityError:
                raise ConfigurationError(
                    f"the store at {self.store} already has a schedule named "
                    f"{schedule.schedule_id!r}; pick another --name or remove that one first",
                    setting="name",
                    value=schedule.schedule_id,
                ) from None
        return schedule

    def remove(self, schedule_id: str) -> bool:
        """Delete a schedule; False if there was none. A run it started goes on."""
        with self._connection() as connection:
            if not self._has_table(connection):
                return False
            cursor = connection.execute(
                f"DELETE FROM {_TABLE} WHERE schedule_id = ?", (schedule_id,)
            )
            return cursor.rowcount > 0

    def take(
        self, schedule: Schedule, tick: float, change: Callable[[dict[str, Any]], None]
    ) -> bool:
        """Mark ``tick`` handled, only if nobody did since ``schedule`` was read (its
        ``done`` is unchanged), and let ``change`` update the state in the same
        transaction: True for the one caller that took it."""
        with self._transaction() as connection:
            row = connection.execute(
                f"SELECT done, state FROM {_TABLE} WHERE schedule_id = ?",
                (schedule.schedule_id,),
            ).fetchone()
            if row is None or row[0] != schedule.done:
                return False
            state = json.loads(row[1] or "{}")
            change(state)
            connection.execute(
                f"UPDATE {_TABLE} SET done = ?, state = ? WHERE schedule_id = ?",
                (tick, json.dumps(state), schedule.schedule_id),
            )
            return True

    def settle(self, schedule_id: str, tick: float, outcome: dict[str, Any]) -> None:
        """Record how the run taken for ``tick`` started (``outcome``: its instance or
        error) and end the claim; skips counted meanwhile are kept."""
        with self._transaction() as connection:
            row = connection.execute(
                f"SELECT state FROM {_TABLE} WHERE schedule_id = ?", (schedule_id,)
            ).fetchone()
            if row is None:
                return  # removed meanwhile
            state = json.loads(row[0] or "{}")
            if state.get("tick") != tick:
                return  # the claim went stale and a later tick was started: keep that
            state.pop("launching", None)
            state.update(outcome)
            connection.execute(
                f"UPDATE {_TABLE} SET state = ? WHERE schedule_id = ?",
                (json.dumps(state), schedule_id),
            )


def claimer() -> dict[str, Any]:
    """This process as the scheduler launching a tick (``state['launching']``)."""
    return {**this_process(), "since": time.time()}


def _decoded(row: tuple[Any, ...]) -> Schedule:
    schedule_id, data, done, state = row
    fields = json.loads(data)
    return Schedule(
        schedule_id=schedule_id,
        notebook=fields["notebook"],
        timing=Timing(created=fields["created"], every=fields["every"], cron=fields["cron"]),
        parameters=fields.get("parameters") or {},
        done=done,
        state=json.loads(state or "{}"),
    )
