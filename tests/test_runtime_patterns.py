"""Durable Functions patterns through the runtime: real diskcache folder, real threads,
other processes where the pattern involves them."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import durable_nb as dn
from durable_nb import history, management
from durable_nb.runtime import Runtime
from durable_nb.store import DiskCacheStore


def fresh_runtime(store_dir: Path) -> Runtime:
    return dn.runtime._reset_for_tests(
        lambda: Runtime(store=DiskCacheStore(store_dir), progress="none")
    )


# ------------------------------------------------------------------ timers


def test_timer_waits_and_a_restart_waits_only_what_is_left(rt: Runtime, store_dir: Path) -> None:
    fired: list[float] = []

    @dn.activity
    def stamp() -> float:
        fired.append(time.time())
        return fired[-1]

    @dn.orchestrator
    def sleeper(ctx):  # type: ignore[no-untyped-def]
        yield ctx.create_timer(0.6)
        return (yield ctx.call_activity(stamp))

    async def interrupted() -> float:
        task = asyncio.ensure_future(sleeper())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.time()

    first_start = time.time()
    asyncio.run(interrupted())
    created = [
        e
        for e in rt.store.read_history(sleeper.instance_id_for())
        if isinstance(e, history.TimerCreated)
    ]
    assert len(created) == 1 and abs(created[0].fire_at - (first_start + 0.6)) < 0.15
    fresh_runtime(store_dir)  # a new kernel on the same folder
    rerun_start = time.time()
    sleeper.run()
    assert fired and abs(fired[0] - created[0].fire_at) < 0.3  # the original fire time
    assert fired[0] - rerun_start < 0.55  # not a whole new 0.6 s


# ------------------------------------------------------------------ external events


def test_event_raised_before_the_wait_is_kept(rt: Runtime) -> None:
    @dn.activity
    def slow() -> None:
        time.sleep(0.3)

    @dn.orchestrator
    def gate(ctx):  # type: ignore[no-untyped-def]
        yield ctx.call_activity(slow)
        return (yield ctx.wait_for_external_event("go"))

    async def main() -> Any:
        handle = gate.start()
        await asyncio.sleep(0.05)
        handle.raise_event("go", {"x": 1})  # the orchestrator is not waiting yet
        return await handle

    assert asyncio.run(main()) == {"x": 1}


def test_event_from_another_process_reaches_a_running_instance(
    rt: Runtime, store_dir: Path
) -> None:
    seen: list[float] = []

    @dn.activity
    def record(value: Any) -> Any:
        seen.append(time.time())
        return value

    @dn.orchestrator
    def waiter(ctx):  # type: ignore[no-untyped-def]
        value = yield ctx.wait_for_external_event("go")
        return (yield ctx.call_activity(record, value))

    iid = waiter.instance_id_for()

    async def main() -> tuple[Any, float]:
        handle = waiter.start()
        await asyncio.sleep(0.3)
        command = [sys.executable, "-m", "durable_nb.cli", "raise", "--store", str(store_dir)]
        proc = await asyncio.create_subprocess_exec(*command, iid, "go", '{"n": 7}')
        assert await proc.wait() == 0
        # Timed from when the event is in the store: the other process's start-up (over
        # a second on a loaded machine) is not the run's polling.
        raised_at = time.time()
        return await handle, raised_at

    value, raised_at = asyncio.run(main())
    assert value == {"n": 7}
    assert seen[0] - raised_at < 1.5  # polled within about half a second


def test_waiting_runs_read_their_history_again_only_after_another_writer_wrote(
    rt: Runtime, store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that waits looks for what other processes appended twice a second; it asks
    the store first whether anyone else wrote at all (a fan-out of thousands of waiting
    children each read their history twice a second). A child waits here, and the event
    comes through another connection to the store, as from another process."""
    reads: list[str] = []
    read_chunks = rt.store.read_chunks

    def counted(instance_id: str, start: int) -> Any:
        reads.append(instance_id)
        return read_chunks(instance_id, start)

    monkeypatch.setattr(rt.store, "read_chunks", counted)

    @dn.orchestrator
    def waiter(ctx):  # type: ignore[no-untyped-def]
        return (yield ctx.wait_for_external_event("go"))

    @dn.orchestrator
    def parent(ctx):  # type: ignore[no-untyped-def]
        return (yield ctx.call_sub_orchestrator(waiter, instance_id="the-child"))

    async def main() -> tuple[int, Any]:
        handle = parent.start()
        await asyncio.sleep(2.2)  # four polls of each run would be due
        quiet = len(reads)
        other = DiskCacheStore(store_dir)
        try:
            management.raise_event(other, "the-child", "go", 7)
        finally:
            other.close()
        return quiet, await asyncio.wait_for(handle, 10)

    quiet, value = asyncio.run(main())
    assert value == 7
    assert quiet <= 2, reads  # each run's first look, and no more while nobody wrote
    assert "the-child" in reads[quiet:]  # the write was seen, and then read


