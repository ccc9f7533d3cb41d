"""A headless notebook run recorded as an instance of a store: what ``POST
/durable-nb/api/runs`` and schedules start, and what ``durable-nb run --as-instance``
does.

A run is an instance like an orchestration's (its orchestrator is ``NOTEBOOK_RUN``), so
``durable-nb list``, ``show``, ``terminate``, ``purge`` and the HTTP routes treat it as
any other. Its record: input ``{"notebook", "parameters", "origin"}``; custom status
``{"output", "log"}`` (where the executed notebook and the runner's log are written) and
the runner's ``pid`` and ``host`` once it runs; output ``{"output", "cells"}`` once
completed; the failed cell and its error once failed. Its history holds only the
management requests sent to it.

:func:`start_run` writes the record (pending) and starts ``durable-nb run
--as-instance ID`` detached, in a session of its own, so it outlives the server that
asked. That runner holds the instance's lease while it runs (the launcher takes it in
the runner's name at once), so management sees it running, purge refuses it, a
terminate request is appended to its history, and a runner that was killed is seen dead
by its pid (:func:`is_finished`). :func:`run_recorded` is the runner's side.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from durable_nb import history
from durable_nb.errors import (
    ConfigurationError,
    InstanceBusyError,
    InstanceConflictError,
)
from durable_nb.history import Status
from durable_nb.leases import LeaseKeeper, holder_alive
from durable_nb.processes import on_this_host
from durable_nb.settings import check_instance_id
from durable_nb.store import CheckpointStore, DiskCacheStore, InstanceRecord
from durable_nb.store_folder import default_location

if TYPE_CHECKING:
    from durable_nb.notebook_runner import RunOutcome

logger = logging.getLogger(__name__)

NOTEBOOK_RUN = "notebook"  # the orchestrator name of every run's record
# Statuses after which nothing runs the notebook any more.
_OVER = frozenset(
    s.value for s in (Status.COMPLETED, Status.FAILED, Status.TERMINATED, Status.INTERRUPTED)
)
POLL = 0.5  # seconds between the runner's looks at its history (as a live run polls)


def default_store(notebook: Path) -> Path:
    """The store the notebook's kernel uses when told nothing: ``$DURABLE_NB_STORE``,
    else ``.durable_nb``, a relative one taken from the notebook's folder (where its
    kernel starts)."""
    return (notebook.resolve().parent / default_location()).resolve()


def run_files(notebook: Path, instance_id: str) -> tuple[Path, Path]:
    """Where a run writes its executed notebook and its log: ``NAME.runs/ID.ipynb`` and
    ``NAME.runs/ID.log`` beside the notebook, so that runs of one notebook never write
    over each other and the results open in Jupyter next to their source."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", instance_id).lstrip(".") or "run"
    folder = notebook.parent / f"{notebook.stem}.runs"
    return folder / f"{safe}.ipynb", folder / f"{safe}.log"


def new_instance_id(notebook: Path) -> str:
    """``NAME-YYYYmmddTHHMMSS-xxxxxx``: readable, sortable by start, unique."""
    return f"{notebook.stem}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


def is_finished(store: CheckpointStore | Path, instance_id: str) -> bool:
    """Whether nothing runs the notebook run ``instance_id`` any more: it ended, or was
    never there, or its runner is gone (a record left ``running`` by a killed runner,
    whose lease names a dead pid, counts as finished)."""
    if isinstance(store, Path):
        opened = DiskCacheStore(store)
        try:
            return is_finished(opened, instance_id)
        finally:
            opened.close()
    record = store.get_instance(instance_id)
    if record is None or str(record.status) in _OVER:
        return True
    lease = store.get_lease(instance_id)
    return lease is None or not holder_alive(lease, time.time())


