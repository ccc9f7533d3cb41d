"""The engine emits the history its decisions imply: old events + new events -> the
actions to carry out + the events to append, as the Durable Task SDK tests its
orchestration executor. Pure engine: no store, clock, kernel or thread."""

from __future__ import annotations

import pickle
from typing import Any

from builders import (
    T0,
    completed,
    control,
    engine,
    failed,
    keys,
    run_to_end,
    started,
    timer_created,
    timer_fired,
)

from durable_nb import Activity, history
from durable_nb.history import Status


def _double(x: int) -> int:
    return 2 * x


double = Activity(_double, name="double")


def chain(ctx, n):  # type: ignore[no-untyped-def]
    a = yield ctx.call_activity(double, n)
    b = yield ctx.call_activity(double, a)
    return b


def test_start_emits_the_scheduled_call_at_the_start_time() -> None:
    eng = engine(chain, n=1)
    step = eng.start(started(T0))
    [key] = keys(step)
    # With a preview of its arguments, for people: chain(n=1) calls double(1).
    assert step.events == [history.TaskScheduled(T0, key, "double", "1")]


def test_a_result_emits_the_next_call_at_the_time_it_is_given() -> None:
    eng = engine(chain, n=1)
    first = keys(eng.start(started(T0)))[0]
    step = eng.apply([completed(first, 2, t=T0 + 1)], now=T0 + 5)
    [second] = keys(step)
    assert step.events == [history.TaskScheduled(T0 + 5, second, "double", "2")]


def test_without_a_time_the_events_take_the_last_new_event_s() -> None:
    eng = engine(chain, n=1)
    first = keys(eng.start(started(T0)))[0]
    step = eng.apply([completed(first, 2, t=T0 + 3)])
    assert [e.timestamp for e in step.events] == [T0 + 3]


def test_the_last_result_emits_execution_finished_with_status_completed() -> None:
    eng = engine(chain, n=1)
    first = keys(eng.start(started(T0)))[0]
    second = keys(eng.apply([completed(first, 2)]))[0]
    step = eng.apply([completed(second, 4)], now=T0 + 9)
    assert step.scheduled == [] and step.waiting_events == []
    assert step.events == [history.ExecutionFinished(T0 + 9, "completed", "", None)]
    assert eng.status is Status.COMPLETED and eng.outcome.output == 4


def test_a_failure_the_orchestrator_does_not_catch_finishes_failed_with_its_message() -> None:
    eng = engine(chain, n=1)
    first = keys(eng.start(started(T0)))[0]
    step = eng.apply([failed(first, ValueError("boom"))], now=T0 + 2)
    assert step.events == [history.ExecutionFinished(T0 + 2, "failed", "ValueError: boom", None)]
    outcome = eng.outcome
    assert outcome.status is Status.FAILED and isinstance(outcome.failure, ValueError)
    assert outcome.message == "ValueError: boom"


def timed(ctx):  # type: ignore[no-untyped-def]
    ctx.set_custom_status({"phase": "waiting"})
    yield ctx.create_timer(60)
    return "woke"


def test_a_new_timer_emits_timer_created_and_the_custom_status_its_event() -> None:
    eng = engine(timed)
    step = eng.start(started(T0))
    assert step.events == [
        history.TimerCreated(T0, "timer#0", T0 + 60),
        history.CustomStatusSet(T0, {"phase": "waiting"}),
    ]
    step = eng.apply([timer_fired("timer#0", T0 + 60)])
    assert step.events == [history.ExecutionFinished(T0 + 60, "completed", "", None)]


def test_a_timer_recorded_in_history_is_armed_again_but_not_emitted_again() -> None:
    eng = engine(timed)
    eng.load([started(T0), timer_created("timer#0", T0 + 60)])
    step = eng.start(started(T0 + 10, run=2))
    assert [t.key for t in step.timers] == ["timer#0"] and not step.timers[0].new
    assert step.events == [history.CustomStatusSet(T0 + 10, {"phase": "waiting"})]


def cleaning(ctx):  # type: ignore[no-untyped-def]
    try:
        yield ctx.call_activity(double, 1)
    finally:
        ctx.call_activity(double, 2)  # asked for during the termination: never scheduled


def test_terminate_emits_only_execution_finished_with_the_reason() -> None:
    eng = engine(cleaning)
    eng.start(started(T0))
    step = eng.apply([control("terminate", "no longer needed", T0 + 1)])
    assert step.scheduled == []
    assert step.events == [
        history.ExecutionFinished(T0 + 1, "terminated", "terminated: no longer needed", None)
    ]


def test_abort_records_an_interrupted_run_with_no_strict_reference() -> None:
    eng = engine(chain, strict=True, n=1)
    eng.start(started(T0))
    finished = eng.abort(Status.INTERRUPTED, "CancelledError: stopped", T0 + 4)
    assert finished == history.ExecutionFinished(
        T0 + 4, "interrupted", "CancelledError: stopped", None
    )
    assert eng.done and eng.outcome.status is Status.INTERRUPTED


def test_a_strict_run_that_ends_records_its_calls_by_position() -> None:
    _, events = run_to_end(chain, lambda call: 2 * call.args[0], strict=True, n=1)
    assert events[-1] == history.ExecutionFinished(T0 + 2, "completed", "", ("double", "double"))


def test_the_emitted_history_replays_with_nothing_scheduled() -> None:
    _, events = run_to_end(chain, lambda call: 2 * call.args[0], n=3)
    assert [type(e).__name__ for e in events] == [
        "ExecutionStarted",
        "TaskScheduled",
        "TaskCompleted",
        "TaskScheduled",
        "TaskCompleted",
        "ExecutionFinished",
    ]
    again = engine(chain, n=3)
    again.load(events)
    step = again.start(started(T0 + 100, run=2))
    assert step.scheduled == [] and step.replayed == ["double", "double"]
    assert again.outcome.output == 12


def test_statuses_are_stored_as_plain_strings_never_as_the_enum() -> None:
    _, events = run_to_end(chain, lambda call: 2 * call.args[0], n=1)
    row: Any = history.encode(events[-1])
    assert row[2] == "completed" and type(row[2]) is str
    assert b"Status" not in pickle.dumps(row)
    assert Status.COMPLETED == "completed" and str(Status.COMPLETED) == "completed"
