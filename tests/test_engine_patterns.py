"""Engine patterns beyond activities: durable timers, external events, sub-orchestrations,
continue_as_new, terminate, and the activity retry policy. Pure engine, no kernel or store."""

from __future__ import annotations

import datetime as dt

import pytest
from builders import (
    T0,
    LiveRun,
    completed,
    control,
    engine,
    finished,
    keys,
    raised,
    started,
    sub_completed,
    sub_failed,
    timer_created,
    timer_fired,
)

from durable_nb import Activity, OrchestratorError
from durable_nb.definitions import Orchestrator
from durable_nb.engine import TimerCall
from durable_nb.errors import DefinitionError, EventTimeoutError
from durable_nb.options import ActivityOptions

UTC = dt.timezone.utc


def _double(x: int) -> int:
    return 2 * x


def _save(x: object) -> str:
    return "saved"


double = Activity(_double, name="double")
save = Activity(_save, name="save")


# ----------------------------------------------------------------- durable timers


def sleeper(ctx, wait):  # type: ignore[no-untyped-def]
    yield ctx.create_timer(wait)
    return "woke"


@pytest.mark.parametrize(
    "wait",
    [60, 60.0, dt.timedelta(minutes=1), dt.datetime.fromtimestamp(T0 + 60, tz=UTC)],
    ids=["int", "float", "timedelta", "aware-datetime"],
)
def test_new_timer_fires_relative_to_the_run_start(wait: object) -> None:
    eng = engine(sleeper, wait=wait)
    step = eng.start(started())
    assert step.timers == [TimerCall("timer#0", T0 + 60, True)]
    assert step.scheduled == [] and step.waiting_events == []
    assert not eng.done


def test_orchestrator_resumes_only_when_its_timer_fires() -> None:
    eng = engine(sleeper, wait=10)
    eng.start(started())
    step = eng.apply([timer_fired("timer#7", T0 + 5), raised("noise", 1, T0 + 6)])
    assert step.timers == [] and not eng.done
    eng.apply([timer_fired("timer#0", T0 + 10)])
    assert eng.status == "completed" and eng.output == "woke"


def test_timer_keys_follow_creation_order() -> None:
    def two_timers(ctx):  # type: ignore[no-untyped-def]
        yield ctx.create_timer(5)
        yield ctx.create_timer(7)

    eng = engine(two_timers)
    first = eng.start(started())
    second = eng.apply([timer_fired("timer#0", T0 + 5)])
    assert first.timers == [TimerCall("timer#0", T0 + 5, True)]
    # the second timer counts from the orchestration clock, now the first one's fire time
    assert second.timers == [TimerCall("timer#1", T0 + 12, True)]


def test_event_timeouts_and_timers_share_one_key_sequence() -> None:
    def mixed(ctx):  # type: ignore[no-untyped-def]
        yield ctx.task_all([ctx.wait_for_external_event("a", timeout=3), ctx.create_timer(9)])

    step = engine(mixed).start(started())
    assert step.timers == [TimerCall("timer#0", T0 + 3, True), TimerCall("timer#1", T0 + 9, True)]


def test_recorded_timer_is_rearmed_with_its_recorded_fire_time() -> None:
    eng = engine(sleeper, wait=60)
    eng.load([started(), timer_created("timer#0", T0 + 60), finished("interrupted")])
    step = eng.start(started(T0 + 45, run=2))
    # not T0 + 45 + 60: a restarted kernel waits only the 15 s that are left
    assert step.timers == [TimerCall("timer#0", T0 + 60, False)]
    eng.apply([timer_fired("timer#0", T0 + 60)])
    assert eng.output == "woke"


def test_recorded_fire_time_wins_over_an_edited_duration() -> None:
    eng = engine(sleeper, wait=3600)
    eng.load([started(), timer_created("timer#0", T0 + 60)])
    step = eng.start(started(T0 + 45, run=2))
    assert step.timers == [TimerCall("timer#0", T0 + 60, False)]


