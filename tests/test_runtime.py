"""The runtime on a real diskcache folder and real threads; side effects counted in files."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import durable_nb as dn
from durable_nb import history
from durable_nb.runtime import Runtime
from durable_nb.store import DiskCacheStore


class SideEffects:
    """Each activity call appends one line; the lines prove what ran."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def write(self, line: object) -> None:
        with self._lock, self.path.open("a") as f:
            f.write(f"{line}\n")

    def lines(self) -> list[str]:
        return self.path.read_text().splitlines() if self.path.exists() else []

    def counts(self) -> Counter[str]:
        return Counter(self.lines())


@pytest.fixture
def effects(tmp_path: Path) -> SideEffects:
    return SideEffects(tmp_path / "effects.log")


def make_fan(
    effects: SideEffects, fail_on: set[int] | None = None, sleep: float = 0.0
) -> dn.Orchestrator:
    @dn.activity
    def square(i: int) -> int:
        effects.write(i)
        if sleep:
            time.sleep(sleep)
        if fail_on and i in fail_on:
            raise ValueError(f"bad input {i}")
        return i * i

    @dn.orchestrator
    def fan(ctx, n):  # type: ignore[no-untyped-def]
        values = yield ctx.task_all([ctx.call_activity(square, i) for i in range(n)])
        return sum(values)

    return fan


def test_run_then_rerun_replays_everything(rt: Runtime, effects: SideEffects) -> None:
    fan = make_fan(effects)
    assert fan.run(50) == sum(i * i for i in range(50))
    assert len(effects.lines()) == 50
    assert fan.run(50) == sum(i * i for i in range(50))
    assert len(effects.lines()) == 50  # nothing ran again
    record = rt.status(fan.instance_id_for(50))
    assert record is not None and record.runs == 2 and record.counts["cached"] == 50


def test_results_survive_a_new_runtime_on_the_same_folder(
    rt: Runtime, effects: SideEffects, store_dir: Path
) -> None:
    fan = make_fan(effects)
    fan.run(20)
    rt.close()
    dn.runtime._reset_for_tests(lambda: Runtime(store=DiskCacheStore(store_dir), progress="none"))
    assert make_fan(effects).run(20) == sum(i * i for i in range(20))
    assert len(effects.lines()) == 20


def test_fresh_and_explicit_instance_ids(rt: Runtime, effects: SideEffects) -> None:
    fan = make_fan(effects)
    fan.run(5)
    fan.run(5, fresh=True)
    assert len(effects.lines()) == 10
    fan.run(5, instance_id="mine")
    assert len(effects.lines()) == 15
    assert rt.status("mine") is not None


def test_a_result_is_durable_before_the_orchestrator_sees_it(tmp_path: Path) -> None:
    class WatchingStore(DiskCacheStore):
        written: set[str] = set()

        def append(self, instance_id: str, events: Any) -> int:
            number = super().append(instance_id, events)
            for event in events:
                if isinstance(event, history.TaskCompleted):
                    self.written.add(event.result)
            return number

    store = WatchingStore(tmp_path / "s")
    dn.runtime._reset_for_tests(lambda: Runtime(store=store, progress="none"))

    @dn.activity
    def token(i: int) -> str:
        return f"token-{i}"

    @dn.orchestrator
    def check(ctx):  # type: ignore[no-untyped-def]
        seen_durable = []
        for i in range(5):
            value = yield ctx.call_activity(token, i)
            seen_durable.append(value in store.written)
        values = yield ctx.task_all([ctx.call_activity(token, i) for i in range(5, 30)])
        seen_durable += [v in store.written for v in values]
        return seen_durable

    assert check.run() == [True] * 30


