"""Durable entities through the runtime, on a real store with real threads: what ran
is counted in files the entity operations write, so a replay that applied an
operation again would show."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

import durable_nb as dn
from durable_nb import history
from durable_nb.runtime import Runtime
from durable_nb.store import DiskCacheStore

C1 = dn.EntityId("counter", "c1")


def _applied(folder: Path) -> int:
    return len(list(folder.iterdir())) if folder.exists() else 0


def _mark(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    fd, _ = tempfile.mkstemp(dir=folder)
    os.close(fd)


def define_counter(marks: Path) -> dn.Entity:
    @dn.entity(name="counter")
    def counter(ctx: dn.EntityContext) -> Any:
        _mark(marks)
        value = ctx.get_state(lambda: 0)
        if ctx.operation_name == "add":
            ctx.set_state(value + ctx.get_input())
        elif ctx.operation_name == "get":
            ctx.set_result(value)
        elif ctx.operation_name == "set":
            ctx.set_state(ctx.get_input())
        elif ctx.operation_name == "fail":
            ctx.set_state(-1)  # not kept: the operation fails
            raise KeyError(ctx.get_input())
        else:
            raise ValueError(f"no operation {ctx.operation_name}")

    return counter


def test_signals_and_calls_apply_once_and_a_rerun_replays(rt: Runtime, tmp_path: Path) -> None:
    marks = tmp_path / "applied"
    define_counter(marks)

    @dn.orchestrator
    def adds(ctx, n):  # type: ignore[no-untyped-def]
        for _ in range(n):
            ctx.signal_entity(C1, "add", 2)
        return (yield ctx.call_entity(C1, "get"))

    assert adds.run(5) == 10
    assert _applied(marks) == 6  # five adds and the get
    assert adds.run(5) == 10  # final: replayed, nothing sent or called again
    assert _applied(marks) == 6
    state = dn.read_entity_state(C1)
    assert (state.entity_exists, state.entity_state, state.waiting) == (True, 10, 0)
    # Signals are in the history, for the calls table and the timeline.
    [record] = [r for r in rt.store.list_instances() if r.orchestrator == "adds"]
    events = rt.store.read_history(record.instance_id)
    sent = [e for e in events if isinstance(e, history.EntitySignaled)]
    assert [(e.entity, e.operation) for e in sent] == [("@counter@c1", "add")] * 5


def test_a_failed_operation_keeps_the_state_and_raises_its_exception(
    rt: Runtime, tmp_path: Path
) -> None:
    define_counter(tmp_path / "applied")
    dn.signal_entity(C1, "set", 7)

    @dn.orchestrator
    def fails(ctx):  # type: ignore[no-untyped-def]
        try:
            yield ctx.call_entity(C1, "fail", "why")
        except KeyError as exc:
            return f"KeyError {exc}", (yield ctx.call_entity(C1, "get"))

    assert fails.run() == ("KeyError 'why'", 7)


def test_critical_sections_keep_read_modify_write_whole(rt: Runtime, tmp_path: Path) -> None:
    define_counter(tmp_path / "applied")

    @dn.activity
    def pause(seconds: float) -> None:
        import time

        time.sleep(seconds)

    @dn.orchestrator
    def increment(ctx, n):  # type: ignore[no-untyped-def]
        with (yield ctx.lock_entities(C1)):
            value = yield ctx.call_entity(C1, "get")
            yield ctx.call_activity(pause, 0.02)  # others queue meanwhile
            yield ctx.call_entity(C1, "set", value + 1)
        return n

    async def all_at_once() -> list[Any]:
        handles = [increment.start(n) for n in range(6)]
        return list(await asyncio.gather(*handles))

    assert asyncio.run(all_at_once()) == list(range(6))
    assert dn.read_entity_state(C1).entity_state == 6  # no update lost
    assert dn.read_entity_state(C1).locked_by is None


def test_a_client_signal_waits_while_a_section_holds_the_entity(
    rt: Runtime, tmp_path: Path
) -> None:
    define_counter(tmp_path / "applied")
    seen: list[Any] = []

    @dn.activity
    def signal_from_outside() -> int:
        dn.signal_entity(C1, "add", 100)  # queued behind the section
        return dn.read_entity_state(C1).waiting

    @dn.orchestrator
    def holds(ctx):  # type: ignore[no-untyped-def]
        with (yield ctx.lock_entities(C1)):
            seen.append((yield ctx.call_activity(signal_from_outside)))
            yield ctx.call_entity(C1, "set", 1)
        return "done"

    assert holds.run() == "done"
    assert seen == [1]
    assert dn.read_entity_state(C1).entity_state == 101  # applied after the release


def test_a_section_left_open_is_released_when_the_run_ends(rt: Runtime, tmp_path: Path) -> None:
    define_counter(tmp_path / "applied")

    @dn.orchestrator
    def forgets(ctx):  # type: ignore[no-untyped-def]
        yield ctx.lock_entities(C1)
        return "held"

    assert forgets.run() == "held"
    dn.signal_entity(C1, "add", 1)
    assert dn.read_entity_state(C1) == dn.EntityStateResponse(True, 1, 0, None, 3)


def test_a_run_ending_inside_a_section_holds_its_lease_until_its_locks_go_back(
    rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run waiting for the entity takes a holder without a lease for one that stopped
    inside its section (and fails): the lease goes back after the locks, not with the
    record. Seen as an EntityLockedError in notebook 05, where six transfers race."""
    define_counter(tmp_path / "applied")
    entities = type(rt.store.entities)
    release_locks = entities.release_locks
    leases_then: list[Any] = []

    def watched(self: Any, instance_id: str) -> Any:
        leases_then.append(rt.store.get_lease(instance_id))
        return release_locks(self, instance_id)

    monkeypatch.setattr(entities, "release_locks", watched)

    @dn.orchestrator
    def ends_inside(ctx):  # type: ignore[no-untyped-def]
        yield ctx.lock_entities(C1)
        yield ctx.call_entity(C1, "add", 1)
        return "held"

    assert ends_inside.run(instance_id="inside") == "held"
    assert len(leases_then) == 1 and leases_then[0] is not None
    assert rt.store.get_lease("inside") is None  # given back after them
    assert dn.read_entity_state(C1).entity_state == 1