def _check_timeout(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigurationError(
            f"timeout must be a positive number of seconds a cell may take, got {timeout!r}",
            setting="timeout",
            value=timeout,
        )
    return float(timeout)


def start_run(
    notebook: Path,
    *,
    store: Path,
    parameters: dict[str, Any] | None = None,
    origin: str = "http",
    instance_id: str | None = None,
    timeout: float | None = None,
) -> str:
    """Record a run of ``notebook`` as a pending instance of ``store`` and start its
    runner in the background; returns the instance id at once.

    ``instance_id`` of an earlier run that is over starts it over (as Durable Functions
    does with the id of an ended instance); of one still running, InstanceBusyError; of
    an orchestration, InstanceConflictError."""
    from durable_nb.notebook_runner import check_parameters

    notebook = notebook.resolve()
    if not notebook.is_file():
        raise ConfigurationError(
            f"no notebook at {notebook}; give the path of an .ipynb file",
            setting="notebook",
            value=str(notebook),
        )
    given = dict(check_parameters({} if parameters is None else parameters))
    try:
        passed = json.dumps(given, allow_nan=False)  # the runner's --parameters
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"parameters must be JSON data (text, numbers, true/false, null, lists and "
            f"objects of them): {exc}",
            setting="parameters",
            value=given,
        ) from None
    seconds = _check_timeout(timeout)
    run_id = new_instance_id(notebook) if instance_id is None else check_instance_id(instance_id)
    output, log = run_files(notebook, run_id)
    folder = store.resolve()
    opened = DiskCacheStore(folder)
    try:
        _make_room(opened, run_id)
        now = time.time()
        record = InstanceRecord(
            run_id,
            NOTEBOOK_RUN,
            created_at=now,
            updated_at=now,
            input={"notebook": str(notebook), "parameters": given, "origin": origin},
        )
        record.custom_status = {"output": str(output), "log": str(log)}
        opened.put_instance(record)
        command = [sys.executable, "-m", "durable_nb.cli", "run", str(notebook)]
        command += ["--store", str(folder), "--as-instance", run_id, "-o", str(output)]
        command += ["--parameters", passed]
        if seconds is not None:
            command += ["--timeout", repr(seconds)]
        try:
            output.parent.mkdir(exist_ok=True)
            with log.open("ab") as sink:
                process = subprocess.Popen(
                    command,
                    cwd=notebook.parent,
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # not stopped with the server, nor by its Ctrl-C
                )
        except OSError as exc:  # no runner will ever write the record: say why here
            record.status, record.error = Status.FAILED.value, f"not started: {exc}"
            record.finished_at = record.updated_at = time.time()
            opened.put_instance(record)
            raise
        _lease_for(opened, run_id, process.pid)
    finally:
        opened.close()
    # Collect its exit status when it ends, so no zombie is left in this process.
    threading.Thread(target=process.wait, name=f"durable-nb-run-{run_id}", daemon=True).start()
    logger.info("started notebook run %s of %s (pid %s)", run_id, notebook, process.pid)
    return run_id


def _taken(run_id: str, owner: str, store: object) -> InstanceConflictError:
    """The error for a run id that an instance of another orchestrator has in ``store``."""
    return InstanceConflictError(
        f"instance id {run_id!r} belongs to orchestrator {owner!r} in {store}; choose "
        "another id for the notebook run",
        instance_id=run_id,
        orchestrator=NOTEBOOK_RUN,
        owner=owner,
    )


def _make_room(store: CheckpointStore, run_id: str) -> None:
    existing = store.get_instance(run_id)
    if existing is None:
        return
    if existing.orchestrator != NOTEBOOK_RUN:
        raise _taken(run_id, existing.orchestrator, store.location)
    if not is_finished(store, run_id):
        raise InstanceBusyError(
            f"notebook run {run_id!r} is still {existing.status} in {store.location}; wait "
            "for it to end or terminate it before starting it again",
            instance_id=run_id,
            status=str(existing.status),
        )
    store.purge(run_id)


def _lease_for(store: CheckpointStore, run_id: str, pid: int) -> None:
    """Take the run's lease in the runner's name before it has started: from now on
    management sees the run as running (a terminate is appended for the runner to see,
    not written over its record), and a runner that dies before it starts is seen dead."""
    now = time.time()
    lease = {
        "owner": f"launch:{pid}",
        "pid": pid,
        "host": socket.gethostname(),
        "since": now,
        "heartbeat": now,
    }
    store.swap_lease(run_id, None, lease)  # refused only if the runner already took it


def _take_over_launch_lease(store: CheckpointStore, run_id: str) -> bool:
    """Whether start_run launched this process (it took the lease in its name); that
    lease is given up so that a LeaseKeeper takes it (it refuses a live holder)."""
    lease = store.get_lease(run_id)
    if lease is None or lease.get("pid") != os.getpid() or not on_this_host(lease.get("host")):
        return False
    store.swap_lease(run_id, lease["owner"], None)
    return True