def test_store_failure_stops_the_run_clearly_and_a_rerun_resumes(
    tmp_path: Path, effects: SideEffects
) -> None:
    class FailingStore(DiskCacheStore):
        fail_at: int | None = 4
        appends = 0

        def append(self, instance_id: str, events: Any) -> int:
            self.appends += 1
            if self.fail_at is not None and self.appends == self.fail_at:
                raise OSError(28, "No space left on device")
            return super().append(instance_id, events)

    store = FailingStore(tmp_path / "s")
    dn.runtime._reset_for_tests(lambda: Runtime(store=store, progress="none"))

    @dn.activity
    def step(i: int) -> int:
        effects.write(i)
        return i

    @dn.orchestrator
    def steps(ctx):  # type: ignore[no-untyped-def]
        total = 0
        for i in range(6):
            total += yield ctx.call_activity(step, i)
        return total

    with pytest.raises(dn.StoreError) as info:
        steps.run()
    assert "No space left" in str(info.value) and store.location in str(info.value)
    store.fail_at = None
    assert steps.run() == 15
    counts = effects.counts()
    # steps 0-2 were checkpointed before the failing write: they never ran again
    assert [counts[str(i)] for i in range(6)] == [1, 1, 1, 2, 1, 1]


def test_retries_then_success_are_recorded(rt: Runtime, tmp_path: Path) -> None:
    attempts = Counter[int]()

    @dn.activity(retries=2, backoff=0.01)
    def flaky(i: int) -> int:
        attempts[i] += 1
        if attempts[i] < 3:
            raise ConnectionError("try again")
        return i

    @dn.orchestrator
    def orch(ctx):  # type: ignore[no-untyped-def]
        return (yield ctx.call_activity(flaky, 7))

    assert orch.run() == 7
    events = rt.store.read_history(orch.instance_id_for())
    retried = [e for e in events if isinstance(e, history.TaskRetried)]
    assert [e.attempt for e in retried] == [1, 2]
    done = [e for e in events if isinstance(e, history.TaskCompleted)]
    assert done[0].attempts == 3


def test_exhausted_retries_raise_the_original_type_with_context(rt: Runtime) -> None:
    @dn.activity(retries=1, backoff=0.01)
    def always_bad(i: int) -> int:
        raise KeyError(f"no record {i}")

    @dn.orchestrator
    def orch(ctx):  # type: ignore[no-untyped-def]
        return (yield ctx.call_activity(always_bad, 3))

    with pytest.raises(KeyError) as info:
        orch.run()
    error = info.value
    assert error.durable_activity == "always_bad"  # type: ignore[attr-defined]
    assert error.durable_attempts == 2  # type: ignore[attr-defined]
    assert error.durable_instance == orch.instance_id_for()  # type: ignore[attr-defined]
    assert any("after 2 attempts" in note for note in error.__notes__)
    frames = traceback.extract_tb(error.__traceback__)
    assert len(frames) <= 5, frames  # test, Orchestrator.run, run_blocking, orch, always_bad
    # Below the frame that re-raises it, the traceback shows user code only:
    # the orchestrator's yield and the activity's raise, no engine or asyncio frames.
    raised_at = max(i for i, f in enumerate(frames) if "/durable_nb/" in f.filename)
    below = [f.name for f in frames[raised_at + 1 :]]
    assert below == ["orch", "always_bad"]
    record = rt.status(orch.instance_id_for())
    assert (
        record is not None and record.status == "failed" and "no record 3" in (record.error or "")
    )


def test_rerunning_a_failed_instance_retries_only_the_failures(
    rt: Runtime, effects: SideEffects
) -> None:
    broken = {3, 8}
    fan = make_fan(effects, fail_on=broken)
    with pytest.raises(ValueError, match="bad input"):
        fan.run(10)
    time.sleep(0.3)  # calls in flight at the failure finish in their threads
    first = effects.counts()
    broken.clear()
    assert fan.run(10) == sum(i * i for i in range(10))
    total = effects.counts()
    # task_all fails fast: calls not yet started are dropped, calls in flight finish
    # and their results are kept. So a call that succeeded never runs again, the
    # failures run once more, and calls that never started run once.
    for i in range(10):
        expected = 2 if i in (3, 8) and first[str(i)] else 1
        assert total[str(i)] == expected, (i, first, total)


def test_timeout_is_a_clear_timeout_error(rt: Runtime) -> None:
    @dn.activity(timeout=0.1)
    def slow() -> None:
        time.sleep(1)

    @dn.orchestrator
    def orch(ctx):  # type: ignore[no-untyped-def]
        yield ctx.call_activity(slow)

    started = time.monotonic()
    with pytest.raises(dn.ActivityTimeoutError) as info:
        orch.run()
    assert time.monotonic() - started < 0.9
    assert isinstance(info.value, TimeoutError)
    assert "'slow'" in str(info.value) and "0.1 s" in str(info.value)