def test_fired_timer_in_history_completes_at_once() -> None:
    eng = engine(sleeper, wait=60)
    eng.load([started(), timer_created("timer#0", T0 + 60), timer_fired("timer#0", T0 + 60)])
    step = eng.start(started(T0 + 500, run=2))
    assert step.timers == [] and step.scheduled == []
    assert eng.status == "completed" and eng.output == "woke"


def test_timer_first_created_on_a_rerun_counts_from_the_new_run_start() -> None:
    def work_then_wait(ctx):  # type: ignore[no-untyped-def]
        yield ctx.call_activity(double, 1)
        yield ctx.create_timer(60)

    first = engine(work_then_wait).start(started())
    eng = engine(work_then_wait)
    eng.load([started(), completed(keys(first)[0], 2, t=T0 + 1)])
    step = eng.start(started(T0 + 1000, run=2))
    assert step.replayed == ["double"]
    # the replayed clock says T0 + 1; the timer must not be due at once
    assert step.timers == [TimerCall("timer#0", T0 + 1000 + 60, True)]


def test_timer_after_a_live_completion_counts_from_the_completion_time() -> None:
    def work_then_wait(ctx):  # type: ignore[no-untyped-def]
        yield ctx.call_activity(double, 1)
        yield ctx.create_timer(60)

    eng = engine(work_then_wait)
    step = eng.start(started())
    step = eng.apply([completed(keys(step)[0], 2, t=T0 + 7)])
    assert step.timers == [TimerCall("timer#0", T0 + 67, True)]


@pytest.mark.parametrize(
    ("wait", "hint"),
    [
        (dt.datetime(2030, 1, 1), "naive datetime"),
        (-1, "seconds >= 0"),
        ("soon", "'soon'"),
        (True, "got True"),
    ],
    ids=["naive-datetime", "negative", "string", "bool"],
)
def test_invalid_timer_fails_the_run_with_a_helpful_message(wait: object, hint: str) -> None:
    eng = engine(sleeper, wait=wait)
    step = eng.start(started())
    assert eng.status == "failed" and step.timers == []
    assert isinstance(eng.failure, OrchestratorError)
    message = str(eng.failure)
    assert "'sleeper'" in message and hint in message


def stamped(ctx):  # type: ignore[no-untyped-def]
    yield ctx.create_timer(10)
    yield ctx.call_activity(save, ctx.current_utc_datetime.isoformat())


def test_clock_after_a_timer_is_the_same_live_and_replayed() -> None:
    live = LiveRun(stamped)
    step = live.apply(timer_fired("timer#0", T0 + 10.5))  # the loop woke up 0.5 s late
    live.apply(completed(keys(step)[0], "saved", t=T0 + 11))
    assert live.engine.status == "completed"
    _, replayed = live.replay()
    assert replayed.scheduled == [] and replayed.replayed == ["save"]


# ----------------------------------------------------------------- external events


def wait_for(ctx, name, count=1, timeout=None):  # type: ignore[no-untyped-def]
    values = []
    for _ in range(count):
        values.append((yield ctx.wait_for_external_event(name, timeout=timeout)))
    return values


def test_event_raised_while_waiting_delivers_its_value() -> None:
    eng = engine(wait_for, name="approve")
    step = eng.start(started())
    assert step.waiting_events == ["approve"] and step.timers == []
    step = eng.apply([raised("approve", {"by": "ann"})])
    assert step.waiting_events == []
    assert eng.status == "completed" and eng.output == [{"by": "ann"}]


def test_event_in_history_before_the_wait_is_delivered_at_once() -> None:
    eng = engine(wait_for, name="approve")
    eng.load([started(), raised("approve", "yes"), finished("interrupted")])
    step = eng.start(started(T0 + 100, run=2))
    assert step.waiting_events == []
    assert eng.output == ["yes"]


