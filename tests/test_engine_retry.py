"""The rest of Durable Functions' context API in the engine: RetryOptions,
call_activity_with_retry, call_sub_orchestrator_with_retry (retried from history, so a
killed kernel keeps the count), get_input, parent_instance_id and task_any([])."""

from __future__ import annotations

from typing import Any

import pytest
from builders import (
    T0,
    completed,
    engine,
    finished,
    new_engine,
    started,
    sub_completed,
    sub_failed,
    timer_fired,
)

import durable_nb as dn
from durable_nb import history
from durable_nb.engine import OrchestrationEngine, Step, TimerCall
from durable_nb.engine.context import CLIENT_INPUT

RetryOptions = dn.RetryOptions


@dn.activity
def fetch(x):  # type: ignore[no-untyped-def]
    return x * 2


@dn.orchestrator
def kid(ctx, x):  # type: ignore[no-untyped-def]
    return (yield ctx.call_activity(fetch, x))


# ------------------------------------------------------------------ RetryOptions


def test_retry_options_takes_durable_functions_names_and_defaults() -> None:
    options = RetryOptions(first_retry_interval_in_milliseconds=500, max_number_of_attempts=4)
    assert options.first_retry_interval_in_milliseconds == 500
    assert options.max_number_of_attempts == 4
    assert options.backoff_coefficient == 1.0
    assert options.max_retry_interval_in_milliseconds is None
    assert options.retry_timeout_in_milliseconds is None
    assert RetryOptions(500, 4) == options  # positional, as the Python SDK's samples do
    assert hash(RetryOptions(500, 4)) == hash(options)
    assert [options.delay_before(n) for n in (2, 3, 4)] == [0.5, 0.5, 0.5]


def test_retry_options_backoff_is_capped_by_the_max_retry_interval() -> None:
    options = RetryOptions(100, 6, backoff_coefficient=3, max_retry_interval_in_milliseconds=1000)
    assert [options.delay_before(n) for n in range(2, 7)] == pytest.approx(
        [0.1, 0.3, 0.9, 1.0, 1.0]
    )
    # A huge attempt number neither overflows nor passes the cap.
    assert options.delay_before(10_000) == 1.0