def test_a_holder_that_just_ended_is_not_taken_for_one_that_stopped_inside(
    rt: Runtime, tmp_path: Path
) -> None:
    """A run that leaves its section queues the unlock, then gives its lease back. A
    waiter that finds the lease gone after its last pass over the queue applies the
    queue once more before it says the holder stopped inside its section (notebook 05's
    six racing transfers failed so, about one run in ten)."""
    from durable_nb.entity_store import Applied, EntityMessage, MessageOutcome
    from durable_nb.entity_worker import worker_for

    define_counter(tmp_path / "applied")
    rt.store.entities.enqueue(EntityMessage("lock-e", C1, "lock", None, None, "ended-x"))
    snapshot, [lock] = rt.store.entities.waiting(C1, 1)
    held = Applied(snapshot.exists, snapshot.state, "ended-x", MessageOutcome())
    rt.store.entities.commit(lock, snapshot.version, held)
    waiter = EntityMessage("add-w", C1, "operation", "add", 1, "waiter")
    rt.store.entities.enqueue(waiter)
    # Now the holder's run ends: its unlock is queued, and it has no lease.
    rt.store.entities.enqueue(EntityMessage("unlock-e", C1, "unlock", None, None, "ended-x"))
    worker_for(rt.store)._check_holder(waiter, "a waiting call", lambda holder: True)
    assert rt.store.entities.read(C1).locked_by is None  # type: ignore[union-attr]
    assert dn.read_entity_state(C1).entity_state == 1  # and the waiter's add applied


def test_an_entity_not_defined_here_keeps_its_message_for_a_kernel_that_defines_it(
    rt: Runtime, tmp_path: Path
) -> None:
    ghost = dn.EntityId("ghost", "g")

    @dn.orchestrator
    def calls_ghost(ctx):  # type: ignore[no-untyped-def]
        return (yield ctx.call_entity(ghost, "get"))

    with pytest.raises(dn.EntityNotFoundError, match="no entity 'ghost' is defined"):
        calls_ghost.run()
    assert dn.read_entity_state(ghost).waiting == 1
    marks = tmp_path / "ghost"

    @dn.entity(name="ghost")
    def ghost_entity(ctx: dn.EntityContext) -> Any:
        _mark(marks)
        return "boo"

    assert calls_ghost.run() == "boo"  # its queued message, applied once
    assert _applied(marks) == 1 and dn.read_entity_state(ghost).waiting == 0