def test_event_applied_before_the_wait_is_queued_until_the_wait() -> None:
    def work_then_wait(ctx):  # type: ignore[no-untyped-def]
        yield ctx.call_activity(double, 1)
        return (yield ctx.wait_for_external_event("go"))

    eng = engine(work_then_wait)
    first = eng.start(started())
    step = eng.apply([raised("go", "early")])
    assert not eng.done and step.waiting_events == []  # still waiting on the activity
    step = eng.apply([completed(keys(first)[0], 2, t=T0 + 2)])
    assert step.waiting_events == [] and eng.output == "early"


def test_nth_wait_on_a_name_gets_the_nth_event_on_that_name() -> None:
    eng = engine(wait_for, name="x", count=3)
    eng.start(started())
    eng.apply([raised("x", "a", T0 + 1), raised("y", "other", T0 + 2), raised("x", "b", T0 + 3)])
    assert not eng.done
    eng.apply([raised("y", "other2", T0 + 4), raised("x", "c", T0 + 5)])
    assert eng.output == ["a", "b", "c"]


def test_events_for_other_names_do_not_interfere() -> None:
    def two_names(ctx):  # type: ignore[no-untyped-def]
        b = yield ctx.wait_for_external_event("b")
        a = yield ctx.wait_for_external_event("a")
        return a, b

    eng = engine(two_names)
    eng.start(started())
    step = eng.apply([raised("a", 1)])
    assert step.waiting_events == ["b"] and not eng.done
    eng.apply([raised("b", 2)])
    assert eng.output == (1, 2)  # "a" was kept for its own wait


def test_waiting_events_lists_every_pending_name() -> None:
    def both(ctx):  # type: ignore[no-untyped-def]
        return (
            yield ctx.task_all([ctx.wait_for_external_event("b"), ctx.wait_for_external_event("a")])
        )

    eng = engine(both)
    assert eng.start(started()).waiting_events == ["a", "b"]
    assert eng.apply([raised("a", 1)]).waiting_events == ["b"]
    assert eng.apply([raised("b", 2)]).waiting_events == []
    assert eng.output == [2, 1]


def test_event_timeout_arms_a_timer() -> None:
    eng = engine(wait_for, name="x", timeout=5)
    step = eng.start(started())
    assert step.timers == [TimerCall("timer#0", T0 + 5, True)]
    assert step.waiting_events == ["x"]


def test_event_timeout_accepts_a_timedelta() -> None:
    eng = engine(wait_for, name="x", timeout=dt.timedelta(seconds=90))
    assert eng.start(started()).timers == [TimerCall("timer#0", T0 + 90, True)]


def test_fired_timeout_fails_the_wait_with_event_timeout_error() -> None:
    eng = engine(wait_for, name="x", timeout=5)
    eng.start(started())
    step = eng.apply([timer_fired("timer#0", T0 + 5)])
    assert eng.status == "failed" and step.waiting_events == []
    assert isinstance(eng.failure, EventTimeoutError)
    assert isinstance(eng.failure, TimeoutError)
    assert "'x'" in str(eng.failure)


def approval(ctx):  # type: ignore[no-untyped-def]
    try:
        first = yield ctx.wait_for_external_event("approve", timeout=5)
    except TimeoutError:
        first = "timed out"
    second = yield ctx.wait_for_external_event("approve")
    return first, second


def test_orchestrator_can_catch_the_timeout_and_the_late_event_goes_to_the_next_wait() -> None:
    eng = engine(approval)
    eng.start(started())
    step = eng.apply([timer_fired("timer#0", T0 + 5)])
    assert not eng.done and step.waiting_events == ["approve"] and step.timers == []
    eng.apply([raised("approve", "late", T0 + 6)])
    assert eng.output == ("timed out", "late")


def test_event_and_timeout_in_one_batch_resolve_in_batch_order() -> None:
    event_first = engine(approval)
    event_first.start(started())
    event_first.apply([raised("approve", "yes", T0 + 5), timer_fired("timer#0", T0 + 5)])
    assert event_first.status == "running"  # got "yes", now waits for the second event

    timer_first = engine(approval)
    timer_first.start(started())
    timer_first.apply([timer_fired("timer#0", T0 + 5), raised("approve", "yes", T0 + 5)])
    assert timer_first.output == ("timed out", "yes")