def test_concurrency_limit_is_respected(rt: Runtime) -> None:
    lock = threading.Lock()
    state = {"now": 0, "max": 0}

    @dn.activity(concurrency=3)
    def limited(i: int) -> int:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.03)
        with lock:
            state["now"] -= 1
        return i

    @dn.orchestrator
    def orch(ctx):  # type: ignore[no-untyped-def]
        return (yield ctx.task_all([ctx.call_activity(limited, i) for i in range(12)]))

    assert orch.run() == list(range(12))
    assert state["max"] == 3


def test_async_activities_run_on_the_loop(rt: Runtime) -> None:
    @dn.activity
    async def fetch(i: int) -> str:
        await asyncio.sleep(0.01)
        return threading.current_thread().name

    @dn.orchestrator
    async def orch(ctx):  # type: ignore[no-untyped-def]
        return await ctx.task_all([ctx.call_activity(fetch, i) for i in range(5)])

    assert orch.run() == [threading.main_thread().name] * 5


def test_start_returns_a_handle_at_once(rt: Runtime, effects: SideEffects) -> None:
    fan = make_fan(effects, sleep=0.05)

    async def main() -> None:
        handle = fan.start(6)
        assert not handle.done()
        with pytest.raises(dn.InstanceNotFinishedError):
            handle.result()
        again = fan.start(6)  # the same live run, not a second one
        assert again._task is handle._task
        assert await handle == sum(i * i for i in range(6))
        assert handle.result() == sum(i * i for i in range(6))
        assert handle.status().status == "completed"

    asyncio.run(main())


def test_running_a_live_instance_again_attaches_to_its_run(
    rt: Runtime, effects: SideEffects
) -> None:
    fan = make_fan(effects, sleep=0.2)
    expected = sum(i * i for i in range(6))

    async def cell() -> None:
        first = asyncio.ensure_future(fan(6))
        await asyncio.sleep(0.05)
        assert len(effects.lines()) > 0 and not first.done()
        assert await fan(6) == expected  # awaited again: the same run, not refused
        assert first.done() and first.result() == expected
        again = asyncio.ensure_future(fan(6, instance_id="again"))
        await asyncio.sleep(0.05)
        handle = fan.start(6, instance_id="again")
        assert fan.run(6, instance_id="again") == expected  # blocking, on the same run
        assert await handle == expected and await again == expected

    asyncio.run(cell())
    assert sorted(effects.counts().items()) == [(str(i), 2) for i in range(6)]  # two ids
    record = rt.status(fan.instance_id_for(6))
    assert record is not None and (record.status, record.runs) == ("completed", 1)


def test_a_live_instance_is_not_started_fresh_or_with_another_input(
    rt: Runtime, effects: SideEffects
) -> None:
    fan = make_fan(effects, sleep=0.2)

    async def cell() -> None:
        first = asyncio.ensure_future(fan(3, instance_id="one"))
        await asyncio.sleep(0.05)
        with pytest.raises(dn.InstanceBusyError, match="fresh=True cannot start it over"):
            await fan(3, instance_id="one", fresh=True)
        with pytest.raises(dn.InstanceBusyError, match="with another input"):
            await fan(4, instance_id="one")
        assert await first == 5

    asyncio.run(cell())
    assert sorted(effects.counts().items()) == [(str(i), 1) for i in range(3)]


def test_start_outside_a_loop_says_what_to_do(rt: Runtime, effects: SideEffects) -> None:
    with pytest.raises(dn.DurableNbError, match=r"run\(\.\.\.\)"):
        make_fan(effects).start(3)


def test_blocking_run_inside_a_running_loop(rt: Runtime, effects: SideEffects) -> None:
    fan = make_fan(effects)

    async def cell() -> int:  # what a kernel cell calling fan.run(...) looks like
        return fan.run(4)  # type: ignore[no-any-return]

    assert asyncio.run(cell()) == 14