def test_class_entities_and_continue_as_new_send_anew_each_generation(
    rt: Runtime, tmp_path: Path
) -> None:
    @dn.entity
    class Account:
        def __init__(self) -> None:
            self.balance = 0

        def deposit(self, amount: int) -> int:
            self.balance += amount
            return self.balance

        def balance_of(self) -> int:
            return self.balance

    account = dn.EntityId("Account", "a1")

    @dn.orchestrator
    def monthly(ctx, month):  # type: ignore[no-untyped-def]
        ctx.signal_entity(account, "deposit", 10)
        if month < 3:
            ctx.continue_as_new(month + 1)
        return (yield ctx.call_entity(account, "balance_of"))

    assert monthly.run(1) == 30  # three generations, one deposit each
    with pytest.raises(dn.EntityNotFoundError, match="no operation 'withdraw'"):

        @dn.orchestrator
        def withdraws(ctx):  # type: ignore[no-untyped-def]
            return (yield ctx.call_entity(account, "withdraw", 5))

        withdraws.run()
    assert dn.read_entity_state(account).entity_state == {"balance": 30}


def test_a_json_store_gives_failures_by_name(tmp_path: Path) -> None:
    from durable_nb import runtime as runtime_module

    runtime = runtime_module._reset_for_tests(
        lambda: Runtime(store=DiskCacheStore(tmp_path / "j", serializer="json"), progress="none")
    )
    try:
        define_counter(tmp_path / "applied")

        @dn.orchestrator
        def fails_json(ctx):  # type: ignore[no-untyped-def]
            return (yield ctx.call_entity(C1, "fail", "k"))

        # The call that applied the operation raises its exception, as a live activity's
        # failure is raised; the failure kept nothing.
        with pytest.raises(KeyError):
            fails_json.run()
        assert dn.read_entity_state(C1).entity_exists is False
        # Run again, the call finds its message applied: a JSON store kept the failure by
        # type and message only (as a failure another process recorded is known).
        with pytest.raises(dn.ActivityFailedError, match="KeyError: 'k'") as caught:
            fails_json.run()
        assert caught.value.error_type == "KeyError"
    finally:
        runtime.close()
        runtime_module._reset_for_tests()


def test_purging_an_instance_forgets_the_messages_it_sent(rt: Runtime, tmp_path: Path) -> None:
    define_counter(tmp_path / "applied")

    @dn.orchestrator
    def sends(ctx):  # type: ignore[no-untyped-def]
        ctx.signal_entity(C1, "add", 1)
        return (yield ctx.call_entity(C1, "get"))

    handle_result = sends.run()
    assert handle_result == 1
    [record] = [r for r in rt.store.list_instances() if r.orchestrator == "sends"]
    rt.store.purge(record.instance_id)
    assert dn.read_entity_state(C1).entity_state == 1  # the state stays
    assert sends.run() == 2  # a new history: its messages are new


def test_durable_functions_names_of_the_entity_context(rt: Runtime, tmp_path: Path) -> None:
    seen: list[tuple[str, bool]] = []

    @dn.entity
    def tally(ctx: dn.EntityContext) -> None:  # written as Durable Functions' samples are
        seen.append((ctx.operation_name, ctx.is_newly_constructed))
        current = ctx.get_state(lambda: 0)
        if ctx.operation_name == "add":
            ctx.set_state(current + ctx.get_input())
        elif ctx.operation_name == "reset":
            ctx.destruct_on_exit()
        ctx.set_result(current)

    entity_id = dn.EntityId("tally", f"{ctx_name()}")

    @dn.orchestrator
    def uses(ctx):  # type: ignore[no-untyped-def]
        yield ctx.signal_entity(entity_id, "add", 2)  # DF's fire-and-forget task: done
        before = yield ctx.call_entity(entity_id, "reset")
        return before, ctx.new_guid() != ctx.new_uuid()

    assert uses.run() == (2, True)
    assert seen == [("add", True), ("reset", False)]
    assert dn.read_entity_state(entity_id).entity_exists is False


def ctx_name() -> str:
    return "k"