def test_replay_delivers_an_event_that_came_before_the_timeout() -> None:
    history = [
        started(),
        timer_created("timer#0", T0 + 5),
        raised("approve", "yes", T0 + 2),
        timer_fired("timer#0", T0 + 5),  # the timer still fired, but after the event
        raised("approve", "again", T0 + 8),
    ]
    eng = engine(approval)
    eng.load(history)
    step = eng.start(started(T0 + 100, run=2))
    assert step.timers == [] and eng.output == ("yes", "again")


def test_replay_times_out_when_the_timer_fired_before_the_event() -> None:
    history = [
        started(),
        timer_created("timer#0", T0 + 5),
        timer_fired("timer#0", T0 + 5),
        raised("approve", "late", T0 + 6),
    ]
    eng = engine(approval)
    eng.load(history)
    step = eng.start(started(T0 + 100, run=2))
    assert step.timers == [] and eng.output == ("timed out", "late")


def test_replay_of_a_fired_timeout_without_the_event_waits_for_the_next_one() -> None:
    eng = engine(approval)
    eng.load([started(), timer_created("timer#0", T0 + 5), timer_fired("timer#0", T0 + 5)])
    step = eng.start(started(T0 + 100, run=2))
    assert step.timers == [] and step.waiting_events == ["approve"]
    eng.apply([raised("approve", "now", T0 + 101)])
    assert eng.output == ("timed out", "now")


def test_replay_of_a_pending_timeout_rearms_the_recorded_timer() -> None:
    eng = engine(approval)
    eng.load([started(), timer_created("timer#0", T0 + 5)])
    step = eng.start(started(T0 + 3, run=2))
    assert step.timers == [TimerCall("timer#0", T0 + 5, False)]
    assert step.waiting_events == ["approve"]


def test_live_race_event_first_replays_the_same() -> None:
    live = LiveRun(approval)
    assert live.step.timers == [TimerCall("timer#0", T0 + 5, True)]
    live.apply(raised("approve", "yes", T0 + 2))
    live.apply(timer_fired("timer#0", T0 + 5))  # a stale timeout: the wait already has its event
    live.apply(raised("approve", "again", T0 + 8))
    assert live.engine.output == ("yes", "again")
    eng, step = live.replay()
    assert step.timers == [] and step.scheduled == []
    assert eng.output == live.engine.output


def test_live_race_timer_first_replays_the_same() -> None:
    live = LiveRun(approval)
    live.apply(timer_fired("timer#0", T0 + 5))
    live.apply(raised("approve", "late", T0 + 6))
    assert live.engine.output == ("timed out", "late")
    eng, step = live.replay()
    assert step.timers == [] and step.scheduled == []
    assert eng.output == live.engine.output


def test_live_race_in_one_batch_replays_the_same() -> None:
    for batch, expected in [
        ((raised("approve", "yes", T0 + 5), timer_fired("timer#0", T0 + 5)), ("yes", "more")),
        ((timer_fired("timer#0", T0 + 5), raised("approve", "yes", T0 + 5)), ("timed out", "yes")),
    ]:
        live = LiveRun(approval)
        live.apply(*batch)
        if not live.engine.done:
            live.apply(raised("approve", "more", T0 + 9))
        assert live.engine.output == expected
        eng, _ = live.replay()
        assert eng.output == expected


def test_event_timeout_message_names_the_timeout_live_as_on_replay() -> None:
    live = engine(wait_for, name="x", timeout=5)
    live.start(started())
    live.apply([timer_fired("timer#0", T0 + 5)])
    replayed = engine(wait_for, name="x", timeout=5)
    replayed.load([started(), timer_created("timer#0", T0 + 5), timer_fired("timer#0", T0 + 5)])
    replayed.start(started(T0 + 100, run=2))
    assert "(5)" in str(replayed.failure)
    assert str(live.failure) == str(replayed.failure)