def test_retry_timeout_stops_retries_that_would_start_too_late() -> None:
    options = RetryOptions(1000, 10, retry_timeout_in_milliseconds=2500)
    assert options.allows(1, first_started=0.0, now=1.0)  # next start at 2.0 s
    assert not options.allows(2, first_started=0.0, now=2.0)  # next start at 3.0 s
    assert not RetryOptions(1000, 2).allows(2, 0.0, 0.0)  # attempts used up


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"first_retry_interval_in_milliseconds": 100, "max_number_of_attempts": 0}, ">= 1"),
        ({"first_retry_interval_in_milliseconds": 100, "max_number_of_attempts": 2.5}, ">= 1"),
        ({"first_retry_interval_in_milliseconds": 100, "max_number_of_attempts": True}, ">= 1"),
        ({"first_retry_interval_in_milliseconds": -5, "max_number_of_attempts": 3}, "> 0"),
        ({"first_retry_interval_in_milliseconds": 0, "max_number_of_attempts": 3}, "> 0"),
        (
            {
                "first_retry_interval_in_milliseconds": 10,
                "max_number_of_attempts": 3,
                "backoff_coefficient": 0.5,
            },
            ">= 1",
        ),
        (
            {
                "first_retry_interval_in_milliseconds": 10,
                "max_number_of_attempts": 3,
                "retry_timeout_in_milliseconds": -1,
            },
            "None (no limit)",
        ),
        (
            {
                "first_retry_interval_in_milliseconds": 10,
                "max_number_of_attempts": 3,
                "max_retry_interval_in_milliseconds": float("nan"),
            },
            "> 0",
        ),
    ],
)
def test_bad_retry_options_say_what_and_what_to_do(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(dn.ConfigurationError) as info:
        RetryOptions(**kwargs)
    assert words in str(info.value)
    assert info.value.setting in str(info.value)


def test_an_unknown_retry_option_is_named_with_the_likely_one() -> None:
    with pytest.raises(dn.ConfigurationError) as info:
        RetryOptions(1000, 3, max_retry_interval_in_ms=5)  # type: ignore[call-arg]
    text = str(info.value)
    assert "max_retry_interval_in_ms" in text
    assert "did you mean 'max_retry_interval_in_milliseconds'" in text
    assert info.value.setting == "max_retry_interval_in_ms"


# ------------------------------------------------------------------ activities


def test_call_activity_with_retry_carries_the_policy_but_keeps_the_call_key() -> None:
    policy = RetryOptions(250, 5)

    def plain(ctx):  # type: ignore[no-untyped-def]
        return (yield ctx.call_activity(fetch, 3))

    def retried(ctx):  # type: ignore[no-untyped-def]
        return (yield ctx.call_activity_with_retry(fetch, policy, 3))

    plain_call = engine(plain).start(started()).scheduled[0]
    retried_call = engine(retried).start(started()).scheduled[0]
    assert plain_call.retry is None and retried_call.retry is policy
    assert retried_call.key == plain_call.key  # the policy is not part of the key
    assert retried_call.args == (3,)

    # A checkpoint made without the policy is replayed for the call with it.
    eng = engine(retried)
    eng.load([started(), completed(plain_call.key, 6), finished("failed")])
    step = eng.start(started(T0 + 50, run=2))
    assert step.scheduled == [] and eng.output == 6


def test_call_activity_with_retry_wants_retry_options() -> None:
    def wrong(ctx):  # type: ignore[no-untyped-def]
        return (yield ctx.call_activity_with_retry(fetch, 3))

    eng = engine(wrong)
    eng.start(started())
    assert eng.status == "failed"
    assert isinstance(eng.failure, dn.ConfigurationError)
    assert "takes a RetryOptions" in str(eng.failure)


# ------------------------------------------------------------------ sub-orchestrations


POLICY = RetryOptions(1000, 3, backoff_coefficient=2)


def parent(ctx):  # type: ignore[no-untyped-def]
    return (yield ctx.call_sub_orchestrator_with_retry(kid, POLICY, 5))


def _retry_timers(step: Step[Any, Any]) -> list[TimerCall]:
    return [t for t in step.timers if t.key.startswith("retry:")]


def test_a_failed_child_is_run_again_after_the_backoff_until_attempts_run_out() -> None:
    eng = engine(parent)
    events: list[history.Event] = [started()]
    step = eng.start(events[0])
    call = step.subs[0]
    runs = 1
    for attempt, delay in ((1, 1.0), (2, 2.0)):
        failed_at = T0 + 10 * attempt
        step = eng.apply(
            [sub_failed(call.key, call.instance_id, ValueError(f"no {attempt}"), failed_at)]
        )
        assert step.subs == [] and not eng.done
        (timer,) = _retry_timers(step)
        assert timer.key == f"retry:{call.key}#{attempt}" and timer.new
        assert timer.fire_at == failed_at + delay  # 1 s, then 2 s (coefficient 2)
        assert [type(e) for e in step.events] == [history.TimerCreated]
        step = eng.apply([timer_fired(timer.key, timer.fire_at)])
        assert step.subs == [call]  # the same child instance, run again
        runs += 1
    error = ValueError("no 3")
    eng.apply([sub_failed(call.key, call.instance_id, error, T0 + 40)])
    assert runs == 3
    assert eng.status == "failed" and eng.failure is error


def test_a_child_that_completes_on_a_retry_gives_its_result() -> None:
    eng = engine(parent)
    call = eng.start(started()).subs[0]
    step = eng.apply([sub_failed(call.key, call.instance_id, ValueError("flaky"), T0 + 1)])
    step = eng.apply([timer_fired(_retry_timers(step)[0].key, T0 + 2)])
    eng.apply([sub_completed(call.key, call.instance_id, 10, T0 + 3)])
    assert eng.status == "completed" and eng.output == 10


def _killed_during_second_backoff() -> tuple[list[history.Event], Any]:
    """The history of a run whose child failed twice, killed while waiting to retry."""
    eng = engine(parent)
    events: list[history.Event] = [started()]
    step = eng.start(events[0])
    call = step.subs[0]
    for attempt in (1, 2):
        failure = sub_failed(
            call.key, call.instance_id, ValueError(f"no {attempt}"), T0 + attempt * 10
        )
        events.append(failure)
        step = eng.apply([failure])
        events += step.events
        if attempt == 1:
            fired = timer_fired(_retry_timers(step)[0].key, T0 + 11)
            events.append(fired)
            step = eng.apply([fired])
            events += step.events
    return events, call


def test_a_kernel_killed_during_the_backoff_keeps_the_count_and_the_wait() -> None:
    events, call = _killed_during_second_backoff()
    # No ExecutionFinished: the kernel was killed. The rerun goes on where it was.
    eng = engine(parent)
    eng.load(events)
    step = eng.start(started(T0 + 21, run=2))
    assert step.subs == []  # the child does not run before its wait is over
    (timer,) = _retry_timers(step)
    assert timer.key == f"retry:{call.key}#2"
    assert not timer.new and timer.fire_at == T0 + 20 + 2.0  # the recorded fire time
    step = eng.apply([timer_fired(timer.key, timer.fire_at)])
    assert step.subs == [call]  # the third and last attempt
    eng.apply([sub_failed(call.key, call.instance_id, ValueError("no 3"), T0 + 30)])
    assert eng.status == "failed"  # no fourth attempt


def test_a_rerun_after_the_retry_timer_fired_starts_the_next_attempt_at_once() -> None:
    events, call = _killed_during_second_backoff()
    fired = timer_fired(f"retry:{call.key}#2", T0 + 22)
    eng = engine(parent)
    eng.load([*events, fired])
    step = eng.start(started(T0 + 25, run=2))
    assert step.subs == [call] and _retry_timers(step) == []
    eng.apply([sub_failed(call.key, call.instance_id, ValueError("no 3"), T0 + 30)])
    assert eng.status == "failed"  # that was the third and last attempt


def test_a_rerun_after_the_attempts_ran_out_fails_without_running_the_child() -> None:
    events, call = _killed_during_second_backoff()
    rest = [
        timer_fired(f"retry:{call.key}#2", T0 + 22),
        history.SubOrchestrationFailed(T0 + 23, call.key, call.instance_id, "ValueError", "no 3"),
    ]
    eng = engine(parent)
    eng.load([*events, *rest])  # killed before the failure reached the orchestrator
    step = eng.start(started(T0 + 30, run=2))
    assert step.subs == [] and eng.status == "failed"
    assert isinstance(eng.failure, dn.SubOrchestrationEndedError)
    assert "ValueError: no 3" in str(eng.failure)  # known by name, from history


def test_an_interrupted_run_keeps_the_count_too() -> None:
    events, call = _killed_during_second_backoff()
    eng = engine(parent)
    eng.load([*events, finished("interrupted")])
    step = eng.start(started(T0 + 21, run=2))
    assert step.subs == [] and [t.key for t in _retry_timers(step)] == [f"retry:{call.key}#2"]


@pytest.mark.parametrize("status", ["failed", "terminated"])
def test_a_run_that_ended_resets_the_count(status: str) -> None:
    events, call = _killed_during_second_backoff()
    eng = engine(parent)
    eng.load([*events, finished(status)])
    step = eng.start(started(T0 + 100, run=2))
    assert step.subs == [call]  # a rerun of a failed instance retries afresh
    assert _retry_timers(step) == []


def test_retry_timers_do_not_shift_the_orchestrators_own_timers() -> None:
    def waits_after(ctx):  # type: ignore[no-untyped-def]
        value = yield ctx.call_sub_orchestrator_with_retry(kid, POLICY, 5)
        yield ctx.create_timer(60)
        return value

    eng = engine(waits_after)
    events: list[history.Event] = [started()]
    step = eng.start(events[0])
    call = step.subs[0]
    failure = sub_failed(call.key, call.instance_id, ValueError("once"), T0 + 1)
    step = eng.apply([failure])
    events += [failure, *step.events]
    fired = timer_fired(_retry_timers(step)[0].key, T0 + 2)
    step = eng.apply([fired])
    events += [fired, *step.events]
    done = sub_completed(call.key, call.instance_id, 7, T0 + 3)
    step = eng.apply([done])
    events += [done, *step.events]
    assert [t.key for t in step.timers] == ["timer#0"]
    # Replayed, the child's result is found at once and the timer is still timer#0.
    again = engine(waits_after)
    again.load(events)
    step = again.start(started(T0 + 5, run=2))
    assert step.subs == [] and [t.key for t in step.timers] == ["timer#0"]
    assert not step.timers[0].new


def test_call_sub_orchestrator_with_retry_wants_retry_options() -> None:
    def wrong(ctx):  # type: ignore[no-untyped-def]
        return (yield ctx.call_sub_orchestrator_with_retry(kid, {"max": 3}, 5))

    eng = engine(wrong)
    eng.start(started())
    assert isinstance(eng.failure, dn.ConfigurationError)


# ------------------------------------------------------------------ context


def test_get_input_gives_the_input_in_durable_functions_style() -> None:
    seen: list[Any] = []

    def df_style(ctx):  # type: ignore[no-untyped-def]
        seen.append(ctx.get_input())
        yield ctx.task_all([])

    def one(ctx, city):  # type: ignore[no-untyped-def]
        seen.append(ctx.get_input())
        yield ctx.task_all([])

    def two(ctx, city, n=2):  # type: ignore[no-untyped-def]
        seen.append(ctx.get_input())
        yield ctx.task_all([])

    new_engine(df_style, {CLIENT_INPUT: "Seattle"}).start(started())
    new_engine(df_style, {}).start(started())
    new_engine(one, {"city": "Tokyo"}).start(started())
    new_engine(two, {"city": "London", "n": 2}).start(started())
    assert seen == ["Seattle", None, "Tokyo", {"city": "London", "n": 2}]


def test_parent_instance_id_is_the_parents_or_none() -> None:
    seen: list[Any] = []

    def who(ctx):  # type: ignore[no-untyped-def]
        seen.append(ctx.parent_instance_id)
        yield ctx.task_all([])

    new_engine(who, {}).start(started())
    new_engine(who, {}, parent_instance_id="mom").start(started())
    assert seen == [None, "mom"]


def test_task_any_of_no_tasks_is_done_at_once_with_none() -> None:
    seen: list[Any] = []

    def race(ctx):  # type: ignore[no-untyped-def]
        seen.append((yield ctx.task_any([])))
        seen.append(ctx.is_replaying)
        return (yield ctx.call_activity(fetch, 1))

    eng: OrchestrationEngine[Any, Any] = engine(race)
    step = eng.start(started())
    assert seen == [None, False] and len(step.scheduled) == 1
    # Replaying, an empty race does not make the orchestrator think it runs live.
    seen.clear()

    def replayed(ctx):  # type: ignore[no-untyped-def]
        yield ctx.call_activity(fetch, 1)
        yield ctx.task_any([])
        seen.append(ctx.is_replaying)
        return (yield ctx.call_activity(fetch, 2))

    first = engine(replayed).start(started()).scheduled[0]
    again = engine(replayed)
    again.load([started(), completed(first.key, 2), finished("interrupted")])
    again.start(started(T0 + 5, run=2))
    assert seen == [True]