def test_event_raised_while_nothing_runs_waits_in_the_store(rt: Runtime, store_dir: Path) -> None:
    @dn.orchestrator
    def waiter(ctx):  # type: ignore[no-untyped-def]
        return (yield ctx.wait_for_external_event("go"))

    async def start_and_stop() -> None:
        task = asyncio.ensure_future(waiter())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(start_and_stop())
    rt.close()
    raised = subprocess.run(
        [
            sys.executable,
            "-m",
            "durable_nb.cli",
            "raise",
            "--store",
            str(store_dir),
            waiter.instance_id_for(),
            "go",
            "approved",
        ],
        capture_output=True,
        text=True,
    )
    assert raised.returncode == 0, raised.stderr
    fresh_runtime(store_dir)
    assert waiter.run() == "approved"


def test_event_timeout_is_a_catchable_timeout_error(rt: Runtime) -> None:
    @dn.orchestrator
    def impatient(ctx):  # type: ignore[no-untyped-def]
        try:
            yield ctx.wait_for_external_event("never", timeout=0.2)
        except TimeoutError as exc:
            return f"gave up: {type(exc).__name__}"
        return "got it"

    started = time.time()
    assert impatient.run() == "gave up: EventTimeoutError"
    assert 0.15 < time.time() - started < 1.5


# ------------------------------------------------------------------ sub-orchestrations


def test_sub_orchestrations_run_as_their_own_instances(rt: Runtime, tmp_path: Path) -> None:
    log = tmp_path / "log.txt"

    @dn.activity
    def square(i: int) -> int:
        with log.open("a") as f:
            f.write(f"{i}\n")
        return i * i

    @dn.orchestrator
    def child(ctx, base):  # type: ignore[no-untyped-def]
        values = yield ctx.task_all([ctx.call_activity(square, base + i) for i in range(5)])
        return sum(values)

    @dn.orchestrator
    def parent(ctx):  # type: ignore[no-untyped-def]
        parts = yield ctx.task_all([ctx.call_sub_orchestrator(child, b) for b in (0, 10, 20)])
        return sum(parts)

    expected = sum(i * i for i in list(range(5)) + list(range(10, 15)) + list(range(20, 25)))
    assert parent.run() == expected
    assert parent.run() == expected
    assert len(log.read_text().splitlines()) == 15  # the rerun replayed everything
    children = [r for r in rt.store.list_instances() if r.parent == parent.instance_id_for()]
    assert len(children) == 3 and all(r.status == "completed" for r in children)


def test_sub_orchestration_failure_is_raised_at_the_parent_yield(rt: Runtime) -> None:
    @dn.activity
    def boom() -> None:
        raise KeyError("missing row")

    @dn.orchestrator
    def child(ctx):  # type: ignore[no-untyped-def]
        yield ctx.call_activity(boom)

    @dn.orchestrator
    def parent(ctx):  # type: ignore[no-untyped-def]
        try:
            yield ctx.call_sub_orchestrator(child)
        except KeyError as exc:
            return f"caught {exc}"

    assert parent.run() == "caught 'missing row'"


# ------------------------------------------------------------------ continue_as_new


def test_continue_as_new_keeps_only_the_last_generation(rt: Runtime) -> None:
    @dn.activity
    def check(n: int) -> bool:
        return n >= 3

    @dn.orchestrator
    def monitor(ctx, n):  # type: ignore[no-untyped-def]
        done = yield ctx.call_activity(check, n)
        if done:
            return n
        yield ctx.create_timer(0.05)
        ctx.continue_as_new(n + 1)

    assert monitor.run(0) == 3
    iid = monitor.instance_id_for(0)
    events = rt.store.read_history(iid)
    assert sum(isinstance(e, history.ExecutionStarted) for e in events) == 1
    record = rt.status(iid)
    assert record is not None and record.generation == 3 and record.input == {"n": 3}
    assert monitor.run(0) == 3  # a rerun resumes the latest generation