def test_clock_after_an_event_timeout_is_the_same_live_and_replayed() -> None:
    def stamped_wait(ctx):  # type: ignore[no-untyped-def]
        try:
            yield ctx.wait_for_external_event("x", timeout=10)
        except TimeoutError:
            pass
        yield ctx.call_activity(save, ctx.current_utc_datetime.isoformat())

    live = LiveRun(stamped_wait)
    step = live.apply(timer_fired("timer#0", T0 + 10.5))
    live.apply(completed(keys(step)[0], "saved", t=T0 + 11))
    _, replayed = live.replay()
    assert replayed.scheduled == [] and replayed.replayed == ["save"]


def test_empty_event_name_fails_the_run() -> None:
    eng = engine(wait_for, name="")
    eng.start(started())
    assert isinstance(eng.failure, OrchestratorError)
    assert "non-empty string" in str(eng.failure)


# ----------------------------------------------------------------- sub-orchestrations


def child(ctx, x, scale=10):  # type: ignore[no-untyped-def]
    value = yield ctx.call_activity(double, x)
    return value * scale


child_orch = Orchestrator(child)


def parent(ctx, n):  # type: ignore[no-untyped-def]
    result = yield ctx.call_sub_orchestrator(child_orch, n)
    return result + 1


def test_sub_orchestration_call_carries_key_orchestrator_arguments_and_child_id() -> None:
    eng = engine(parent, n=4)
    step = eng.start(started())
    assert step.scheduled == [] and len(step.subs) == 1
    call = step.subs[0]
    assert call.orchestrator is child_orch
    assert call.arguments == {"x": 4, "scale": 10}  # bound by name, defaults applied
    assert call.key.startswith(f"sub:child/{child_orch.source_digest[:16]}/")
    assert call.key.endswith("#0")
    assert call.instance_id.startswith("inst-1:child")
    assert not eng.done


def test_sub_orchestration_completion_resumes_the_parent_with_its_result() -> None:
    eng = engine(parent, n=4)
    call = eng.start(started()).subs[0]
    step = eng.apply([sub_completed(call.key, call.instance_id, 80)])
    assert step.subs == [] and eng.status == "completed" and eng.output == 81


def test_sub_orchestration_failure_is_thrown_at_the_parents_yield() -> None:
    def careful(ctx):  # type: ignore[no-untyped-def]
        try:
            yield ctx.call_sub_orchestrator(child_orch, 1)
        except ValueError as exc:
            return exc
        return None

    eng = engine(careful)
    call = eng.start(started()).subs[0]
    error = ValueError("child broke")
    eng.apply([sub_failed(call.key, call.instance_id, error)])
    assert eng.status == "completed" and eng.output is error


def test_unhandled_sub_orchestration_failure_fails_the_parent() -> None:
    eng = engine(parent, n=1)
    call = eng.start(started()).subs[0]
    error = KeyError("gone")
    eng.apply([sub_failed(call.key, call.instance_id, error)])
    assert eng.status == "failed" and eng.failure is error


def test_completed_sub_orchestration_in_history_replays_without_scheduling() -> None:
    call = engine(parent, n=4).start(started()).subs[0]
    eng = engine(parent, n=4)
    eng.load([started(), sub_completed(call.key, call.instance_id, 80), finished("interrupted")])
    step = eng.start(started(T0 + 100, run=2))
    assert step.subs == [] and step.scheduled == []
    assert step.replayed == ["sub:child"]
    assert eng.output == 81


def test_failed_sub_orchestration_in_history_is_called_again() -> None:
    call = engine(parent, n=4).start(started()).subs[0]
    eng = engine(parent, n=4)
    eng.load([started(), sub_failed(call.key, call.instance_id, ValueError("x"))])
    step = eng.start(started(T0 + 100, run=2))
    assert [(s.key, s.instance_id) for s in step.subs] == [(call.key, call.instance_id)]


def test_explicit_child_instance_id_is_used_as_given() -> None:
    def named(ctx):  # type: ignore[no-untyped-def]
        return (yield ctx.call_sub_orchestrator(child_orch, 2, instance_id="my-child"))

    step = engine(named).start(started())
    assert [s.instance_id for s in step.subs] == ["my-child"]
    assert step.subs[0].arguments == {"x": 2, "scale": 10}


