"""Executors (threads, processes, a real Dask LocalCluster), concurrency limits and
large results, through the runtime on a real diskcache folder."""

from __future__ import annotations

import os
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import durable_nb as dn
from durable_nb import history
from durable_nb.executors import ProcessExecutor, local_cluster
from durable_nb.runtime import Runtime
from durable_nb.store import DiskCacheStore, LargeValueFile


def overlap(log: Path) -> int:
    """The most calls that ran at once, from 'start t' / 'end t' lines of any process."""
    marks = []
    for line in log.read_text().splitlines():
        kind, stamp = line.split()
        marks.append((float(stamp), 1 if kind == "start" else -1))
    running = peak = 0
    for _, delta in sorted(marks, key=lambda m: (m[0], m[1])):
        running += delta
        peak = max(peak, running)
    return peak


def make_workflow(log: Path, sleep: float = 0.0) -> Any:
    """An activity function defined here, as a notebook cell would define it: the
    process pool and Dask receive it by value (cloudpickle). It logs its start and end."""

    def square(i: int) -> int:
        with open(log, "a") as f:
            f.write(f"start {time.time()}\n")
        time.sleep(sleep)
        with open(log, "a") as f:
            f.write(f"end {time.time()}\n")
        return i * i

    return square


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    client = local_cluster(n_workers=2, threads_per_worker=1)
    try:
        yield client
    finally:
        client.close()
        client.cluster.close()


def runtime_on(kind: str, store_dir: Path, request: pytest.FixtureRequest) -> Runtime:
    """A fresh process-wide runtime whose default executor is ``kind`` (Dask: the
    module's LocalCluster)."""
    executor: Any = request.getfixturevalue("dask_client") if kind == "dask" else kind
    return dn.runtime._reset_for_tests(
        lambda: Runtime(store=DiskCacheStore(store_dir), progress="none", executor=executor)
    )


@pytest.mark.parametrize("kind", ["threads", "processes", "dask"])
def test_results_failures_and_retries_are_the_same_on_every_executor(
    kind: str, tmp_path: Path, store_dir: Path, request: pytest.FixtureRequest
) -> None:
    runtime = runtime_on(kind, store_dir, request)
    calls, broken = tmp_path / "calls.txt", tmp_path / "broken"
    broken.touch()

    def square(i: int) -> int:  # runs in a thread, a worker process or a Dask worker
        with open(calls, "a") as f:
            f.write(f"{i}\n")
        if i == 3 and os.path.exists(broken):
            raise ValueError(f"bad input {i}")
        return i * i

    work = dn.activity(retries=1, backoff=0.01)(square)

    @dn.orchestrator
    def fan(ctx, n):  # type: ignore[no-untyped-def]
        values = yield ctx.task_all([ctx.call_activity(work, i) for i in range(n)])
        return sum(values)

    with pytest.raises(ValueError, match="bad input 3") as info:
        fan.run(8)
    assert info.value.durable_attempts == 2  # type: ignore[attr-defined]
    time.sleep(0.5)  # calls in flight at the failure finish, and are kept
    first = calls.read_text().splitlines()
    broken.unlink()
    assert fan.run(8) == sum(i * i for i in range(8))
    rerun = calls.read_text().splitlines()[len(first) :]
    # the failed call runs again; calls that succeeded never do
    assert "3" in rerun and not set(rerun) & {line for line in first if line != "3"}
    runtime.close()


@pytest.mark.parametrize("kind", ["processes", "dask"])
def test_a_result_that_cannot_travel_back_is_a_clear_failure_without_retries(
    kind: str, tmp_path: Path, store_dir: Path, request: pytest.FixtureRequest
) -> None:
    runtime = runtime_on(kind, store_dir, request)
    attempts = tmp_path / "attempts.txt"

    def opens_a_lock() -> Any:
        import threading

        with open(attempts, "a") as f:
            f.write("attempt\n")
        return threading.Lock()

    work = dn.activity(retries=3, backoff=0.01)(opens_a_lock)

    @dn.orchestrator
    def orch(ctx):  # type: ignore[no-untyped-def]
        return (yield ctx.call_activity(work))

    with pytest.raises(dn.ResultNotStorableError) as info:
        orch.run()
    message = str(info.value)
    for part in ("'opens_a_lock'", "a lock", "cannot be sent back", "return plain data"):
        assert part in message, message
    assert info.value.durable_instance.startswith("orch-")  # type: ignore[attr-defined]
    assert attempts.read_text().splitlines() == ["attempt"]  # retrying cannot help
    runtime.close()