class _Watch:
    """The runner's thread beside the notebook: renews the lease and reads the run's
    history for a terminate request, which sets ``stop``."""

    def __init__(
        self, store: CheckpointStore, run_id: str, keeper: LeaseKeeper, first_chunk: int
    ) -> None:
        self.store, self.run_id, self.keeper = store, run_id, keeper
        self.stop = threading.Event()
        self.reason: str | None = None
        self._next = first_chunk
        self._done = threading.Event()
        self.look()  # a terminate sent before the runner started
        self._thread = threading.Thread(target=self._loop, name="durable-nb-watch", daemon=True)
        self._thread.start()

    def look(self) -> None:
        for number, events in self.store.read_chunks(self.run_id, self._next):
            self._next = number + 1
            for event in events:
                if isinstance(event, history.ControlRequested) and event.action == "terminate":
                    self.reason = event.reason or "requested"
                    self.stop.set()

    def _loop(self) -> None:
        while not self._done.wait(POLL):
            try:
                if not self.keeper.renew_if_due():
                    self.reason = "its lease was taken over by another runner"
                    self.stop.set()
                    return
                self.look()
            except Exception:  # a busy store now and then: look again next time
                logger.warning("could not read notebook run %s", self.run_id, exc_info=True)

    def close(self) -> None:
        self._done.set()
        self._thread.join()


def run_recorded(
    notebook: Path,
    *,
    store: Path,
    instance_id: str,
    execute: Callable[[threading.Event], RunOutcome],
    parameters: dict[str, Any],
    output: Path,
) -> RunOutcome | None:
    """The runner: mark the instance running, ``execute`` the notebook (given the event
    that stops it) and record how it ended. None when a terminate came before it ran.
    Without a record (``durable-nb run --as-instance`` typed by hand) one is made."""
    opened = DiskCacheStore(store)
    try:
        launched = _take_over_launch_lease(opened, instance_id)
        record = opened.get_instance(instance_id)
        given = {"notebook": str(notebook.resolve()), "parameters": parameters}
        if record is None:
            record = InstanceRecord(
                instance_id, NOTEBOOK_RUN, created_at=time.time(), input={**given, "origin": "cli"}
            )
        elif record.orchestrator != NOTEBOOK_RUN:
            raise _taken(instance_id, record.orchestrator, store)
        elif launched and str(record.status) == Status.TERMINATED.value:
            return None  # terminated while the launch lease looked silent
        elif not launched:  # a run by hand of an existing run: given what it is given now
            record.input = {**given, "origin": (record.input or {}).get("origin", "cli")}
        # The runner start_run launched obeys a terminate sent before it started; a run
        # by hand does not obey one an earlier run already obeyed.
        chunks = [] if launched else opened.read_chunks(instance_id, 0)
        first = chunks[-1][0] + 1 if chunks else 0
        keeper = LeaseKeeper(opened, instance_id)
        keeper.acquire()
        try:
            return _run_holding(opened, record, keeper, execute, output, first)
        finally:
            keeper.release()
    finally:
        opened.close()


def _run_holding(
    store: CheckpointStore,
    record: InstanceRecord,
    keeper: LeaseKeeper,
    execute: Callable[[threading.Event], RunOutcome],
    output: Path,
    first_chunk: int,
) -> RunOutcome | None:
    now = time.time()
    status = dict(record.custom_status or {})
    status.update(output=str(output), pid=os.getpid(), host=socket.gethostname())
    record.status, record.started_at, record.updated_at = Status.RUNNING.value, now, now
    record.runs += 1
    record.finished_at, record.error, record.custom_status = None, None, status
    store.put_instance(record)
    watch = _Watch(store, record.instance_id, keeper, first_chunk)
    outcome: RunOutcome | None = None
    try:
        if not watch.stop.is_set():
            outcome = execute(watch.stop)
    except BaseException as exc:  # recorded, then passed on (Ctrl-C, a broken kernel)
        watch.close()
        _record_end(store, record, None, watch.reason, exc)
        raise
    watch.close()
    _record_end(store, record, outcome, watch.reason, None)
    return outcome


def _record_end(
    store: CheckpointStore,
    record: InstanceRecord,
    outcome: RunOutcome | None,
    stopped_for: str | None,
    exc: BaseException | None,
) -> None:
    """completed, failed or terminated, with what the run left; a runner interrupted
    (Ctrl-C, SIGTERM) leaves it interrupted, one that fails leaves it failed."""
    now = time.time()
    record.updated_at = record.finished_at = now
    if stopped_for is not None:
        record.status, record.error = Status.TERMINATED.value, f"terminated: {stopped_for}"
    elif isinstance(exc, KeyboardInterrupt):
        record.status, record.error = Status.INTERRUPTED.value, "the runner was interrupted"
    elif exc is not None or outcome is None:
        record.status = Status.FAILED.value
        record.error = f"the runner failed: {type(exc).__name__}: {exc}"
    elif outcome.failed_cell is not None:
        record.status = Status.FAILED.value
        record.error = f"cell {outcome.failed_cell} failed: {outcome.error}"
        record.output = {"output": str(outcome.written), "failedCell": outcome.failed_cell}
    else:
        record.status = Status.COMPLETED.value
        record.output = {"output": str(outcome.written), "cells": outcome.cells}
    store.put_instance(record)