def test_identical_sub_orchestration_calls_get_distinct_keys_and_child_ids() -> None:
    def twins(ctx):  # type: ignore[no-untyped-def]
        return (
            yield ctx.task_all(
                [ctx.call_sub_orchestrator(child_orch, 3), ctx.call_sub_orchestrator(child_orch, 3)]
            )
        )

    eng = engine(twins)
    subs = eng.start(started()).subs
    assert len(subs) == 2
    assert subs[0].key != subs[1].key
    assert subs[0].instance_id != subs[1].instance_id
    eng.apply([sub_completed(s.key, s.instance_id, i) for i, s in enumerate(subs)])
    assert eng.output == [0, 1]


def test_positional_and_keyword_child_input_give_the_same_call() -> None:
    def positional(ctx):  # type: ignore[no-untyped-def]
        yield ctx.call_sub_orchestrator(child_orch, 3, 10)

    def keywords(ctx):  # type: ignore[no-untyped-def]
        yield ctx.call_sub_orchestrator(child_orch, scale=10, x=3)

    one = engine(positional).start(started()).subs[0]
    two = engine(keywords).start(started()).subs[0]
    assert (one.key, one.instance_id) == (two.key, two.instance_id)


def test_activity_passed_as_sub_orchestrator_is_a_definition_error() -> None:
    def wrong(ctx):  # type: ignore[no-untyped-def]
        yield ctx.call_sub_orchestrator(double, 1)

    eng = engine(wrong)
    eng.start(started())
    assert isinstance(eng.failure, DefinitionError)
    assert "ctx.call_activity" in str(eng.failure)


# ----------------------------------------------------------------- continue_as_new


def test_continue_as_new_ends_the_run_with_the_new_input() -> None:
    after: list[str] = []

    def monitor(ctx, n):  # type: ignore[no-untyped-def]
        yield ctx.create_timer(60)
        ctx.continue_as_new(n + 1)
        after.append("ran on")

    eng = engine(monitor, n=1)
    eng.start(started())
    step = eng.apply([timer_fired("timer#0", T0 + 60)])
    assert eng.status == "continued_as_new" and eng.done
    assert eng.new_input == ((2,), {})
    assert eng.output is None and eng.failure is None
    assert after == [] and step.scheduled == [] and step.timers == []


def test_continue_as_new_passes_keyword_input() -> None:
    def monitor(ctx, n):  # type: ignore[no-untyped-def]
        ctx.continue_as_new(n=n + 1)
        yield ctx.create_timer(1)

    eng = engine(monitor, n=5)
    eng.start(started())
    assert eng.status == "continued_as_new" and eng.new_input == ((), {"n": 6})


def test_except_exception_does_not_swallow_continue_as_new() -> None:
    swallowed: list[BaseException] = []

    def monitor(ctx, n):  # type: ignore[no-untyped-def]
        try:
            yield ctx.call_activity(double, n)
            ctx.continue_as_new(n + 1)
        except Exception as exc:
            swallowed.append(exc)
        yield ctx.call_activity(save, "after")

    eng = engine(monitor, n=1)
    step = eng.start(started())
    step = eng.apply([completed(keys(step)[0], 2)])
    assert swallowed == [] and step.scheduled == []
    assert eng.status == "continued_as_new" and eng.new_input == ((2,), {})


def test_continue_as_new_drops_calls_still_pending() -> None:
    def monitor(ctx, n):  # type: ignore[no-untyped-def]
        ctx.call_activity(double, n)  # scheduled, never awaited
        yield ctx.create_timer(0)
        ctx.continue_as_new(n + 1)

    eng = engine(monitor, n=1)
    eng.start(started())
    assert eng.pending_calls == 1
    eng.apply([timer_fired("timer#0", T0)])
    assert eng.status == "continued_as_new" and eng.pending_calls == 0


