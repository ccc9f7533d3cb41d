"""Property-based tests of the pure replay engine.

Random orchestration *programs* (data) are run by one interpreter orchestrator. A
simulator drives the engine live the way the runtime does: it records the history
in order (``TaskScheduled``/``TimerCreated`` after each step, outcomes persisted
before they are applied), answers calls in a seeded random order and in random
batch sizes, and fires timers. A crash is modelled by cutting the recorded history
after any number of events; a new engine loads the cut history and the simulator
drives it to the end. Outcomes are pure functions of a call's arguments, so a
failure that is retried on the resumed run fails again, as it did before.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from builders import new_engine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from durable_nb import Activity, history
from durable_nb.engine import OrchestrationEngine, Step
from durable_nb.engine.context import _UUID_NAMESPACE

T0 = 1_700_000_000.0
NAME = "prog"
INSTANCE = "inst-prop"

# ----------------------------------------------------------------- activities


def _add(x: int, k: int) -> int:
    return (x + k) % 1009


def _mul(x: int, k: int) -> int:
    return (x * k + 1) % 1009


def _square(x: int) -> int:
    return (x * x) % 1009


def _risky(x: int, fail: bool) -> int:
    if fail:
        raise ValueError(f"risky({x}) failed")
    return (x + 7) % 1009


def _hedge(x: int, replica: int) -> int:
    return (3 * x + 5) % 1009  # every replica answers the same: the race cannot change it


def _flaky(x: int, failures: int) -> int:
    return (x + 11) % 1009  # the simulator fails its first ``failures`` occurrences


add = Activity(_add, name="add")
mul = Activity(_mul, name="mul")
square = Activity(_square, name="square")
risky = Activity(_risky, name="risky")
hedge = Activity(_hedge, name="hedge")
flaky = Activity(_flaky, name="flaky")
SIMPLE = (add, mul)


def outcome(call: Any) -> tuple[bool, Any]:
    """(ok, value-or-exception) of one attempt: a pure function of the call's key.

    Most outcomes depend on the arguments only; ``flaky`` fails on the first
    ``failures`` occurrences of the same call (the ``#n`` suffix of its key), so
    retrying identical arguments eventually works, the same way on every run.
    """
    if call.activity is flaky:
        x, failures = call.args
        occurrence = int(call.key.rsplit("#", 1)[1])
        if occurrence < failures:
            return False, ConnectionError(f"flaky({x}) attempt {occurrence} failed")
    try:
        return True, call.activity.fn(*call.args, **call.kwargs)
    except Exception as exc:
        return False, exc


# ----------------------------------------------------------------- programs

# Steps (plain tuples so hypothesis can shrink them):
#   ("call", i, k)                    acc = SIMPLE[i](acc, k)
#   ("same", k)                       acc += square(k): the same call again and again
#   ("fan", m, k, dup)                acc = sum(task_all([add(acc, k or k+j) ...m]))
#   ("any", m)                        acc = task_any([hedge(acc, r) ...m]).result
#   ("risky", fail, catch, fallback)  acc = risky(acc, fail), or fallback when caught
#   ("fan_risky", m, bad, catch, fb)  task_all with child ``bad`` failing (fails fast)
#   ("retry", fails, catch)           call risky until it works, ``fails`` failures first
#   ("flaky", fails, cap)             retry flaky(acc, fails) with the same arguments, at
#                                     most ``cap`` times; ConnectionError escapes after that
#   ("race", m)                       acc = task_any([mul(acc, r + 2) ...m]).result: the
#                                     winner (hence the output) depends on completion order
#   ("timer", seconds)                a durable timer
#   ("uuid",)                         record ctx.new_uuid()

safe_step_st = st.one_of(
    st.tuples(st.just("call"), st.integers(0, 1), st.integers(0, 5)),
    st.tuples(st.just("same"), st.integers(0, 2)),
    st.tuples(st.just("fan"), st.integers(0, 4), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("any"), st.integers(1, 3)),
    st.tuples(st.just("timer"), st.integers(0, 30)),
    st.tuples(st.just("uuid")),
)
failing_step_st = st.one_of(
    st.tuples(st.just("risky"), st.booleans(), st.booleans(), st.integers(0, 9)),
    st.integers(1, 4).flatmap(
        lambda m: st.tuples(
            st.just("fan_risky"),
            st.just(m),
            st.integers(0, m - 1),
            st.booleans(),
            st.integers(0, 9),
        )
    ),
    st.tuples(st.just("retry"), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("flaky"), st.integers(0, 3), st.integers(1, 3)),
)
race_step_st = st.tuples(st.just("race"), st.integers(2, 3))
program_st = st.lists(st.one_of(safe_step_st, failing_step_st), max_size=7).map(tuple)
safe_program_st = st.lists(safe_step_st, max_size=7).map(tuple)
race_program_st = st.lists(st.one_of(safe_step_st, race_step_st), max_size=6).map(tuple)


def interpreter(ctx, program, seed):  # type: ignore[no-untyped-def]
    """Run ``program`` through ``ctx``; return the accumulator and a trace."""
    acc = seed
    trace: list[Any] = []
    for step in program:
        kind = step[0]
        if kind == "call":
            acc = yield ctx.call_activity(SIMPLE[step[1]], acc, step[2])
        elif kind == "same":
            acc = (acc + (yield ctx.call_activity(square, step[1]))) % 1009
        elif kind == "fan":
            _, m, k, dup = step
            tasks = [ctx.call_activity(add, acc, k if dup else k + j) for j in range(m)]
            values = yield ctx.task_all(tasks)
            trace.append(("fan", values))
            acc = (acc + sum(values)) % 1009
        elif kind == "any":
            winner = yield ctx.task_any([ctx.call_activity(hedge, acc, r) for r in range(step[1])])
            acc = winner.result
        elif kind == "risky":
            _, fail, catch, fallback = step
            try:
                acc = yield ctx.call_activity(risky, acc, fail)
            except ValueError as exc:
                if not catch:
                    raise
                trace.append(("caught", str(exc)))
                acc = fallback
        elif kind == "fan_risky":
            _, m, bad, catch, fallback = step
            tasks = [ctx.call_activity(risky, acc + j, j == bad) for j in range(m)]
            try:
                values = yield ctx.task_all(tasks)
                acc = sum(values) % 1009
            except ValueError as exc:
                if not catch:
                    raise
                trace.append(("caught", str(exc)))
                acc = fallback
        elif kind == "retry":
            _, fails, catch = step
            attempt = 0
            while True:
                try:
                    acc = yield ctx.call_activity(risky, acc + attempt, attempt < fails)
                    break
                except ValueError:
                    attempt += 1
                    if not catch:
                        raise
            trace.append(("attempts", attempt))
        elif kind == "flaky":
            _, fails, cap = step
            for attempt in range(cap):
                try:
                    acc = yield ctx.call_activity(flaky, acc, fails)
                    break
                except ConnectionError:
                    if attempt == cap - 1:
                        raise
            trace.append(("flaky", attempt))
        elif kind == "race":
            tasks = [ctx.call_activity(mul, acc, r + 2) for r in range(step[1])]
            winner = yield ctx.task_any(tasks)
            trace.append(("race", [t.key for t in tasks], winner.key))
            acc = winner.result
        elif kind == "timer":
            yield ctx.create_timer(step[1])
            trace.append("tick")
        elif kind == "uuid":
            trace.append(ctx.new_uuid())
        trace.append(acc)
    return acc, trace


# ----------------------------------------------------------------- simulator


@dataclass
class Run:
    """One run of the simulator: what it executed and what it recorded."""

    engine: OrchestrationEngine[Any, Any]
    history: list[history.Event]  # the loaded prefix plus everything this run appended
    executed: list[str] = field(default_factory=list)  # keys handed to executors
    cached: int = 0
    armed: dict[str, Any] = field(default_factory=dict)  # timer key -> TimerCall

    @property
    def result(self) -> tuple[str, Any]:
        eng = self.engine
        if eng.status == "failed":
            assert eng.failure is not None
            return eng.status, (type(eng.failure).__name__, str(eng.failure))
        return eng.status, eng.output


def simulate(
    program: tuple[Any, ...],
    seed: int,
    rng_seed: int,
    prefix: list[history.Event] | None = None,
    *,
    run: int = 1,
    max_batch: int = 3,
) -> Run:
    """Drive ``interpreter(program)`` live after loading ``prefix`` (a crashed history)."""
    rng = random.Random(rng_seed)
    prefix = list(prefix or [])
    eng = new_engine(
        interpreter, {"program": program, "seed": seed}, name=NAME, instance_id=INSTANCE
    )
    eng.load(prefix)
    result = Run(eng, prefix)
    clock = T0 + 10_000.0 * (run - 1)
    outstanding: list[tuple[str, Any]] = []

    def record(step: Step, t: float) -> None:
        result.cached += len(step.replayed)
        for call in step.scheduled:
            assert call.key not in result.executed, f"{call.key} scheduled twice in one run"
            result.executed.append(call.key)
            result.history.append(history.TaskScheduled(t, call.key, call.activity.name))
            outstanding.append(("call", call))
        for timer in step.timers:
            assert timer.key not in result.armed, f"{timer.key} armed twice in one run"
            result.armed[timer.key] = timer
            if timer.new:
                result.history.append(history.TimerCreated(t, timer.key, timer.fire_at))
            outstanding.append(("timer", timer))
        assert not step.subs

    started = history.ExecutionStarted(clock, NAME, run)
    result.history.append(started)
    record(eng.start(started), clock)
    while not eng.done:
        assert outstanding, "the orchestrator waits but nothing is outstanding"
        size = rng.randint(1, min(max_batch, len(outstanding)))
        batch = rng.sample(outstanding, size)  # random order within the batch, too
        events: list[history.Event] = []
        for item in batch:
            outstanding.remove(item)
            clock += 1.0
            kind, what = item
            if kind == "timer":
                events.append(history.TimerFired(max(clock, what.fire_at), what.key))
                continue
            ok, value = outcome(what)
            name = what.activity.name
            if ok:
                events.append(history.TaskCompleted(clock, what.key, name, value, 1))
            else:
                events.append(
                    history.TaskFailed(
                        clock, what.key, name, type(value).__name__, str(value), 1, error=value
                    )
                )
        result.history.extend(events)  # persisted before they are applied
        record(eng.apply(events), clock)
    result.history.append(history.ExecutionFinished(clock + 1, eng.status, ""))
    return result


def completed_keys(events: list[history.Event]) -> set[str]:
    return {e.key for e in events if isinstance(e, history.TaskCompleted)}


def timers_in(events: list[history.Event]) -> tuple[dict[str, float], set[str]]:
    created = {e.key: e.fire_at for e in events if isinstance(e, history.TimerCreated)}
    return created, {e.key for e in events if isinstance(e, history.TimerFired)}


def cut_points(total: int, data: Any) -> list[int]:
    """Every cut for short histories, a drawn sample for long ones (keeps the file fast)."""
    if total <= 40:
        return list(range(total + 1))
    extra = data.draw(st.lists(st.integers(0, total), min_size=8, max_size=8, unique=True))
    return sorted({0, 1, total - 1, total, *extra})


SLOW = 500  # examples for the crash/resume properties, the heart of this file
FAST = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ----------------------------------------------------------------- properties


@settings(FAST, max_examples=SLOW)
@given(program_st, st.integers(0, 1000), st.integers(0, 2**32), st.data())
def test_resume_after_any_crash_point_matches_the_uninterrupted_run(
    program: tuple[Any, ...], seed: int, rng_seed: int, data: Any
) -> None:
    full = simulate(program, seed, rng_seed)
    assert full.engine.done
    all_keys = set(full.executed)
    for p in cut_points(len(full.history), data):
        prefix = full.history[:p]
        done_before = completed_keys(prefix)
        resumed = simulate(program, seed, rng_seed + p + 1, prefix, run=2)
        assert resumed.result == full.result, f"cut after {p} events"
        # nothing that completed before the crash runs again, and nothing extra runs
        assert set(resumed.executed) == all_keys - done_before, f"cut after {p} events"
        # every result that completed before the crash is handed back from history
        assert resumed.cached == len(done_before & all_keys), f"cut after {p} events"
        assert done_before <= all_keys
        # timers: only those that had not fired are armed again, at their recorded time
        created, fired = timers_in(prefix)
        assert set(resumed.armed) == set(full.armed) - fired, f"cut after {p} events"
        for key, timer in resumed.armed.items():
            assert timer.new == (key not in created)
            assert timer.fire_at == created.get(key, timer.fire_at)


@settings(FAST, max_examples=SLOW)
@given(program_st, st.integers(0, 1000), st.integers(0, 2**32), st.data())
def test_two_crashes_in_a_row_still_match(
    program: tuple[Any, ...], seed: int, rng_seed: int, data: Any
) -> None:
    full = simulate(program, seed, rng_seed)
    p1 = data.draw(st.integers(0, len(full.history)))
    first = simulate(program, seed, rng_seed + 1, full.history[:p1], run=2)
    p2 = data.draw(st.integers(p1, len(first.history)))
    second = simulate(program, seed, rng_seed + 2, first.history[:p2], run=3)
    assert second.result == full.result
    assert set(second.executed) == set(full.executed) - completed_keys(first.history[:p2])


@FAST
@given(program_st, st.integers(0, 1000), st.integers(0, 2**32))
def test_replaying_the_full_history_runs_only_what_never_completed(
    program: tuple[Any, ...], seed: int, rng_seed: int
) -> None:
    full = simulate(program, seed, rng_seed)
    eng = new_engine(
        interpreter, {"program": program, "seed": seed}, name=NAME, instance_id=INSTANCE
    )
    eng.load(full.history)
    step = eng.start(history.ExecutionStarted(T0 + 50_000, NAME, 2))
    # Failures are retried, never replayed; calls abandoned by a fail-fast task_all or
    # a decided task_any never completed either. Everything else comes from history.
    never_completed = set(full.executed) - completed_keys(full.history)
    scheduled = {c.key for c in step.scheduled}
    assert scheduled <= never_completed
    assert not step.timers  # every timer the run waited on fired in its history
    if not any(isinstance(e, history.TaskFailed) for e in full.history):
        # nothing to retry: the replay finishes in its first step, from history alone
        assert eng.done
        assert Run(eng, full.history).result == full.result
        assert scheduled == never_completed
        assert len(step.replayed) == len(set(full.executed)) - len(never_completed)
    # driven to the end, the rerun retries exactly what never completed
    rerun = simulate(program, seed, rng_seed + 1, full.history, run=2)
    assert rerun.result == full.result
    assert set(rerun.executed) == never_completed


@FAST
@given(safe_program_st)
def test_full_replay_of_a_run_without_failures_or_races_schedules_nothing(
    program: tuple[Any, ...],
) -> None:
    full = simulate(program, 3, 0)
    if set(full.executed) - completed_keys(full.history):
        return  # a task_any loser never completed: covered by the test above
    eng = new_engine(interpreter, {"program": program, "seed": 3}, name=NAME, instance_id=INSTANCE)
    eng.load(full.history)
    step = eng.start(history.ExecutionStarted(T0 + 50_000, NAME, 2))
    assert step.scheduled == [] and step.timers == []
    assert (eng.status, eng.output) == full.result


@FAST
@given(
    program_st,
    st.integers(0, 1000),
    st.lists(st.integers(0, 2**32), min_size=2, max_size=4),
    st.integers(1, 6),
)
def test_completion_order_and_batching_never_change_the_outcome(
    program: tuple[Any, ...], seed: int, rng_seeds: list[int], max_batch: int
) -> None:
    runs = [simulate(program, seed, s, max_batch=max_batch) for s in rng_seeds]
    runs.append(simulate(program, seed, rng_seeds[0], max_batch=1))
    reference = runs[0]
    for other in runs[1:]:
        assert other.result == reference.result
        assert set(other.executed) == set(reference.executed)


@FAST
@given(program_st, st.integers(0, 1000))
def test_interpreter_matches_a_direct_evaluation(program: tuple[Any, ...], seed: int) -> None:
    """The simulator answers calls as the activities would: the engine's output equals
    running the program with plain function calls (a check on the harness itself)."""
    run = simulate(program, seed, 7)
    assert run.result == direct(program, seed)


def direct(program: tuple[Any, ...], seed: int) -> tuple[str, Any]:
    acc, trace, uuids = seed, [], 0
    occurrences: dict[tuple[int, int], int] = {}
    try:
        for step in program:
            kind = step[0]
            if kind == "call":
                acc = SIMPLE[step[1]].fn(acc, step[2])
            elif kind == "same":
                acc = (acc + _square(step[1])) % 1009
            elif kind == "fan":
                _, m, k, dup = step
                values = [_add(acc, k if dup else k + j) for j in range(m)]
                trace.append(("fan", values))
                acc = (acc + sum(values)) % 1009
            elif kind == "any":
                acc = _hedge(acc, 0)
            elif kind in ("risky", "fan_risky"):
                if kind == "risky":
                    args = [(acc, step[1])]
                    catch, fallback = step[2], step[3]
                else:
                    args = [(acc + j, j == step[2]) for j in range(step[1])]
                    catch, fallback = step[3], step[4]
                try:
                    values = [_risky(*a) for a in args]
                    acc = values[0] if kind == "risky" else sum(values) % 1009
                except ValueError as exc:
                    if not catch:
                        raise
                    trace.append(("caught", str(exc)))
                    acc = fallback
            elif kind == "retry":
                _, fails, catch = step
                attempt = 0
                while True:
                    try:
                        acc = _risky(acc + attempt, attempt < fails)
                        break
                    except ValueError:
                        attempt += 1
                        if not catch:
                            raise
                trace.append(("attempts", attempt))
            elif kind == "flaky":
                _, fails, cap = step
                for attempt in range(cap):
                    occurrence = occurrences.get((acc, fails), 0)
                    occurrences[(acc, fails)] = occurrence + 1
                    if occurrence >= fails:
                        acc = _flaky(acc, fails)
                        break
                    if attempt == cap - 1:
                        x = acc
                        raise ConnectionError(f"flaky({x}) attempt {occurrence} failed")
                trace.append(("flaky", attempt))
            elif kind == "timer":
                trace.append("tick")
            elif kind == "uuid":
                uuids += 1
                trace.append(_uuid(uuids))
            trace.append(acc)
    except (ValueError, ConnectionError) as exc:
        return "failed", (type(exc).__name__, str(exc))
    return "completed", (acc, trace)


def _uuid(n: int) -> str:
    return str(uuid.uuid5(_UUID_NAMESPACE, f"{INSTANCE}/{n}"))


# ----------------------------------------------------------------- races (task_any)


def races(run: Run) -> list[tuple[list[str], str]]:
    status, output = run.result
    assert status == "completed"
    return [
        (item[1], item[2]) for item in output[1] if isinstance(item, tuple) and item[0] == "race"
    ]


@settings(FAST, max_examples=SLOW)
@given(race_program_st, st.integers(0, 1000), st.integers(0, 2**32), st.data())
def test_resume_keeps_every_race_winner_recorded_before_the_cut(
    program: tuple[Any, ...], seed: int, rng_seed: int, data: Any
) -> None:
    """A race whose winner made it into history before a crash is won by the same child
    on resume, however many losers were recorded after it. A race with no recorded
    child was never seen by the orchestrator, so running it again live is legitimate."""
    full = simulate(program, seed, rng_seed)
    for p in cut_points(len(full.history), data):
        prefix = full.history[:p]
        done = completed_keys(prefix)
        for children, winner in races(full):
            if any(k in done for k in children):  # history records the winner first
                assert winner in done, f"cut after {p}: a loser was recorded before {winner}"
        resumed = simulate(program, seed, rng_seed + p + 1, prefix, run=2)
        if all(w in done for _, w in races(full)):
            assert resumed.result == full.result, f"cut after {p} events"
        if resumed.result == full.result:
            assert set(resumed.executed) == set(full.executed) - done


@settings(FAST)
@given(race_program_st, st.integers(0, 1000), st.integers(0, 2**32))
def test_full_replay_keeps_every_race_winner(
    program: tuple[Any, ...], seed: int, rng_seed: int
) -> None:
    full = simulate(program, seed, rng_seed)
    eng = new_engine(
        interpreter, {"program": program, "seed": seed}, name=NAME, instance_id=INSTANCE
    )
    eng.load(full.history)
    eng.start(history.ExecutionStarted(T0 + 50_000, NAME, 2))
    assert Run(eng, full.history).result == full.result


def test_task_any_winner_replays_when_a_loser_finished_in_the_same_batch() -> None:
    program = (("race", 2),)
    eng = new_engine(interpreter, {"program": program, "seed": 5}, name=NAME, instance_id=INSTANCE)
    hist: list[history.Event] = [history.ExecutionStarted(T0, NAME, 1)]
    first, second = eng.start(hist[0]).scheduled
    # the runtime hands over every outcome that arrived, in arrival order: second first
    batch = [
        history.TaskCompleted(T0 + 1, second.key, "mul", _mul(*second.args), 1),
        history.TaskCompleted(T0 + 2, first.key, "mul", _mul(*first.args), 1),
    ]
    hist += batch
    eng.apply(batch)
    assert eng.output == (_mul(5, 3), [("race", [first.key, second.key], second.key), 16])
    replay = new_engine(
        interpreter, {"program": program, "seed": 5}, name=NAME, instance_id=INSTANCE
    )
    replay.load(hist)
    replay.start(history.ExecutionStarted(T0 + 100, NAME, 2))
    assert replay.output == eng.output  # the winner is the first completion in history
