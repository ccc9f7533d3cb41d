"""The dispatcher's window: at most a few attempts per worker are submitted to an
executor at once; the others wait in the dispatcher, in order (real threads)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import durable_nb as dn
from durable_nb import history
from durable_nb.dispatch import Dispatcher
from durable_nb.engine import ActivityCall
from durable_nb.executors import WINDOW_PER_WORKER, submit_window
from durable_nb.progress import Progress
from durable_nb.resources import Resources

WORKERS = 2
WINDOW = WINDOW_PER_WORKER * WORKERS


class CountingPool(concurrent.futures.ThreadPoolExecutor):
    """A thread pool that knows how many of its calls are submitted and not done."""

    def __init__(self) -> None:
        super().__init__(WORKERS)
        self.lock = threading.Lock()
        self.outstanding = 0
        self.most = 0
        self.submitted = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        with self.lock:
            self.outstanding += 1
            self.submitted += 1
            self.most = max(self.most, self.outstanding)
        future = super().submit(fn, *args, **kwargs)
        future.add_done_callback(self._done)
        return future

    def _done(self, _: concurrent.futures.Future[Any]) -> None:
        with self.lock:
            self.outstanding -= 1


@pytest.fixture
def pool() -> Iterator[CountingPool]:
    executor = CountingPool()
    yield executor
    executor.shutdown(wait=True, cancel_futures=True)


def _run(
    pool: CountingPool,
    scenario: Any,
    max_in_flight: int | None = None,
    write_outcomes: bool = True,
) -> Any:
    """Run ``scenario(dispatcher, outcomes, done)`` on a new loop with a dispatcher on
    ``pool``; ``done`` is set once ``expect`` outcomes were posted."""
    resources = Resources(max_workers=WORKERS)
    resources.set_executor(pool)
    resources.max_in_flight = max_in_flight
    loop = asyncio.new_event_loop()

    async def main() -> Any:
        outcomes: list[history.Event] = []

        def post(event: history.Event) -> None:  # as a run does: written at its next turn
            outcomes.append(event)
            if write_outcomes:
                loop.call_soon(dispatcher.written)

        dispatcher = Dispatcher(
            resources=resources,
            progress=Progress("orch", "inst"),
            instance_id="inst",
            history_id="h",
            post=post,
            note=lambda event: None,
            keep_late=lambda event: None,
        )
        return await scenario(dispatcher, outcomes)

    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


async def _until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.002)


def test_the_window_is_a_few_attempts_per_worker() -> None:
    threads = concurrent.futures.ThreadPoolExecutor(3)
    try:
        assert submit_window(threads) == 3 * WINDOW_PER_WORKER
    finally:
        threads.shutdown()
    assert submit_window(object()) > 0  # an executor that does not say: a fixed window


def test_a_fan_out_keeps_at_most_the_window_submitted_and_starts_calls_in_order(
    pool: CountingPool,
) -> None:
    started: list[int] = []

    @dn.activity
    def work(i: int) -> int:
        started.append(i)
        time.sleep(0.001)
        return i

    async def scenario(dispatcher: Dispatcher, outcomes: list[history.Event]) -> None:
        for i in range(200):
            dispatcher.start(ActivityCall(f"k{i}", work, (i,), {}, i))
        assert pool.submitted == WINDOW  # the rest wait in the dispatcher
        await _until(lambda: len(outcomes) == 200)

    _run(pool, scenario)
    assert pool.most <= WINDOW and pool.submitted == 200
    # FIFO: a call starts no later than WORKERS places after its turn.
    assert all(abs(started.index(i) - i) <= WINDOW for i in range(200))


def test_the_window_composes_with_concurrency_limits_and_retries(pool: CountingPool) -> None:
    running = [0]
    most = [0]
    tries: dict[int, int] = {}
    lock = threading.Lock()

    @dn.activity(concurrency=3, retries=2, backoff=0.001)
    def flaky(i: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            tries[i] = tries.get(i, 0) + 1
        time.sleep(0.001)
        with lock:
            running[0] -= 1
        if i % 5 == 0 and tries[i] == 1:
            raise ValueError("first try fails")
        return i

    async def scenario(dispatcher: Dispatcher, outcomes: list[history.Event]) -> None:
        for i in range(60):
            dispatcher.start(ActivityCall(f"k{i}", flaky, (i,), {}, i))
        await _until(lambda: len(outcomes) == 60)
        return None

    _run(pool, scenario, max_in_flight=5)
    assert most[0] <= 3 and pool.most <= 3
    assert sum(tries.values()) == 60 + 12  # every fifth call tried twice


def test_stop_never_starts_calls_waiting_for_the_window_and_frees_their_slots(
    pool: CountingPool,
) -> None:
    gate = threading.Event()
    started: list[int] = []

    @dn.activity(concurrency=100)
    def gated(i: int) -> int:
        started.append(i)
        gate.wait(10)
        return i

    async def scenario(dispatcher: Dispatcher, outcomes: list[history.Event]) -> Any:
        for i in range(50):
            dispatcher.start(ActivityCall(f"k{i}", gated, (i,), {}, i))
        await _until(lambda: len(started) == WORKERS)
        dispatcher.stop()
        limiter = dispatcher._resources.limiter_for(ActivityCall("k0", gated, (0,), {}, 0))
        assert limiter is not None
        in_use = getattr(limiter, "in_use", None)
        leftovers = len(dispatcher._resources.leftover_threads)
        gate.set()
        await _until(lambda: pool.outstanding == 0)
        await asyncio.sleep(0.05)
        return in_use, leftovers, getattr(limiter, "in_use", None)

    in_use, leftovers, in_use_after = _run(pool, scenario)
    assert sorted(started) == list(range(WORKERS))  # the queued ones never started
    assert pool.submitted == WINDOW
    assert leftovers == WORKERS  # the running threads are kept for a next run
    assert in_use == WORKERS  # ...and keep their slots until they end; the rest are free
    assert in_use_after == 0


def test_a_slot_is_free_only_once_the_outcome_holding_it_is_written(pool: CountingPool) -> None:
    """Calls in flight plus outcomes not on disk never pass an activity's concurrency, so
    a kill makes at most that many calls of it run again."""
    started: list[int] = []

    @dn.activity(concurrency=2)
    def limited(i: int) -> int:
        started.append(i)
        return i

    async def scenario(dispatcher: Dispatcher, outcomes: list[history.Event]) -> Any:
        for i in range(5):
            dispatcher.start(ActivityCall(f"k{i}", limited, (i,), {}, i))
        await _until(lambda: len(outcomes) == 2)
        await asyncio.sleep(0.05)
        before_write = sorted(started)
        dispatcher.written()  # the run wrote both outcomes: two more may start
        await _until(lambda: len(outcomes) == 4)
        dispatcher.written()
        await _until(lambda: len(outcomes) == 5)
        return before_write

    before_write = _run(pool, scenario, write_outcomes=False)
    assert before_write == [0, 1]
    assert sorted(started) == [0, 1, 2, 3, 4]


class CancellingPool(concurrent.futures.Executor):
    """An executor that cancels every call it is given (as one shut down with
    ``cancel_futures=True`` does to the calls still queued)."""

    _max_workers = WORKERS

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.cancel()
        return future


def test_an_attempt_its_executor_cancelled_fails_as_lost_and_strands_no_other() -> None:
    @dn.activity
    def never_runs(i: int) -> int:
        return i

    async def scenario(dispatcher: Dispatcher, outcomes: list[history.Event]) -> Any:
        for i in range(3):
            dispatcher.start(ActivityCall(f"k{i}", never_runs, (i,), {}, i))
        await _until(lambda: len(outcomes) == 3)
        return outcomes

    outcomes = _run(CancellingPool(), scenario)  # type: ignore[arg-type]
    assert [type(e).__name__ for e in outcomes] == ["TaskFailed"] * 3
    assert {e.error_type for e in outcomes} == {"ActivityLostError"}  # type: ignore[attr-defined]