# Durable Functions' Python sample samples/counter_entity, its functions as written there
# (only the registration differs: df.Entity.create / df.Orchestrator.create).
def entity_function(context):  # type: ignore[no-untyped-def]
    current_value = context.get_state(lambda: 0)
    operation = context.operation_name
    if operation == "add":
        amount = context.get_input()
        current_value += amount
    elif operation == "reset":
        current_value = 0
    elif operation == "get":
        pass

    context.set_state(current_value)
    context.set_result(current_value)


def orchestrator_function(context):  # type: ignore[no-untyped-def]
    entityId = dn.EntityId("Counter", "myCounter")
    context.signal_entity(entityId, "add", 3)
    state = yield context.call_entity(entityId, "get")
    return state


def test_the_counter_entity_sample_of_durable_functions_runs_as_written(rt: Runtime) -> None:
    dn.entity(name="Counter")(entity_function)
    main = dn.orchestrator(name="DurableOrchestration")(orchestrator_function)
    assert main.run() == 3
    response = dn.read_entity_state(dn.EntityId("Counter", "myCounter"))
    assert response.entity_exists and response.entity_state == 3


def test_one_pass_applies_a_queue_longer_than_a_batch_in_order(rt: Runtime, tmp_path: Path) -> None:
    from durable_nb.entity_worker import client_message, worker_for

    @dn.entity
    class Log:
        def __init__(self) -> None:
            self.seen: list[int] = []

        def add(self, n: int) -> None:
            self.seen.append(n)

    log = dn.EntityId("Log", "l")
    for n in range(300):  # queued by a process that does not apply them (a CLI, say)
        rt.store.entities.enqueue(client_message(log, "add", n))
    assert worker_for(rt.store).apply_waiting(log) == 300
    assert dn.read_entity_state(log).entity_state == {"seen": list(range(300))}


def test_terminating_or_purging_an_instance_that_is_not_running_releases_its_locks(
    rt: Runtime, tmp_path: Path
) -> None:
    from durable_nb import management
    from durable_nb.entity_store import Applied, EntityMessage, MessageOutcome

    define_counter(tmp_path / "applied")
    for holder in ("interrupted-1", "interrupted-2"):
        # As a run cut short inside its critical section leaves it: the lock held.
        rt.store.entities.enqueue(EntityMessage(f"lock-{holder}", C1, "lock", None, None, holder))
        snapshot, [lock] = rt.store.entities.waiting(C1, 1)
        held = Applied(snapshot.exists, snapshot.state, holder, MessageOutcome())
        rt.store.entities.commit(lock, snapshot.version, held)
        rt.store.put_instance(dn.InstanceRecord(holder, "orch", status="interrupted"))
        dn.signal_entity(C1, "add", 1)
        assert dn.read_entity_state(C1).locked_by == holder  # the signal waits
        if holder.endswith("1"):
            management.request(rt.store, holder, "terminate")
        else:
            management.purge(rt.store, [holder])
        state = dn.read_entity_state(C1)
        assert state.locked_by is None and state.waiting == 0
    assert dn.read_entity_state(C1).entity_state == 2


def test_a_call_waiting_on_a_section_no_run_will_end_says_so_instead_of_hanging(
    rt: Runtime, tmp_path: Path
) -> None:
    from durable_nb import management
    from durable_nb.entity_store import Applied, EntityMessage, MessageOutcome

    define_counter(tmp_path / "applied")
    # A holder interrupted inside its critical section: the lock held, no run, no lease.
    rt.store.entities.enqueue(EntityMessage("lock-x", C1, "lock", None, None, "stopped-x"))
    snapshot, [lock] = rt.store.entities.waiting(C1, 1)
    held = Applied(snapshot.exists, snapshot.state, "stopped-x", MessageOutcome())
    rt.store.entities.commit(lock, snapshot.version, held)
    rt.store.put_instance(dn.InstanceRecord("stopped-x", "orch", status="interrupted"))

    @dn.orchestrator
    def adds_one(ctx):  # type: ignore[no-untyped-def]
        return (yield ctx.call_entity(C1, "add", 1))

    with pytest.raises(dn.EntityLockedError, match="stopped-x, which is not running") as caught:
        adds_one.run()
    assert caught.value.instance_id == "stopped-x" and caught.value.entity == "@counter@c1"
    assert dn.read_entity_state(C1).waiting == 1  # its message stays queued
    management.request(rt.store, "stopped-x", "terminate")  # releases the lock
    adds_one.run()  # finds its queued message and has it applied, once
    assert dn.read_entity_state(C1).entity_state == 1