def test_async_orchestrator_can_continue_as_new() -> None:
    async def monitor(ctx, n):  # type: ignore[no-untyped-def]
        await ctx.create_timer(1)
        ctx.continue_as_new(n * 2)

    eng = engine(monitor, n=21)
    eng.start(started())
    eng.apply([timer_fired("timer#0", T0 + 1)])
    assert eng.status == "continued_as_new" and eng.new_input == ((42,), {})


# ----------------------------------------------------------------- terminate


def test_terminate_while_waiting_runs_finally_and_schedules_nothing() -> None:
    cleaned: list[str] = []

    def guarded(ctx):  # type: ignore[no-untyped-def]
        try:
            yield ctx.wait_for_external_event("go", timeout=60)
            yield ctx.call_activity(double, 1)
        finally:
            cleaned.append("finally")

    eng = engine(guarded)
    eng.start(started())
    step = eng.apply([control("terminate", "why", T0 + 1)])
    assert eng.status == "terminated" and eng.terminated_reason == "why"
    assert cleaned == ["finally"]
    assert (step.scheduled, step.timers, step.subs, step.waiting_events) == ([], [], [], [])
    # what arrives afterwards is ignored
    step = eng.apply([raised("go", 1, T0 + 2), timer_fired("timer#0", T0 + 60)])
    assert eng.status == "terminated" and cleaned == ["finally"]
    assert (step.scheduled, step.timers, step.waiting_events) == ([], [], [])


def test_terminate_drops_the_pending_activity() -> None:
    def busy(ctx):  # type: ignore[no-untyped-def]
        return (yield ctx.call_activity(double, 1))

    eng = engine(busy)
    step = eng.start(started())
    eng.apply([control("terminate", "stop")])
    assert eng.pending_calls == 0
    eng.apply([completed(keys(step)[0], 2, t=T0 + 2)])
    assert eng.status == "terminated" and eng.output is None


def test_terminate_in_loaded_history_does_not_terminate_a_new_run() -> None:
    eng = engine(wait_for, name="go")
    eng.load([started(), control("terminate", "old"), finished("terminated")])
    step = eng.start(started(T0 + 100, run=2))
    assert eng.status == "running" and step.waiting_events == ["go"]
    eng.apply([raised("go", "ok", T0 + 101)])
    assert eng.output == ["ok"]


def test_other_control_actions_do_not_terminate() -> None:
    eng = engine(wait_for, name="go")
    eng.start(started())
    eng.apply([control("suspend"), control("resume")])
    assert eng.status == "running"


def test_terminate_schedules_nothing_even_when_finally_calls_an_activity() -> None:
    def cleanup_in_finally(ctx):  # type: ignore[no-untyped-def]
        try:
            yield ctx.wait_for_external_event("go")
        finally:
            yield ctx.call_activity(save, "cleanup")

    eng = engine(cleanup_in_finally)
    eng.start(started())
    step = eng.apply([control("terminate", "why")])
    assert eng.status == "terminated"
    assert step.scheduled == [] and eng.pending_calls == 0


# ----------------------------------------------------------------- retry policy


def test_retries_allow_that_many_extra_attempts() -> None:
    options = ActivityOptions(retries=2)
    assert options.max_attempts == 3
    error = ValueError("x")
    assert [options.should_retry(error, attempt, 0.0, 0.0) for attempt in (1, 2, 3)] == [
        True,
        True,
        False,
    ]


def test_no_retries_by_default() -> None:
    assert not ActivityOptions().should_retry(ValueError("x"), 1, 0.0, 0.0)


def test_retry_on_limits_the_retried_classes() -> None:
    options = ActivityOptions(retries=3, retry_on=(ConnectionError, TimeoutError))
    assert options.should_retry(ConnectionResetError("reset"), 1, 0.0, 0.0)  # a subclass
    assert options.should_retry(TimeoutError("slow"), 1, 0.0, 0.0)
    assert not options.should_retry(ValueError("bad input"), 1, 0.0, 0.0)


