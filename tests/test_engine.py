"""The pure replay engine, driven by event builders: no kernel, no store, no threads."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from builders import (
    T0,
    LiveRun,
    completed,
    engine,
    failed,
    finished,
    keys,
    new_engine,
    raised,
    run_to_end,
    started,
    timer_fired,
)

from durable_nb import Activity, FingerprintError, NonDeterminismError, OrchestratorError
from durable_nb.errors import ActivityNotFoundError, EventTimeoutError


def _double(x: int) -> int:
    return 2 * x


def _inc(x: int) -> int:
    return x + 1


def _save(x: object) -> str:
    return "saved"


double = Activity(_double, name="double")
inc = Activity(_inc, name="inc")
save = Activity(_save, name="save")


def chain(ctx, n):  # type: ignore[no-untyped-def]
    a = yield ctx.call_activity(double, n)
    b = yield ctx.call_activity(inc, a)
    return b


def fan(ctx, n):  # type: ignore[no-untyped-def]
    values = yield ctx.task_all([ctx.call_activity(double, i) for i in range(n)])
    yield ctx.call_activity(save, values)
    return sum(values)


def answer(call):  # type: ignore[no-untyped-def]
    return call.activity.fn(*call.args, **call.kwargs)


# ----------------------------------------------------------------- fresh runs


def test_first_step_schedules_only_the_first_call_of_a_chain() -> None:
    eng = engine(chain, n=5)
    step = eng.start(started())
    assert [c.activity.name for c in step.scheduled] == ["double"]
    assert step.scheduled[0].args == (5,)
    assert not eng.done


def test_completion_resumes_the_orchestrator_until_the_end() -> None:
    eng = engine(chain, n=5)
    step = eng.start(started())
    step = eng.apply([completed(keys(step)[0], 10)])
    assert [c.args for c in step.scheduled] == [(10,)]
    eng.apply([completed(keys(step)[0], 11)])
    assert eng.status == "completed"
    assert eng.output == 11


def test_fan_out_schedules_every_call_at_once_and_keeps_order() -> None:
    eng = engine(fan, n=4)
    step = eng.start(started())
    calls = step.scheduled
    assert len(calls) == 4
    assert len(set(keys(step))) == 4
    # complete in reverse order, one event at a time
    for call in reversed(calls[1:]):
        step = eng.apply([completed(call.key, call.args[0] * 10)])
        assert step.scheduled == []
    step = eng.apply([completed(calls[0].key, 0)])
    assert [c.activity.name for c in step.scheduled] == ["save"]
    assert step.scheduled[0].args == ([0, 10, 20, 30],)


def test_unknown_completion_keys_are_ignored() -> None:
    eng = engine(chain, n=1)
    eng.start(started())
    step = eng.apply([completed("double/xxxx/yyyy#0", 99)])
    assert step.scheduled == [] and not eng.done


# ----------------------------------------------------------------- replay


def test_full_history_replays_without_scheduling_anything() -> None:
    _, history = run_to_end(fan, answer, n=5)
    eng = engine(fan, n=5)
    eng.load(history)
    step = eng.start(started(run=2))
    assert step.scheduled == []
    assert sorted(step.replayed) == ["double"] * 5 + ["save"]
    assert eng.status == "completed" and eng.output == 20


def test_a_replay_hands_out_each_recorded_result_once_and_keeps_none() -> None:
    """Identical calls get their own results, in order (the occurrence in the key);
    the engine lets go of a result once it answered its call (a long replay's results
    are not kept for the rest of the run)."""

    def thrice(ctx):  # type: ignore[no-untyped-def]
        values = []
        for _ in range(3):
            values.append((yield ctx.call_activity(double, 1)))
        return values

    _, history = run_to_end(thrice, lambda call: f"run1-{call.key[-2:]}")
    eng = engine(thrice)
    eng.load(history)
    step = eng.start(started(run=2))
    assert step.scheduled == [] and eng.output == ["run1-#0", "run1-#1", "run1-#2"]
    assert len(eng._results.results) == 0


def test_partial_history_runs_only_what_is_missing() -> None:
    _, history = run_to_end(fan, answer, n=5)
    # a kill after the first three completions were written
    partial = [e for e in history if not hasattr(e, "result")]
    kept = [e for e in history if hasattr(e, "result")][:3]
    eng = engine(fan, n=5)
    eng.load(partial[:1] + kept)
    step = eng.start(started(run=2))
    assert len(step.scheduled) == 2
    assert len(step.replayed) == 3


def test_added_step_keeps_every_unchanged_result() -> None:
    _, history = run_to_end(chain, answer, n=3)

    def chain_with_extra_step(ctx, n):  # type: ignore[no-untyped-def]
        a = yield ctx.call_activity(double, n)
        extra = yield ctx.call_activity(save, a)
        b = yield ctx.call_activity(inc, a)
        return (b, extra)

    chain_with_extra_step.__name__ = "chain"
    eng = engine(chain_with_extra_step, n=3)
    eng.load(history)
    step = eng.start(started(run=2))
    assert [c.activity.name for c in step.scheduled] == ["save"]
    eng.apply([completed(keys(step)[0], "saved")])
    assert eng.output == (7, "saved")  # inc(6) came from history


def test_reordered_steps_keep_their_results() -> None:
    def two(ctx):  # type: ignore[no-untyped-def]
        a = yield ctx.call_activity(double, 1)
        b = yield ctx.call_activity(inc, 1)
        return a, b

    def two_swapped(ctx):  # type: ignore[no-untyped-def]
        b = yield ctx.call_activity(inc, 1)
        a = yield ctx.call_activity(double, 1)
        return a, b

    _, history = run_to_end(two, answer)
    eng = engine(two_swapped)
    eng.load(history)
    step = eng.start(started(run=2))
    assert step.scheduled == [] and eng.output == (2, 2)


def test_edited_activity_reruns_exactly_its_calls() -> None:
    _, history = run_to_end(fan, answer, n=3)
    edited = Activity(lambda x: 3 * x, name="double", source_digest="an-edited-body")

    def fan_edited(ctx, n):  # type: ignore[no-untyped-def]
        values = yield ctx.task_all([ctx.call_activity(edited, i) for i in range(n)])
        yield ctx.call_activity(save, values)
        return sum(values)

    fan_edited.__name__ = "fan"
    eng = engine(fan_edited, n=3)
    eng.load(history)
    step = eng.start(started(run=2))
    assert [c.activity.name for c in step.scheduled] == ["double"] * 3
    step = eng.apply([completed(c.key, 3 * c.args[0]) for c in step.scheduled])
    # save gets new input, so it runs again too: its arguments changed
    assert [c.activity.name for c in step.scheduled] == ["save"]


def test_same_call_twice_gets_two_occurrences() -> None:
    def twice(ctx):  # type: ignore[no-untyped-def]
        a = yield ctx.call_activity(double, 1)
        b = yield ctx.call_activity(double, 1)
        return a + b

    eng = engine(twice)
    first = eng.start(started())
    second = eng.apply([completed(keys(first)[0], 2)])
    assert keys(first)[0].endswith("#0") and keys(second)[0].endswith("#1")
    # history holding only the first occurrence answers only the first call
    eng2 = engine(twice)
    eng2.load([started(), completed(keys(first)[0], 2)])
    step = eng2.start(started(run=2))
    assert keys(step) == keys(second)


def test_keyword_and_dict_order_do_not_change_keys() -> None:
    def with_kwargs(ctx, order):  # type: ignore[no-untyped-def]
        payload = {"b": 2, "a": 1} if order else {"a": 1, "b": 2}
        yield ctx.call_activity(save, payload)

    one = engine(with_kwargs, order=True).start(started())
    two = engine(with_kwargs, order=False).start(started())
    assert keys(one) == keys(two)


# ----------------------------------------------------------------- failures


def test_failure_is_thrown_at_the_yield_and_can_be_caught() -> None:
    def careful(ctx):  # type: ignore[no-untyped-def]
        try:
            yield ctx.call_activity(double, 1)
        except ValueError as exc:
            return f"caught {exc}"
        return "no error"

    eng = engine(careful)
    step = eng.start(started())
    error = ValueError("boom")
    eng.apply([failed(keys(step)[0], error)])
    assert eng.output == "caught boom"


def test_unhandled_failure_fails_the_run_with_the_original_exception() -> None:
    eng = engine(chain, n=1)
    step = eng.start(started())
    error = KeyError("missing")
    eng.apply([failed(keys(step)[0], error)])
    assert eng.status == "failed"
    assert eng.failure is error


def test_failures_in_history_are_retried_not_replayed() -> None:
    eng = engine(chain, n=1)
    first = eng.start(started())
    key = keys(first)[0]
    eng2 = engine(chain, n=1)
    eng2.load([started(), failed(key, ValueError("x")), finished("failed")])
    step = eng2.start(started(run=2))
    assert keys(step) == [key]


def test_task_all_fails_as_soon_as_one_child_fails() -> None:
    eng = engine(fan, n=3)
    step = eng.start(started())
    error = RuntimeError("child failed")
    eng.apply([failed(keys(step)[1], error)])
    assert eng.status == "failed" and eng.failure is error


def test_task_any_returns_the_first_finished_task() -> None:
    def race(ctx):  # type: ignore[no-untyped-def]
        slow = ctx.call_activity(double, 1)
        fast = ctx.call_activity(inc, 1)
        winner = yield ctx.task_any([slow, fast])
        return "fast" if winner is fast else "slow", winner.result

    eng = engine(race)
    step = eng.start(started())
    eng.apply([completed(keys(step)[1], 2)])
    assert eng.output == ("fast", 2)


def test_task_any_replays_the_winner_history_recorded_first_not_the_first_listed() -> None:
    def race(ctx):  # type: ignore[no-untyped-def]
        listed_first = ctx.call_activity(double, 1)
        approval = ctx.wait_for_external_event("approve")
        winner = yield ctx.task_any([listed_first, approval])
        return "activity" if winner is listed_first else "event"

    live = LiveRun(race)
    (activity_key,) = keys(live.step)
    # the event came first; the activity finished later and is in history too
    live.apply(raised("approve", True, T0 + 1))
    live.apply(completed(activity_key, 2, T0 + 2))
    assert live.engine.output == "event"
    replayed, _ = live.replay()
    assert replayed.output == "event"


def test_task_any_built_after_both_children_finished_picks_the_earlier_in_history() -> None:
    def late_race(ctx):  # type: ignore[no-untyped-def]
        a = ctx.call_activity(double, 1)
        b = ctx.call_activity(inc, 1)
        yield ctx.create_timer(10)  # both finish while the orchestrator waits here
        winner = yield ctx.task_any([a, b])
        return "a" if winner is a else "b"

    live = LiveRun(late_race)
    key_a, key_b = keys(live.step)
    live.apply(completed(key_b, 2, T0 + 1), completed(key_a, 2, T0 + 2))
    live.apply(timer_fired("timer#0", T0 + 10))
    assert live.engine.output == "b"
    replayed, _ = live.replay()
    assert replayed.output == "b"


# ----------------------------------------------------------------- misuse


def test_yielding_something_else_than_a_task_is_an_orchestrator_error() -> None:
    def bad(ctx):  # type: ignore[no-untyped-def]
        yield 42

    eng = engine(bad)
    eng.start(started())
    assert isinstance(eng.failure, OrchestratorError)
    assert "42" in str(eng.failure) and "'bad'" in str(eng.failure)


def test_yielding_a_list_hints_at_task_all() -> None:
    def bad(ctx):  # type: ignore[no-untyped-def]
        yield [ctx.call_activity(double, 1)]

    eng = engine(bad)
    eng.start(started())
    assert "ctx.task_all" in str(eng.failure)


def test_awaiting_asyncio_sleep_in_an_async_orchestrator_is_refused() -> None:
    async def sleepy(ctx):  # type: ignore[no-untyped-def]
        await asyncio.sleep(1)

    async def drive() -> None:  # inside a loop, as in a real run
        eng = engine(sleepy)
        eng.start(started())
        assert isinstance(eng.failure, OrchestratorError)
        assert "not a durable task" in str(eng.failure)

    asyncio.run(drive())


def test_async_orchestrator_is_driven_like_a_generator() -> None:
    async def achain(ctx, n):  # type: ignore[no-untyped-def]
        a = await ctx.call_activity(double, n)
        values = await ctx.task_all([ctx.call_activity(inc, a), ctx.call_activity(inc, n)])
        return values

    eng, history = run_to_end(achain, answer, n=4)
    assert eng.output == [9, 5]
    replay = engine(achain, n=4)
    replay.load(history)
    assert replay.start(started(run=2)).scheduled == [] and replay.output == [9, 5]


def test_unfingerprintable_argument_names_activity_and_argument() -> None:
    def bad(ctx):  # type: ignore[no-untyped-def]
        yield ctx.call_activity(save, lambda: 1)

    eng = engine(bad)
    eng.start(started())
    assert isinstance(eng.failure, FingerprintError)
    message = str(eng.failure)
    assert "'save'" in message and "positional argument 0" in message and "function" in message


def test_unknown_activity_name_is_a_clear_error() -> None:
    def bad(ctx):  # type: ignore[no-untyped-def]
        yield ctx.call_activity("no_such_activity", 1)

    eng = engine(bad)
    eng.start(started())
    assert isinstance(eng.failure, ActivityNotFoundError)
    assert "no_such_activity" in str(eng.failure)


def test_orchestrator_raising_before_its_first_yield_fails_the_run() -> None:
    def early(ctx, n):  # type: ignore[no-untyped-def]
        raise ValueError(f"bad n={n}")
        yield

    eng = engine(early, n=3)
    eng.start(started())
    assert eng.status == "failed" and "bad n=3" in str(eng.failure)


# ----------------------------------------------------------------- determinism helpers


def test_clock_and_uuids_are_the_same_on_replay() -> None:
    seen: list[tuple[object, ...]] = []

    def timed(ctx):  # type: ignore[no-untyped-def]
        seen.append((ctx.current_utc_datetime, ctx.new_uuid(), ctx.is_replaying))
        yield ctx.call_activity(double, 1)
        seen.append((ctx.current_utc_datetime, ctx.new_uuid(), ctx.is_replaying))
        return None

    _, history = run_to_end(timed, answer)
    live = list(seen)
    seen.clear()
    replay = engine(timed)
    replay.load(history)
    replay.start(started(t=T0 + 500, run=2))
    assert [s[:2] for s in seen] == [s[:2] for s in live]
    assert live[0][0] == dt.datetime.fromtimestamp(T0, tz=dt.timezone.utc)
    assert live[1][0] == dt.datetime.fromtimestamp(T0 + 1, tz=dt.timezone.utc)
    assert live[0][1] != live[1][1]
    assert [s[2] for s in live] == [False, False]
    assert [s[2] for s in seen] == [True, True]


def test_custom_status_is_part_of_the_step() -> None:
    def reporting(ctx):  # type: ignore[no-untyped-def]
        ctx.set_custom_status({"stage": "one"})
        yield ctx.call_activity(double, 1)
        ctx.set_custom_status({"stage": "two"})

    eng = engine(reporting)
    step = eng.start(started())
    assert step.custom_status == {"stage": "one"}
    step = eng.apply([completed(keys(step)[0], 2)])
    assert step.custom_status == {"stage": "two"} and eng.done


# ----------------------------------------------------------------- strict mode


def test_strict_mode_names_position_expected_and_actual() -> None:
    _, history = run_to_end(chain, answer, strict=True, n=1)

    def chain_changed(ctx, n):  # type: ignore[no-untyped-def]
        a = yield ctx.call_activity(double, n)
        b = yield ctx.call_activity(save, a)
        return b

    chain_changed.__name__ = "chain"
    eng = engine(chain_changed, strict=True, n=1)
    eng.load(history)
    eng.start(started(run=2))
    assert isinstance(eng.failure, NonDeterminismError)
    message = str(eng.failure)
    assert "position 1" in message and "'save'" in message and "'inc'" in message


def test_strict_mode_accepts_the_same_calls() -> None:
    _, history = run_to_end(chain, answer, strict=True, n=1)
    eng = engine(chain, strict=True, n=1)
    eng.load(history)
    eng.start(started(run=2))
    assert eng.status == "completed" and eng.output == 3


@pytest.mark.parametrize("n", [0, 1, 50])
def test_fan_out_of_any_width_completes(n: int) -> None:
    eng, _ = run_to_end(fan, answer, n=n)
    assert eng.output == sum(2 * i for i in range(n))


# ----------------------------------------------------------------- runaway loops


def _drive_reports(fn, limit, **arguments):  # type: ignore[no-untyped-def]
    """Run ``fn`` live with a runaway limit of ``limit``, answering every call and firing
    every timer at once; returns the engine and what its steps reported as runaways."""

    eng = new_engine(fn, arguments, runaway_calls=limit)
    step = eng.start(started())
    reports = []
    clock = T0
    while True:
        if step.runaway is not None:
            reports.append(step.runaway)
        if eng.done:
            return eng, reports
        clock += 1
        batch = [completed(c.key, answer(c), t=clock) for c in step.scheduled]
        batch += [timer_fired(t.key, t.fire_at) for t in step.timers]
        assert batch, "the orchestrator waits but nothing is scheduled"
        step = eng.apply(batch)


def poll(ctx, n, timer_every, event_every):  # type: ignore[no-untyped-def]
    for i in range(1, n + 1):
        yield ctx.call_activity(double, i)
        yield ctx.call_activity(inc, i)  # another activity: counted on its own
        if timer_every and i % timer_every == 0:
            yield ctx.create_timer(1)
        if event_every and i % event_every == 0:
            try:
                yield ctx.wait_for_external_event("go", timeout=1)
            except EventTimeoutError:
                pass
    return n


def test_a_loop_of_calls_with_no_timer_is_reported_once_per_run() -> None:
    eng, reports = _drive_reports(poll, 50, n=200, timer_every=0, event_every=0)
    assert eng.output == 200
    assert reports == [("double", 50)]  # the first activity to reach the limit, once


@pytest.mark.parametrize(("timer_every", "event_every"), [(40, 0), (0, 49)])
def test_a_durable_timer_between_calls_starts_the_count_afresh(
    timer_every: int, event_every: int
) -> None:
    eng, reports = _drive_reports(poll, 50, n=200, timer_every=timer_every, event_every=event_every)
    assert eng.output == 200 and reports == []


def fan_out_rounds(ctx, rounds, width):  # type: ignore[no-untyped-def]
    total = 0
    for r in range(rounds):
        calls = [ctx.call_activity(double, r * width + i) for i in range(width)]
        total += sum((yield ctx.task_all(calls)))
    return total


def test_a_fan_out_counts_once_however_wide() -> None:
    # 120 calls of one activity in one resume: a deliberate fan-out, not a loop.
    eng, reports = _drive_reports(fan_out_rounds, 50, rounds=1, width=120)
    assert eng.output == sum(2 * i for i in range(120)) and reports == []


def test_a_loop_of_fan_outs_counts_one_per_round() -> None:
    # Each round's calls count once: 49 rounds stay under a limit of 50, 50 reach it.
    _, reports = _drive_reports(fan_out_rounds, 50, rounds=49, width=3)
    assert reports == []
    _, reports = _drive_reports(fan_out_rounds, 50, rounds=50, width=3)
    assert reports == [("double", 50)]


@pytest.mark.parametrize("limit", [0, None])
def test_no_runaway_limit_reports_nothing(limit: int | None) -> None:
    _, reports = _drive_reports(poll, limit, n=200, timer_every=0, event_every=0)
    assert reports == []


def test_a_replayed_runaway_loop_is_reported_again_in_the_next_run() -> None:
    def loop(ctx):  # type: ignore[no-untyped-def]
        for i in range(60):
            yield ctx.call_activity(double, i)
        return "done"

    _, history = run_to_end(loop, answer)

    eng = new_engine(loop, {}, name="loop", instance_id="inst-1", runaway_calls=50)
    eng.load(history)
    step = eng.start(started(run=2))
    assert eng.output == "done" and step.runaway == ("double", 50)
