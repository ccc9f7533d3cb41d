"""The engine's entity calls, pure: old events + new events -> actions + events, built
with the builders. Signals are actions the step carries (and ``EntitySignaled`` events
it emits); calls and locks are calls keyed by the entity's name."""

from __future__ import annotations

from typing import Any

import pytest
from builders import T0, completed, failed, keys, started

from durable_nb import Activity, history
from durable_nb.definitions import resolve_activity, resolve_orchestrator
from durable_nb.engine import OrchestrationEngine
from durable_nb.engine.entities import EntityLock, EntityTarget
from durable_nb.engine.entity_ids import LOCK, UNLOCK, EntityId
from durable_nb.errors import ConfigurationError, OrchestratorError

C1 = EntityId("counter", "c1")
A1 = EntityId("account", "a1")


class _EntityCall:
    """What the runtime resolves an entity target to, as the engine sees it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def code_digest(self, scheme: int) -> str:
        return "entity-call-digest"


_CALLS: dict[Any, _EntityCall] = {}


def _resolve(ref: Any) -> Any:
    if isinstance(ref, EntityTarget):
        return _CALLS.setdefault(ref, _EntityCall("@" + ref.name))
    return resolve_activity(ref)


def engine(fn: Any, **arguments: Any) -> OrchestrationEngine[Any, Any]:
    return OrchestrationEngine(
        fn,
        arguments,
        name=fn.__name__,
        instance_id="inst-1",
        resolve_activity=_resolve,
        resolve_orchestrator=resolve_orchestrator,
    )


def signaler(ctx, n):  # type: ignore[no-untyped-def]
    for _ in range(n):
        ctx.signal_entity(C1, "add", 1)
    total = yield ctx.call_entity(C1, "get")
    return total


def test_signals_are_actions_of_the_step_and_recorded_events() -> None:
    eng = engine(signaler, n=3)
    step = eng.start(started(T0))
    assert [(s.entity, s.operation, s.input, s.kind) for s in step.signals] == [
        (C1, "add", 1, "operation")
    ] * 3
    # The same operation three times: three messages, told apart by occurrence.
    assert len({s.key for s in step.signals}) == 3
    sent = [e for e in step.events if isinstance(e, history.EntitySignaled)]
    assert [(e.key, e.entity, e.operation, e.kind) for e in sent] == [
        (s.key, "@counter@c1", "add", "operation") for s in step.signals
    ]
    assert all(e.timestamp == T0 for e in sent)
    # The call waits: one call of "@counter" with the key, operation and input.
    [call] = step.scheduled
    assert call.activity.name == "@counter" and call.args == (C1.key, "get", None)


def test_a_replay_sends_no_signal_again_and_replays_the_call() -> None:
    first = engine(signaler, n=3)
    step = first.start(started(T0))
    [call_key] = keys(step)
    recorded = [started(T0), *step.events, completed(call_key, 3)]
    again = engine(signaler, n=3)
    again.load(recorded)
    replay = again.start(started(T0 + 50, run=2))
    assert replay.signals == [] and replay.scheduled == []
    assert not [e for e in replay.events if isinstance(e, history.EntitySignaled)]
    assert again.done and again.output == 3


def test_a_run_cut_short_sends_only_the_signals_history_lacks() -> None:
    first = engine(signaler, n=3)
    step = first.start(started(T0))
    sent = [e for e in step.events if isinstance(e, history.EntitySignaled)]
    again = engine(signaler, n=3)
    again.load([started(T0), *sent[:2]])  # killed after writing two of three
    replay = again.start(started(T0 + 50, run=2))
    assert [s.key for s in replay.signals] == [sent[2].key]


def edited(ctx, n):  # type: ignore[no-untyped-def]
    yield ctx.call_activity(Activity(lambda: 1, name="added_step"))  # a step added first
    for _ in range(n):
        ctx.signal_entity(C1, "add", 1)
    return (yield ctx.call_entity(C1, "get"))


def test_an_edit_before_the_signals_keeps_their_keys() -> None:
    before = engine(signaler, n=2).start(started(T0))
    eng = engine(edited, n=2)
    step = eng.start(started(T0))
    step = eng.apply([completed(keys(step)[0], 1)])
    assert [s.key for s in step.signals] == [s.key for s in before.signals]
    assert keys(step) == keys(before)


def test_a_failed_operation_raises_at_the_yield() -> None:
    def catches(ctx):  # type: ignore[no-untyped-def]
        try:
            yield ctx.call_entity(C1, "boom")
        except ValueError as exc:
            return f"caught {exc}"

    eng = engine(catches)
    [key] = keys(eng.start(started(T0)))
    eng.apply([failed(key, ValueError("no"))])
    assert eng.output == "caught no"


def section(ctx):  # type: ignore[no-untyped-def]
    with (yield ctx.lock_entities(C1, A1, C1)) as lock:
        inside = ctx._engine.holds_locks
        value = yield ctx.call_entity(A1, "deposit", 5)
    return inside, ctx._engine.holds_locks, value, lock.entities


def test_a_critical_section_locks_in_order_and_releases_at_its_end() -> None:
    eng = engine(section)
    step = eng.start(started(T0))
    [lock_call] = step.scheduled
    # Distinct ids, in the order of their text: every section takes locks alike.
    assert lock_call.activity.name == "@@lock"
    assert lock_call.args == ("@account@a1", "@counter@c1")
    step = eng.apply([completed(lock_call.key, list(lock_call.args))])
    [deposit] = step.scheduled
    assert deposit.args == ("a1", "deposit", 5) and step.signals == []
    step = eng.apply([completed(deposit.key, 5)])
    assert [(s.entity, s.kind) for s in step.signals] == [(A1, UNLOCK), (C1, UNLOCK)]
    assert eng.output == (True, False, 5, (A1, C1))


def test_a_replayed_section_releases_only_if_history_lacks_the_release() -> None:
    eng = engine(section)
    events: list[history.Event] = [started(T0)]
    step = eng.start(events[0])
    events += step.events
    lock_call = step.scheduled[0]
    events.append(completed(lock_call.key, list(lock_call.args)))
    step = eng.apply(events[-1:])
    events += step.events
    events.append(completed(step.scheduled[0].key, 5))
    step = eng.apply(events[-1:])
    events += step.events
    again = engine(section)
    again.load(events)
    assert again.start(started(T0 + 9, run=2)).signals == []
    assert isinstance(again.output[3], tuple)


def test_a_failure_inside_a_section_still_releases_its_locks() -> None:
    def fails_inside(ctx):  # type: ignore[no-untyped-def]
        with (yield ctx.lock_entities(C1)):
            yield ctx.call_entity(C1, "boom")

    eng = engine(fails_inside)
    lock_call = eng.start(started(T0)).scheduled[0]
    step = eng.apply([completed(lock_call.key, ["@counter@c1"])])
    step = eng.apply([failed(step.scheduled[0].key, ValueError("no"))])
    assert [(s.entity, s.kind) for s in step.signals] == [(C1, UNLOCK)]
    assert eng.status == "failed" and not eng.holds_locks


def test_a_section_left_open_is_reported_to_the_runtime() -> None:
    def keeps(ctx):  # type: ignore[no-untyped-def]
        lock = yield ctx.lock_entities(C1)
        return isinstance(lock, EntityLock)

    eng = engine(keeps)
    lock_call = eng.start(started(T0)).scheduled[0]
    eng.apply([completed(lock_call.key, ["@counter@c1"])])
    assert eng.output is True and eng.holds_locks  # the runtime releases them


@pytest.mark.parametrize(
    "body, message",
    [
        (lambda ctx: ctx.lock_entities(), "no entity"),
        (lambda ctx: ctx.call_entity(C1, ""), "operation's name"),
        (lambda ctx: ctx.signal_entity(C1, 3), "operation's name"),
    ],
)
def test_misuse_fails_the_run_at_the_call(body: Any, message: str) -> None:
    def orch(ctx):  # type: ignore[no-untyped-def]
        yield body(ctx)

    eng = engine(orch)
    eng.start(started(T0))
    assert isinstance(eng.failure, OrchestratorError) and message in str(eng.failure)


def test_inside_a_section_only_locked_entities_are_called_and_none_nests() -> None:
    def calls_other(ctx):  # type: ignore[no-untyped-def]
        with (yield ctx.lock_entities(C1)):
            yield ctx.call_entity(A1, "get")

    def nests(ctx):  # type: ignore[no-untyped-def]
        with (yield ctx.lock_entities(C1)):
            yield ctx.lock_entities(A1)

    for fn, text in ((calls_other, "does not lock it"), (nests, "release it first")):
        eng = engine(fn)
        lock_call = eng.start(started(T0)).scheduled[0]
        eng.apply([completed(lock_call.key, ["@counter@c1"])])
        assert isinstance(eng.failure, OrchestratorError) and text in str(eng.failure)


def test_entity_ids_are_checked_and_read_back_from_text() -> None:
    assert EntityId.parse("@counter@c1") == C1 == EntityId.parse("counter/c1")
    assert str(C1) == "@counter@c1"
    for bad in (lambda: EntityId("", "k"), lambda: EntityId("a@b", "k"), lambda: EntityId("a", 1)):
        with pytest.raises(ConfigurationError):
            bad()
    with pytest.raises(ConfigurationError, match="@name@key"):
        EntityId.parse("no-separator")


def test_lock_messages_are_named_apart_from_operations() -> None:
    assert LOCK != UNLOCK and EntityTarget("lock", LOCK) != EntityTarget("lock")