def test_a_call_still_running_at_continue_as_new_is_not_taken_by_the_next_generation(
    rt: Runtime, tmp_path: Path
) -> None:
    """A race's loser still runs when its generation continues as new. The next
    generation calls it again with the same arguments: that is a new call, so it runs
    again, rather than adopting the old thread or its late result."""
    calls = tmp_path / "calls.txt"

    @dn.activity
    def status(job: str) -> str:
        with open(calls, "a") as f:
            f.write(f"{job}\n")
        time.sleep(0.3)
        return f"status of {job} #{len(calls.read_text().splitlines())}"

    @dn.activity
    def quick() -> str:
        deadline = time.monotonic() + 10
        while not calls.exists() and time.monotonic() < deadline:
            time.sleep(0.005)  # win the race only once the loser has really started
        return "quick"

    @dn.orchestrator
    def watch(ctx, generation):  # type: ignore[no-untyped-def]
        if generation == 0:
            yield ctx.task_any([ctx.call_activity(quick), ctx.call_activity(status, "job")])
            ctx.continue_as_new(1)
        return (yield ctx.call_activity(status, "job"))

    assert watch.run(0) == "status of job #2"
    time.sleep(0.5)  # the first generation's call has finished by now
    assert calls.read_text().splitlines() == ["job", "job"]
    iid = watch.instance_id_for(0)
    completions = [e for e in rt.store.read_history(iid) if isinstance(e, history.TaskCompleted)]
    assert [e.result for e in completions] == ["status of job #2"]  # no late result added


# ------------------------------------------------------------------ leases


def test_a_live_owner_refuses_a_second_runner_and_a_dead_one_is_taken_over(
    rt: Runtime,
) -> None:
    @dn.orchestrator
    def single(ctx):  # type: ignore[no-untyped-def]
        yield ctx.create_timer(0.01)
        return "ran"

    iid = single.instance_id_for()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        now = time.time()
        lease = {
            "owner": f"{socket.gethostname()}:{holder.pid}:x",
            "pid": holder.pid,
            "host": socket.gethostname(),
            "since": now,
            "heartbeat": now,
        }
        assert rt.store.swap_lease(iid, None, lease)
        with pytest.raises(dn.InstanceBusyError) as info:
            single.run()
        assert f"pid {holder.pid}" in str(info.value) and socket.gethostname() in str(info.value)
    finally:
        holder.kill()
        holder.wait()
    assert single.run() == "ran"  # the dead owner's lease was taken over
    assert rt.store.get_lease(iid) is None  # and released at the end


def test_a_silent_owner_on_another_host_is_taken_over(rt: Runtime) -> None:
    @dn.orchestrator
    def single(ctx):  # type: ignore[no-untyped-def]
        yield ctx.create_timer(0.01)
        return "ran"

    iid = single.instance_id_for()
    stale = {"owner": "elsewhere:1:y", "pid": 1, "host": "elsewhere", "since": 0, "heartbeat": 0}
    assert rt.store.swap_lease(iid, None, stale)
    assert single.run() == "ran"


# ------------------------------------------------------------------ management


def test_suspend_holds_new_work_and_resume_lets_it_go(rt: Runtime, tmp_path: Path) -> None:
    log = tmp_path / "log.txt"

    @dn.activity
    def step(i: int) -> int:
        with log.open("a") as f:
            f.write(f"{i}\n")
        time.sleep(0.1)
        return i

    @dn.orchestrator
    def chain(ctx):  # type: ignore[no-untyped-def]
        total = 0
        for i in range(6):
            total += yield ctx.call_activity(step, i)
        return total

    async def main() -> Any:
        handle = chain.start()
        await asyncio.sleep(0.15)
        handle.suspend()
        await asyncio.sleep(0.1)
        assert handle.status().status == "suspended"
        lines = len(log.read_text().splitlines())
        await asyncio.sleep(0.5)
        assert len(log.read_text().splitlines()) == lines  # nothing new started
        handle.resume()
        return await handle

    assert asyncio.run(main()) == 15