@pytest.mark.parametrize("kind", ["threads", "processes", "dask"])
def test_activity_keywords_never_clash_with_the_executors_own(
    kind: str, store_dir: Path, request: pytest.FixtureRequest
) -> None:
    """Dask's submit takes key=, pure=, priority=...; an activity may use those names."""
    runtime = runtime_on(kind, store_dir, request)

    def label(fn: str, *, key: str, pure: bool, priority: int) -> str:
        return f"{fn}:{key}:{pure}:{priority}"

    work = dn.activity(label)

    @dn.orchestrator
    def orch(ctx):  # type: ignore[no-untyped-def]
        return (yield ctx.call_activity(work, "f", key="k", pure=True, priority=7))

    assert orch.run() == "f:k:True:7"
    runtime.close()


def test_process_executor_runs_cell_defined_functions_and_returns_arrays(
    rt: Runtime, tmp_path: Path
) -> None:
    rt.configure(executor="processes")

    def pid_and_array(n: int) -> tuple[int, Any]:
        return os.getpid(), np.arange(n)

    work = dn.activity(pid_and_array)

    @dn.orchestrator
    def orch(ctx):  # type: ignore[no-untyped-def]
        return (yield ctx.task_all([ctx.call_activity(work, n) for n in (3, 4)]))

    (pid_a, a), (pid_b, b) = orch.run()
    assert pid_a != os.getpid() and pid_b != os.getpid()
    assert a.tolist() == [0, 1, 2] and b.tolist() == [0, 1, 2, 3]
    assert isinstance(rt.resources.executor_named("default"), ProcessExecutor)


def test_per_activity_executor_by_name(rt: Runtime) -> None:
    rt.configure(executors={"procs": "processes"})

    @dn.activity(executor="procs")
    def where() -> int:
        return os.getpid()

    @dn.activity
    def here() -> int:
        return os.getpid()

    @dn.orchestrator
    def orch(ctx):  # type: ignore[no-untyped-def]
        return (yield ctx.task_all([ctx.call_activity(where), ctx.call_activity(here)]))

    there, local = orch.run()
    assert there != os.getpid() and local == os.getpid()

    @dn.activity(executor="nowhere")
    def lost() -> None:
        return None

    @dn.orchestrator
    def orch2(ctx):  # type: ignore[no-untyped-def]
        yield ctx.call_activity(lost)

    with pytest.raises(dn.DurableNbError, match="no executor named 'nowhere'"):
        orch2.run()


def test_concurrency_limit_holds_on_dask(store_dir: Path, tmp_path: Path, dask_client: Any) -> None:
    runtime = dn.runtime._reset_for_tests(
        lambda: Runtime(store=DiskCacheStore(store_dir), progress="none", executor=dask_client)
    )
    log = tmp_path / "log.txt"
    limited = dn.activity(concurrency=1)(make_workflow(log, sleep=0.1))

    @dn.orchestrator
    def fan(ctx):  # type: ignore[no-untyped-def]
        return sum((yield ctx.task_all([ctx.call_activity(limited, i) for i in range(6)])))

    assert fan.run() == sum(i * i for i in range(6))
    assert overlap(log) == 1  # two Dask workers, never two calls at once
    runtime.close()


def test_global_max_in_flight_limits_every_activity_together(rt: Runtime, tmp_path: Path) -> None:
    rt.configure(max_in_flight=2)
    log = tmp_path / "log.txt"
    first = dn.activity(concurrency=5)(make_workflow(log, sleep=0.05))
    second_fn = make_workflow(log, sleep=0.05)
    second_fn.__name__ = "second"
    second = dn.activity(second_fn)

    @dn.orchestrator
    def fan(ctx):  # type: ignore[no-untyped-def]
        calls = [ctx.call_activity(first, i) for i in range(6)]
        calls += [ctx.call_activity(second, i) for i in range(6)]
        return sum((yield ctx.task_all(calls)))

    assert fan.run() == 2 * sum(i * i for i in range(6))
    assert overlap(log) == 2