def test_interrupt_keeps_checkpoints_and_late_results(rt: Runtime, effects: SideEffects) -> None:
    fan = make_fan(effects, sleep=0.3)
    iid = fan.instance_id_for(40)

    async def interrupted() -> None:
        task = asyncio.ensure_future(fan(40))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(interrupted())
    time.sleep(0.5)  # the threads finish after the interrupt
    # Counted once they are done: a thread that took its call just before the interrupt
    # may write its line a moment after the cancelled run returns (on a busy machine).
    ran = len(effects.lines())
    assert 0 < ran < 40  # 32 threads, each call 0.3 s: the last ones never started
    record = rt.status(iid)
    assert record is not None and record.status == "interrupted"
    kept = [e for e in rt.store.read_history(iid) if isinstance(e, history.TaskCompleted)]
    assert len(kept) == ran  # late results were checkpointed
    assert fan.run(40) == sum(i * i for i in range(40))
    assert max(effects.counts().values()) == 1


def test_unpicklable_result_is_a_clear_failure(rt: Runtime) -> None:
    @dn.activity
    def make_lock() -> object:
        return threading.Lock()

    @dn.orchestrator
    def orch(ctx):  # type: ignore[no-untyped-def]
        return (yield ctx.call_activity(make_lock))

    with pytest.raises(dn.ResultNotStorableError) as info:
        orch.run()
    assert "'make_lock'" in str(info.value) and "lock" in str(info.value)


def test_keyboard_interrupt_inside_an_activity_is_a_failure(rt: Runtime) -> None:
    @dn.activity
    def rude() -> None:
        raise KeyboardInterrupt

    @dn.orchestrator
    def orch(ctx):  # type: ignore[no-untyped-def]
        yield ctx.call_activity(rude)

    with pytest.raises(dn.DurableNbError, match="raised KeyboardInterrupt"):
        orch.run()


def test_an_instance_id_of_another_orchestrator_is_refused(
    rt: Runtime, effects: SideEffects
) -> None:
    make_fan(effects).run(2, instance_id="shared-id")

    @dn.orchestrator
    def other(ctx):  # type: ignore[no-untyped-def]
        yield from ()

    with pytest.raises(dn.DurableNbError, match="belongs to orchestrator 'fan'"):
        other.run(instance_id="shared-id")


def test_custom_status_reaches_the_record(rt: Runtime) -> None:
    @dn.activity
    def noop() -> None:
        return None

    @dn.orchestrator
    def orch(ctx):  # type: ignore[no-untyped-def]
        ctx.set_custom_status({"stage": "fetching"})
        yield ctx.call_activity(noop)
        ctx.set_custom_status({"stage": "done"})

    orch.run()
    record = rt.status(orch.instance_id_for())
    assert record is not None and record.custom_status == {"stage": "done"}


def test_bad_orchestrator_input_is_a_type_error_naming_it(
    rt: Runtime, effects: SideEffects
) -> None:
    with pytest.raises(TypeError, match="orchestrator 'fan' takes"):
        make_fan(effects).run(1, 2, 3)


def test_text_progress_summary(
    tmp_path: Path, effects: SideEffects, capsys: pytest.CaptureFixture[str]
) -> None:
    dn.runtime._reset_for_tests(
        lambda: Runtime(store=DiskCacheStore(tmp_path / "s"), progress="text")
    )
    fan = make_fan(effects)
    fan.run(3)
    fan.run(3)
    err = capsys.readouterr().err
    assert "fan [fan-" in err and "completed" in err
    assert "square: 3/3 (3 ran)" in err and "square: 3/3 (3 cached)" in err


def _run_with_leftover_thread(
    rt: Runtime, effects: SideEffects, end: Callable[[concurrent.futures.Future[int]], None]
) -> int:
    """Run an instance of one call whose thread, left by an earlier run of the instance
    (same history_id, on a loop since closed), ended by ``end`` before its outcome reached
    the history."""

    @dn.activity
    def slow_square(i: int) -> int:
        effects.write(i)
        return i * i

    @dn.orchestrator
    def one(ctx):  # type: ignore[no-untyped-def]
        return (yield ctx.call_activity(slow_square, 7))

    record = dn.InstanceRecord(one.instance_id_for(), "one", created_at=1.0)
    rt.store.put_instance(record)
    digest = dn.fingerprint.arguments_digest("t", (7,), {})
    key = f"slow_square/{slow_square.source_digest[:16]}/{digest}#0"
    thread: concurrent.futures.Future[int] = concurrent.futures.Future()

    async def earlier_run_ends() -> None:
        owner = f"{record.instance_id}@{record.history_id}"
        rt.resources.leftover_threads.keep(owner, key, thread, None)

    loop = asyncio.new_event_loop()  # not asyncio.run: nest_asyncio2's may keep its loop
    loop.run_until_complete(earlier_run_ends())
    loop.close()
    end(thread)  # its loop is closed: the thread stays registered
    assert len(rt.resources.leftover_threads) == 1
    result: int = one.run()
    return result