def test_an_event_raised_while_suspended_waits_for_the_resume(rt: Runtime) -> None:
    @dn.orchestrator
    def waiter(ctx):  # type: ignore[no-untyped-def]
        return (yield ctx.wait_for_external_event("go"))

    async def main() -> Any:
        handle = waiter.start()
        await asyncio.sleep(0.2)
        handle.suspend()
        await asyncio.sleep(0.1)
        handle.raise_event("go", {"n": 3})
        await asyncio.sleep(0.8)  # more than a poll
        assert not handle.done()
        assert handle.status().status == "suspended"
        raised = [
            e
            for e in rt.store.read_history(handle.instance_id)
            if isinstance(e, history.EventRaised)
        ]
        assert len(raised) == 1  # durable at once, applied only after the resume
        handle.resume()
        return await asyncio.wait_for(handle, 5)

    assert asyncio.run(main()) == {"n": 3}


def test_an_activity_finishing_while_suspended_does_not_advance_the_orchestrator(
    rt: Runtime, tmp_path: Path
) -> None:
    log = tmp_path / "log.txt"

    @dn.activity
    def first() -> int:
        time.sleep(0.3)
        return 1

    @dn.activity
    def second(x: int) -> int:
        with log.open("a") as f:
            f.write("second\n")
        return x + 1

    @dn.orchestrator
    def chain(ctx):  # type: ignore[no-untyped-def]
        x = yield ctx.call_activity(first)
        ctx.set_custom_status("after first")
        return (yield ctx.call_activity(second, x))

    async def main() -> Any:
        handle = chain.start()
        await asyncio.sleep(0.1)
        handle.suspend()  # while first() runs
        await asyncio.sleep(0.8)  # first() has finished meanwhile
        completed = [
            e
            for e in rt.store.read_history(handle.instance_id)
            if isinstance(e, history.TaskCompleted)
        ]
        assert len(completed) == 1  # its result is durable...
        assert not log.exists()  # ...but the orchestrator did not go on
        status = handle.status()
        assert status.status == "suspended" and status.custom_status is None
        handle.resume()
        return await asyncio.wait_for(handle, 5)

    assert asyncio.run(main()) == 2
    assert log.read_text().splitlines() == ["second"]


def test_a_timer_firing_while_suspended_waits_for_the_resume(rt: Runtime) -> None:
    ran: list[float] = []

    @dn.activity
    def after() -> int:
        ran.append(time.time())
        return 7

    @dn.orchestrator
    def sleeper(ctx):  # type: ignore[no-untyped-def]
        yield ctx.create_timer(0.3)
        ctx.set_custom_status("woke")
        return (yield ctx.call_activity(after))

    async def main() -> Any:
        handle = sleeper.start()
        await asyncio.sleep(0.1)
        handle.suspend()
        await asyncio.sleep(0.7)  # the timer fired meanwhile
        status = handle.status()
        assert not ran and status.status == "suspended" and status.custom_status is None
        assert any(
            isinstance(e, history.TimerFired) for e in rt.store.read_history(handle.instance_id)
        )
        handle.resume()
        return await asyncio.wait_for(handle, 5)

    assert asyncio.run(main()) == 7
    assert len(ran) == 1


def test_terminate_while_suspended_ends_it_without_going_on(rt: Runtime) -> None:
    went_on: list[Any] = []

    @dn.orchestrator
    def waiter(ctx):  # type: ignore[no-untyped-def]
        value = yield ctx.wait_for_external_event("go")
        went_on.append(value)
        return value

    async def main() -> None:
        handle = waiter.start()
        await asyncio.sleep(0.2)
        handle.suspend()
        handle.raise_event("go", 1)
        await asyncio.sleep(0.3)
        handle.terminate("enough")
        with pytest.raises(dn.InstanceTerminatedError, match="terminated: enough"):
            await asyncio.wait_for(handle, 5)

    asyncio.run(main())
    assert went_on == []


def test_a_run_of_a_suspended_instance_waits_for_the_resume(rt: Runtime, store_dir: Path) -> None:
    @dn.orchestrator
    def waiter(ctx):  # type: ignore[no-untyped-def]
        ctx.set_custom_status("started")
        return (yield ctx.wait_for_external_event("go"))

    async def interrupted() -> None:
        task = asyncio.ensure_future(waiter())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(interrupted())
    iid = waiter.instance_id_for()
    runtime = fresh_runtime(store_dir)
    runtime.request(iid, "suspend")
    runtime.raise_event(iid, "go", 5)  # in history after the suspend

    async def main() -> Any:
        handle = waiter.start()
        await asyncio.sleep(0.8)
        assert not handle.done()
        assert handle.status().status == "suspended"
        handle.resume()
        return await asyncio.wait_for(handle, 5)

    assert asyncio.run(main()) == 5


