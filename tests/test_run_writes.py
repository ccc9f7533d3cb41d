"""A run's opening and closing writes: each one transaction.

A run starts by taking its instance's lease and marking the record running
(``CheckpointStore.open_run``), and ends by appending ``ExecutionFinished``, writing the
record and giving the lease back (``close_run``). Each was two or three commits; a
sub-orchestration pays them per child. Faults are injected inside the transaction with
SQLite triggers, on the real database.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from builders import completed, started

import durable_nb as dn
from durable_nb import history
from durable_nb.errors import InstanceBusyError, StoreError
from durable_nb.leases import LeaseKeeper
from durable_nb.runtime import Runtime
from durable_nb.store import CheckpointStore, DiskCacheStore, InstanceRecord


def lease_of(owner: str) -> dict[str, Any]:
    return {"owner": owner, "pid": 1, "host": "elsewhere", "since": 0.0, "heartbeat": 0.0}


def running(record: InstanceRecord | None) -> InstanceRecord:
    made = record or InstanceRecord("i", "orch", created_at=1.0)
    made.runs += 1
    made.status = "running"
    return made


def test_open_run_takes_the_lease_and_writes_the_record(store: CheckpointStore) -> None:
    record = store.open_run("i", None, lease_of("me"), running)
    assert record is not None and record.runs == 1
    stored = store.get_instance("i")
    assert stored is not None and (stored.status, stored.runs) == ("running", 1)
    assert (store.get_lease("i") or {})["owner"] == "me"
    store.swap_lease("i", "me", None)
    again = store.open_run("i", None, lease_of("me"), running)  # made of the stored one
    assert again is not None and again.runs == 2


def test_open_run_writes_nothing_when_the_lease_is_someone_elses(store: CheckpointStore) -> None:
    store.put_instance(InstanceRecord("i", "orch", created_at=1.0))
    assert store.swap_lease("i", None, lease_of("other"))
    assert store.open_run("i", None, lease_of("me"), running) is None
    assert store.open_run("i", "third", lease_of("me"), running) is None
    stored = store.get_instance("i")
    assert stored is not None and (stored.status, stored.runs) == ("pending", 0)
    assert (store.get_lease("i") or {})["owner"] == "other"


def test_open_run_writes_nothing_when_the_record_changed_since_it_was_read(
    tmp_path: Path,
) -> None:
    """The record is read, and its large values written, before the transaction; another
    writer that wrote it meanwhile (here another connection to the folder, as another
    process has) makes the transaction write nothing, and the keeper looks again."""
    store, other = DiskCacheStore(tmp_path / "s"), DiskCacheStore(tmp_path / "s")
    store.put_instance(InstanceRecord("i", "orch", created_at=1.0))
    calls = 0

    def opened_while_another_writes(record: InstanceRecord | None) -> InstanceRecord:
        nonlocal calls
        calls += 1
        if calls == 1:
            other.put_instance(InstanceRecord("i", "orch", created_at=1.0, error="theirs"))
        return running(record)

    keeper = LeaseKeeper(store, "i")
    keeper.acquire(
        lambda expected, lease: bool(
            store.open_run("i", expected, lease, opened_while_another_writes)
        )
    )
    assert calls == 2 and keeper.held
    stored = store.get_instance("i")
    assert stored is not None and (stored.error, stored.runs) == ("theirs", 1)  # not lost
    store.close()
    other.close()


def test_close_run_appends_writes_the_record_and_gives_the_lease_back(
    store: CheckpointStore,
) -> None:
    record = store.open_run("i", None, lease_of("me"), running)
    assert record is not None
    store.append("i", [started(), completed("a/1/2#0", 5)])
    record.status, record.output = "completed", 5
    store.close_run(record, [history.ExecutionFinished(2.0, "completed", "", None)], "me")
    assert store.get_lease("i") is None
    stored = store.get_instance("i")
    assert stored is not None and (stored.status, stored.output) == ("completed", 5)
    events = store.read_history("i")
    assert [type(e).__name__ for e in events][-1] == "ExecutionFinished"
    assert store.history_chunks("i") == 2


def test_close_run_keeps_a_lease_taken_over_and_writes_no_empty_chunk(
    store: CheckpointStore,
) -> None:
    record = store.open_run("i", None, lease_of("me"), running)
    assert record is not None
    assert store.swap_lease("i", "me", lease_of("taker"))  # as a kernel that thought us dead
    record.status = "interrupted"
    store.close_run(record, [], "me")
    assert (store.get_lease("i") or {})["owner"] == "taker"
    assert store.history_chunks("i") == 0
    stored = store.get_instance("i")
    assert stored is not None and stored.status == "interrupted"


def _raise_on(store: DiskCacheStore, table: str, action: str) -> None:
    """A trigger that fails the transaction when ``action`` touches ``table``."""
    connection = sqlite3.connect(str(Path(store.location) / "cache.db"))
    connection.execute(
        f"CREATE TRIGGER fail_{action.lower()} BEFORE {action} ON {table} "
        "BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
    )
    connection.commit()
    connection.close()


def test_a_fault_inside_close_run_leaves_chunk_record_and_lease_as_they_were(
    tmp_path: Path,
) -> None:
    store = DiskCacheStore(tmp_path / "s")
    record = store.open_run("i", None, lease_of("me"), running)
    assert record is not None
    _raise_on(store, "durable_leases", "DELETE")  # the transaction's last statement
    record.status = "completed"
    with pytest.raises(StoreError, match="injected fault"):
        store.close_run(record, [history.ExecutionFinished(2.0, "completed", "", None)], "me")
    assert store.history_chunks("i") == 0
    stored = store.get_instance("i")
    assert stored is not None and stored.status == "running"
    assert (store.get_lease("i") or {})["owner"] == "me"
    store.close()


def test_a_fault_inside_open_run_takes_no_lease(tmp_path: Path) -> None:
    store = DiskCacheStore(tmp_path / "s")
    store.put_instance(InstanceRecord("i", "orch", created_at=1.0))
    _raise_on(store, "durable_instances", "INSERT")  # the transaction's last statement
    with pytest.raises(StoreError, match="injected fault"):
        store.open_run("i", None, lease_of("me"), running)
    assert store.get_lease("i") is None
    store.close()


def _writes(trace: list[str]) -> int:
    """Commits in a statement trace: each COMMIT, and each write outside a transaction
    (an autocommit statement)."""
    writes, in_transaction = 0, False
    for statement in trace:
        word = statement.split(None, 1)[0].upper()
        if word == "BEGIN":
            in_transaction = True
        elif word in ("COMMIT", "ROLLBACK"):
            writes += word == "COMMIT"
            in_transaction = False
        elif word in ("INSERT", "UPDATE", "DELETE", "REPLACE") and not in_transaction:
            writes += 1
    return writes


@dn.activity
def one(i: int) -> int:
    return i


@dn.orchestrator
def step(ctx, i):  # type: ignore[no-untyped-def]
    return (yield ctx.call_activity(one, i))


@dn.orchestrator
def parent(ctx, n):  # type: ignore[no-untyped-def]
    return sum((yield ctx.task_all([ctx.call_sub_orchestrator(step, i) for i in range(n)])))


def test_a_one_step_run_commits_four_times_and_a_child_three(rt: Runtime) -> None:
    """Its pending record (made when the cell starts it, so that status and raise_event
    work at once), its opening, its step and its end; a child has no pending record.
    Before: seven and six (the lease and the record apart, twice, and the last chunk)."""
    assert isinstance(rt.store, DiskCacheStore)
    step.run(0, instance_id="warm")  # the thread's connection is open
    connection = rt.store._tables._connection()
    trace: list[str] = []
    connection.set_trace_callback(trace.append)
    try:
        assert step.run(1, instance_id="one") == 1
        one_run = _writes(trace)
        # A free lease is taken without reading it first (a lease there fails the swap).
        assert not [s for s in trace if s.startswith("SELECT data FROM durable_leases")]
        trace.clear()
        assert parent.run(3, instance_id="three") == 3
        three_children = _writes(trace)
    finally:
        connection.set_trace_callback(None)
    assert one_run == 4
    assert three_children == 4 + 3 * 3
    children = [r.instance_id for r in rt.store.list_instances() if r.parent == "three"]
    assert len(children) == 3
    for instance_id in ["one", "three", *children]:
        assert rt.store.get_lease(instance_id) is None, instance_id
        kinds = [type(e).__name__ for e in rt.store.read_history(instance_id)]
        assert kinds[-1] == "ExecutionFinished", (instance_id, kinds)
        record = rt.status(instance_id)
        assert record is not None and record.status == "completed", instance_id


def test_a_run_whose_output_or_input_cannot_be_stored_still_gives_its_lease_back(
    rt: Runtime,
) -> None:
    @dn.orchestrator
    def unstorable(ctx, value):  # type: ignore[no-untyped-def]
        yield ctx.call_activity(one, 1)
        return threading.Lock()  # works live, cannot be pickled

    lock = threading.Lock()
    assert unstorable.run(lock, instance_id="u") is not None
    assert rt.store.get_lease("u") is None
    record = rt.status("u")
    assert record is not None and record.status == "completed"
    assert record.output is None and record.input is None


def test_a_run_refused_its_lease_writes_no_record(rt: Runtime) -> None:
    assert rt.store.swap_lease("busy", None, {**lease_of("x"), "heartbeat": 9e99})
    rt.busy_timeout = 0.0
    with pytest.raises(InstanceBusyError, match="pid 1 on host elsewhere"):
        step.run(1, instance_id="busy")
    record = rt.status("busy")
    assert record is not None and (record.status, record.runs) == ("pending", 0)


def test_a_dead_holders_lease_is_taken_over_with_the_record(rt: Runtime) -> None:
    """The first attempt finds the lease there (the swap from nobody fails), the next
    reads it: silent for longer than the TTL, it is taken over."""
    assert rt.store.swap_lease("stale", None, lease_of("gone"))  # heartbeat at 1970
    assert step.run(2, instance_id="stale") == 2
    assert rt.store.get_lease("stale") is None
    record = rt.status("stale")
    assert record is not None and (record.status, record.runs) == ("completed", 1)