def test_a_large_result_is_checkpointed_without_a_second_copy_and_replayed_lazily(
    rt: Runtime,
) -> None:
    size = 50_000_000  # 50 MB
    loads: list[int] = []

    @dn.activity
    def big() -> Any:
        return np.ones(size, dtype=np.uint8)

    @dn.activity
    def small() -> int:
        return 1

    @dn.orchestrator
    def orch(ctx, want_big):  # type: ignore[no-untyped-def]
        array = yield ctx.call_activity(big)
        total = int(array.sum()) if want_big else 0
        return total + (yield ctx.call_activity(small))

    tracemalloc.start()
    try:
        assert orch.run(True) == size + 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * size  # the array once, not the array plus its pickle

    events = rt.store.read_history(orch.instance_id_for(True))
    (done,) = [e for e in events if isinstance(e, history.TaskCompleted) and e.activity == "big"]
    assert isinstance(done.result, LargeValueFile)  # stored on its own, not in the chunk
    original = LargeValueFile.load

    def counting_load(self: LargeValueFile) -> Any:
        loads.append(1)
        return original(self)

    # A completed instance is final (its output is returned without a replay): mark it
    # interrupted, as a kill mid-run leaves it, so the rerun replays its history.
    record = rt.store.get_instance(orch.instance_id_for(True))
    assert record is not None
    record.status = "interrupted"
    rt.store.put_instance(record)
    LargeValueFile.load = counting_load  # type: ignore[method-assign]
    try:
        assert orch.run(True) == size + 1
    finally:
        LargeValueFile.load = original  # type: ignore[method-assign]
    assert len(loads) == 1
    assert rt.store.purge(orch.instance_id_for(True))


@pytest.mark.parametrize("kind", ["processes", "dask"])
def test_an_interrupt_keeps_what_runs_and_drops_what_has_not_started(
    kind: str, tmp_path: Path, store_dir: Path, request: pytest.FixtureRequest
) -> None:
    import asyncio

    executor: Any = ProcessExecutor(max_workers=2) if kind == "processes" else None
    if kind == "dask":
        executor = request.getfixturevalue("dask_client")
    runtime = dn.runtime._reset_for_tests(
        lambda: Runtime(store=DiskCacheStore(store_dir), progress="none", executor=executor)
    )
    calls = tmp_path / "calls.txt"

    def slow(i: int) -> int:
        with open(calls, "a") as f:
            f.write(f"{i}\n")
        # Long enough that a loaded machine still interrupts before this first wave ends
        # (0.6 s was not: the next wave started and the count of started calls grew).
        time.sleep(1.5)
        return i

    work = dn.activity(slow)

    @dn.orchestrator
    def fan(ctx):  # type: ignore[no-untyped-def]
        return sum((yield ctx.task_all([ctx.call_activity(work, i) for i in range(8)])))

    async def interrupted() -> None:
        task = asyncio.ensure_future(fan())
        while not calls.exists() or len(calls.read_text().splitlines()) < 2:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(interrupted())

    def kept() -> list[str]:
        events = runtime.store.read_history(fan.instance_id_for())
        return sorted(str(e.result) for e in events if isinstance(e, history.TaskCompleted))

    # The calls that were running (or already handed to a worker) finish and are kept.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        time.sleep(0.25)
        started = sorted(calls.read_text().splitlines())
        if kept() == started:
            break
    time.sleep(0.5)  # nothing else starts late
    started = sorted(calls.read_text().splitlines())
    if kind == "processes":
        # the pool hands one call beyond its two workers to its queue ahead of time
        assert len(started) <= 3  # the other waiting calls were dropped
    assert len(started) < 8
    assert kept() == started
    assert fan.run() == sum(range(8))
    assert len(calls.read_text().splitlines()) == 8  # nothing ran twice
    runtime.close()