def test_a_thread_that_ended_after_its_run_is_adopted_not_rerun(
    rt: Runtime, effects: SideEffects
) -> None:
    """A call's thread outlived its interrupted run and is done, but its callback has not
    yet written the late result when the next run loads the history: the next run takes
    the thread's outcome instead of running the call again."""
    assert _run_with_leftover_thread(rt, effects, lambda thread: thread.set_result(49)) == 49
    assert effects.lines() == []  # not run again
    assert len(rt.resources.leftover_threads) == 0


def test_a_thread_that_failed_after_its_run_is_retried_not_adopted(
    rt: Runtime, effects: SideEffects
) -> None:
    """The failure of a call's thread that outlived its run is not taken over: a new run
    retries failures."""

    def fail(thread: concurrent.futures.Future[int]) -> None:
        thread.set_exception(ValueError("flaky upstream"))

    assert _run_with_leftover_thread(rt, effects, fail) == 49
    assert effects.lines() == ["7"]  # run again


def test_a_polling_loop_with_no_timer_warns_once_naming_what_to_do(rt: Runtime) -> None:
    dn.configure(runaway_calls=20)
    polls = 0

    @dn.activity
    def check_status(i: int) -> str:
        nonlocal polls
        polls += 1
        return "running"

    @dn.orchestrator
    def monitor(ctx, n):  # type: ignore[no-untyped-def]
        for i in range(n):  # a missing break: polls on and on with no wait in between
            yield ctx.call_activity(check_status, i)
        return n

    with pytest.warns(dn.RunawayOrchestratorWarning) as caught:
        assert monitor.run(45, instance_id="poller") == 45
    runaway = [w for w in caught if issubclass(w.category, dn.RunawayOrchestratorWarning)]
    assert len(runaway) == 1  # once per run, although 45 calls pass the limit twice
    message = str(runaway[0].message)
    assert "orchestrator 'monitor' (instance poller)" in message
    assert "activity 'check_status' 20 times" in message
    assert "yield ctx.create_timer(" in message and "runaway_calls=" in message
    assert polls == 45


def test_a_fan_out_wider_than_the_runaway_limit_does_not_warn(rt: Runtime) -> None:
    dn.configure(runaway_calls=20)

    @dn.activity
    def square(i: int) -> int:
        return i * i

    @dn.orchestrator
    def fan(ctx, n):  # type: ignore[no-untyped-def]
        return sum((yield ctx.task_all([ctx.call_activity(square, i) for i in range(n)])))

    with warnings.catch_warnings():
        warnings.simplefilter("error", dn.RunawayOrchestratorWarning)
        assert fan.run(45) == sum(i * i for i in range(45))


def test_a_polling_loop_with_a_timer_between_calls_does_not_warn(rt: Runtime) -> None:
    dn.configure(runaway_calls=20)

    @dn.activity
    def check_status(i: int) -> str:
        return "running"

    @dn.orchestrator
    def monitor(ctx, n):  # type: ignore[no-untyped-def]
        for i in range(n):
            yield ctx.call_activity(check_status, i)
            yield ctx.create_timer(0)
        return n

    with warnings.catch_warnings():
        warnings.simplefilter("error", dn.RunawayOrchestratorWarning)
        assert monitor.run(45) == 45
        dn.configure(runaway_calls=0)  # and 0 turns the check off

        @dn.orchestrator
        def tight(ctx, n):  # type: ignore[no-untyped-def]
            for i in range(n):
                yield ctx.call_activity(check_status, i)
            return n

        assert tight.run(45) == 45


@pytest.mark.parametrize("bad", [-1, 2.5, "100", True])
def test_a_bad_runaway_limit_is_refused(rt: Runtime, bad: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="runaway_calls must be"):
        dn.configure(runaway_calls=bad)
    assert rt.runaway_calls == 100_000