def test_terminate_stops_at_the_next_yield(rt: Runtime) -> None:
    finished: list[str] = []

    @dn.orchestrator
    def waiter(ctx):  # type: ignore[no-untyped-def]
        try:
            yield ctx.wait_for_external_event("never")
        finally:
            finished.append("cleanup ran")

    async def main() -> None:
        handle = waiter.start()
        await asyncio.sleep(0.2)
        handle.terminate("enough")
        with pytest.raises(dn.InstanceTerminatedError, match="terminated: enough"):
            await handle

    asyncio.run(main())
    assert finished == ["cleanup ran"]
    record = rt.status(waiter.instance_id_for())
    assert record is not None and record.status == "terminated"


def test_retry_timing_follows_the_policy(rt: Runtime) -> None:
    attempts: list[float] = []

    @dn.activity(retries=3, backoff=0.1, backoff_coefficient=2.0)
    def flaky() -> str:
        attempts.append(time.monotonic())
        if len(attempts) < 4:
            raise ConnectionError("again")
        return "ok"

    @dn.orchestrator
    def orch(ctx):  # type: ignore[no-untyped-def]
        return (yield ctx.call_activity(flaky))

    assert orch.run() == "ok"
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    for gap, expected in zip(gaps, (0.1, 0.2, 0.4), strict=True):
        assert expected - 0.02 < gap < expected + 0.25, gaps


def test_never_retried_exceptions_fail_at_once(rt: Runtime) -> None:
    attempts: list[int] = []

    @dn.activity(retries=5, backoff=0.01, no_retry_on=(ValueError,))
    def picky() -> None:
        attempts.append(1)
        raise ValueError("bad input is not transient")

    @dn.orchestrator
    def orch(ctx):  # type: ignore[no-untyped-def]
        yield ctx.call_activity(picky)

    with pytest.raises(ValueError):
        orch.run()
    assert len(attempts) == 1


def test_cli_list_filters_purge_and_rewind(rt: Runtime, store_dir: Path) -> None:
    @dn.activity
    def maybe(fail: bool) -> str:
        if fail:
            raise RuntimeError("failed on purpose")
        return "fine"

    @dn.orchestrator
    def job(ctx, fail):  # type: ignore[no-untyped-def]
        return (yield ctx.call_activity(maybe, fail))

    job.run(False)
    with pytest.raises(RuntimeError):
        job.run(True)
    rt.close()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "durable_nb.cli", *args, "--store", str(store_dir)],
            capture_output=True,
            text=True,
        )

    failed = cli("list", "--status", "failed")
    assert failed.returncode == 0 and job.instance_id_for(True) in failed.stdout
    assert job.instance_id_for(False) not in failed.stdout
    assert "2" not in cli("list", "--newer-than", "1h").stdout.split("runs")[0]
    rewound = cli("rewind", job.instance_id_for(True))
    assert rewound.returncode == 0 and "pending again" in rewound.stdout
    purged = cli("purge", "--status", "completed")
    assert purged.returncode == 0 and "purged 1" in purged.stdout
    bad = cli("list", "--older-than", "soon")
    assert bad.returncode == 2 and "15m" in bad.stderr
    store = DiskCacheStore(store_dir)
    assert [r.status for r in store.list_instances()] == ["pending"]
    store.close()
    assert os.path.isdir(store_dir)


def test_status_and_raise_work_in_the_same_cell_as_start(rt: Runtime) -> None:
    @dn.orchestrator
    def gate(ctx, who):  # type: ignore[no-untyped-def]
        return (yield ctx.wait_for_external_event("go"))

    async def cell() -> Any:
        handle = gate.start("me", fresh=True)
        assert handle.status().status == "pending"  # no await between start and status
        handle.raise_event("go", 42)
        return await handle

    assert asyncio.run(cell()) == 42


def test_continue_as_new_keeps_one_live_view(rt: Runtime) -> None:
    from durable_nb.progress import Progress

    finishes: list[str] = []
    original = Progress.finish

    def spy(self: Progress, status: str, message: str = "") -> None:
        finishes.append(status)
        original(self, status, message)

    @dn.orchestrator
    def rounds(ctx, n):  # type: ignore[no-untyped-def]
        yield ctx.create_timer(0.01)
        if n < 3:
            ctx.continue_as_new(n + 1)
        return n

    Progress.finish = spy  # type: ignore[method-assign]
    try:
        assert rounds.run(0) == 3
    finally:
        Progress.finish = original  # type: ignore[method-assign]
    assert finishes == ["completed"]  # one summary, not one per round