def test_no_retry_on_wins_over_retry_on() -> None:
    options = ActivityOptions(retries=3, retry_on=(OSError,), no_retry_on=(FileNotFoundError,))
    assert options.should_retry(ConnectionError("flaky"), 1, 0.0, 0.0)
    assert not options.should_retry(FileNotFoundError("gone"), 1, 0.0, 0.0)


@pytest.mark.parametrize("retry_on", [(Exception,), (BaseException,), (KeyboardInterrupt,)])
def test_keyboard_interrupt_is_never_retried(retry_on: tuple[type[BaseException], ...]) -> None:
    options = ActivityOptions(retries=5, retry_on=retry_on)
    assert not options.should_retry(KeyboardInterrupt(), 1, 0.0, 0.0)


def test_retry_timeout_stops_retries_that_would_start_too_late() -> None:
    options = ActivityOptions(retries=10, backoff=1.0, retry_timeout=10.0)
    # attempt 1 failed at t=9; attempt 2 would start at 9 + 1 = 10: exactly on the limit
    assert options.should_retry(ValueError("x"), 1, first_started=0.0, now=9.0)
    assert not options.should_retry(ValueError("x"), 1, first_started=0.0, now=9.5)


def test_retry_timeout_counts_the_backoff_of_the_next_attempt() -> None:
    options = ActivityOptions(retries=10, backoff=2.0, backoff_coefficient=3.0, retry_timeout=20)
    # before attempt 3 the delay is 2 * 3 = 6 s
    assert options.should_retry(ValueError("x"), 2, first_started=100.0, now=114.0)
    assert not options.should_retry(ValueError("x"), 2, first_started=100.0, now=114.5)


def test_retry_timeout_does_not_lift_the_attempt_limit() -> None:
    options = ActivityOptions(retries=1, retry_timeout=1000.0)
    assert not options.should_retry(ValueError("x"), 2, 0.0, 0.0)


def test_delay_grows_by_the_coefficient_and_is_capped() -> None:
    options = ActivityOptions(backoff=1.5, backoff_coefficient=2.0, max_backoff=10.0)
    assert [options.delay_before(a) for a in (2, 3, 4, 5, 6, 7)] == [
        1.5,
        3.0,
        6.0,
        10.0,
        10.0,
        10.0,
    ]


def test_coefficient_one_gives_a_constant_delay() -> None:
    options = ActivityOptions(backoff=4.0, backoff_coefficient=1.0)
    assert {options.delay_before(a) for a in range(2, 10)} == {4.0}


def test_delay_is_a_float_even_for_integer_settings() -> None:
    delay = ActivityOptions(backoff=2, backoff_coefficient=2).delay_before(3)
    assert delay == 4.0 and isinstance(delay, float)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"retries": -1}, "retries"),
        ({"retries": 1.5}, "retries"),
        ({"backoff": -0.1}, "backoff"),
        ({"backoff_coefficient": 0.5}, "backoff_coefficient"),
        ({"max_backoff": -1}, "max_backoff"),
        ({"retry_timeout": 0}, "retry_timeout"),
        ({"retry_on": (ValueError, "oops")}, "retry_on"),
        ({"no_retry_on": (int,)}, "no_retry_on"),
        ({"timeout": 0}, "timeout"),
        ({"concurrency": 0}, "concurrency"),
    ],
)
def test_invalid_option_is_a_definition_error_naming_it(
    options: dict[str, object], named: str
) -> None:
    with pytest.raises(DefinitionError, match=rf"\b{named} "):
        ActivityOptions(**options)  # type: ignore[arg-type]


def test_every_invalid_option_is_reported_at_once() -> None:
    with pytest.raises(DefinitionError) as info:
        ActivityOptions(retries=-1, timeout=-5)
    assert "retries" in str(info.value) and "timeout" in str(info.value)


def test_bare_exception_class_for_retry_on_is_accepted_and_other_things_are_not() -> None:
    assert ActivityOptions(retry_on=ValueError).retry_on == (ValueError,)  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="retry_on"):
        ActivityOptions(retry_on="ValueError")  # type: ignore[arg-type]
