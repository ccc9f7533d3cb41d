"""The shared means of running activities: the concurrency limiters, the limits a call
must fit in, and the threads left running by runs that ended (real threads)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

import durable_nb as dn
from durable_nb.engine import ActivityCall
from durable_nb.resources import LeftoverThreads, Limiter, LimiterChain, Resources

OWNER = "inst@history-1"
T = TypeVar("T")


def _on_a_new_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on a loop of its own, closed at the end (asyncio.run, once
    another test let nest_asyncio2 patch it, may reuse one loop and leave it open)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


def _starter(log: list[str], name: str) -> Callable[[], None]:
    return lambda: log.append(name)


# ------------------------------------------------------------------ Limiter


def test_a_limiter_admits_up_to_its_limit_then_starts_waiters_in_order() -> None:
    limiter = Limiter(2)
    log: list[str] = []
    for name in "abcd":
        limiter.acquire_or_wait(_starter(log, name))
    assert log == ["a", "b"] and limiter.in_use == 2
    limiter.release()
    assert log == ["a", "b", "c"] and limiter.in_use == 2  # the slot passed on
    limiter.release()
    limiter.release()
    limiter.release()
    assert log == ["a", "b", "c", "d"] and limiter.in_use == 0


def test_a_forgotten_waiter_never_starts() -> None:
    limiter = Limiter(1)
    log: list[str] = []
    limiter.acquire_or_wait(_starter(log, "a"))
    waiting = _starter(log, "b")
    limiter.acquire_or_wait(waiting)
    limiter.forget(waiting)
    limiter.forget(waiting)  # twice, or never queued: nothing happens
    limiter.release()
    assert log == ["a"] and limiter.in_use == 0


# ------------------------------------------------------------------ LimiterChain


def test_a_chain_starts_a_call_only_when_every_limit_has_room() -> None:
    own, shared = Limiter(1), Limiter(2)
    chain = LimiterChain([own, shared])
    other = Limiter(5)  # another activity's limit under the same global one
    log: list[str] = []
    chain.acquire_or_wait(_starter(log, "a"))
    LimiterChain([other, shared]).acquire_or_wait(_starter(log, "x"))
    chain.acquire_or_wait(_starter(log, "b"))  # waits on its own limit
    assert log == ["a", "x"] and (own.in_use, shared.in_use) == (1, 2)
    chain.release()  # "a" ends: "b" takes its own slot, then the shared one
    assert log == ["a", "x", "b"] and (own.in_use, shared.in_use) == (1, 2)
    chain.release()
    assert (own.in_use, shared.in_use) == (0, 1)


def test_a_call_holding_one_limit_of_a_chain_gives_it_back_when_forgotten() -> None:
    own, shared = Limiter(1), Limiter(1)
    log: list[str] = []
    shared.acquire_or_wait(_starter(log, "elsewhere"))  # the global slot is taken
    chain = LimiterChain([own, shared])
    waiting = _starter(log, "a")
    chain.acquire_or_wait(waiting)  # holds `own`, waits on `shared`
    assert own.in_use == 1 and log == ["elsewhere"]
    chain.forget(waiting)
    assert own.in_use == 0  # given back
    shared.release()
    assert log == ["elsewhere"] and shared.in_use == 0  # and no longer waiting


# ------------------------------------------------------------------ Resources


@pytest.fixture
def resources() -> Iterator[Resources]:
    found = Resources(max_workers=2)
    yield found
    found.close()


def _call(activity: Any, key: str = "k") -> ActivityCall:
    return ActivityCall(key, activity, (), {}, 0)


def test_calls_fit_in_their_activitys_limit_then_the_global_one(resources: Resources) -> None:
    @dn.activity(concurrency=2)
    def limited() -> None: ...

    @dn.activity
    def free() -> None: ...

    async def limits() -> list[Any]:
        return [
            resources.limiter_for(_call(limited, "a")),
            resources.limiter_for(_call(limited, "b")),
            resources.limiter_for(_call(free)),
        ]

    first, second, unlimited = _on_a_new_loop(limits())
    assert isinstance(first, Limiter) and first.limit == 2
    assert second is first  # the activity's calls share one limit
    assert unlimited is None
    resources.max_in_flight = 3
    chain, only_global = _on_a_new_loop(limits())[1:]
    assert isinstance(chain, LimiterChain)
    assert [limiter.limit for limiter in chain.limiters] == [2, 3]  # the activity's first
    assert isinstance(only_global, Limiter) and only_global is chain.limiters[1]
    assert chain.limiters[0] is not first  # another loop: limits of its own


# ------------------------------------------------------------------ LeftoverThreads


@pytest.fixture
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    executor = concurrent.futures.ThreadPoolExecutor(2)
    yield executor
    executor.shutdown(wait=True)


def test_a_running_thread_is_taken_only_by_its_owner_and_only_once(
    pool: concurrent.futures.ThreadPoolExecutor,
) -> None:
    leftover = LeftoverThreads()
    release = threading.Event()

    async def scenario() -> None:
        future = pool.submit(release.wait, 10)
        leftover.keep(OWNER, "k", future, None)
        assert leftover.take("inst@history-2", "k") is None  # after continue_as_new
        assert leftover.take(OWNER, "other") is None
        assert leftover.take(OWNER, "k") is future
        assert leftover.take(OWNER, "k") is None and len(leftover) == 0
        release.set()
        await asyncio.wrap_future(future)

    _on_a_new_loop(scenario())


def test_a_thread_that_ends_is_forgotten_and_gives_its_slot_back_on_the_loop(
    pool: concurrent.futures.ThreadPoolExecutor,
) -> None:
    leftover = LeftoverThreads()
    release = threading.Event()
    started_on: list[int] = []

    async def scenario() -> None:
        limiter = Limiter(1)
        limiter.acquire_or_wait(lambda: None)  # the slot the ended run's thread holds
        future = pool.submit(release.wait, 10)
        leftover.keep(OWNER, "k", future, limiter)
        waiter = asyncio.get_running_loop().create_future()
        limiter.acquire_or_wait(
            lambda: (started_on.append(threading.get_ident()), waiter.set_result(None))
        )
        await asyncio.sleep(0.05)
        assert not waiter.done() and len(leftover) == 1  # held while the thread runs
        release.set()
        await asyncio.wait_for(waiter, 5)
        assert len(leftover) == 0

    _on_a_new_loop(scenario())
    assert started_on == [threading.get_ident()]  # the loop's thread, not the worker


def test_a_thread_that_ends_after_its_loop_closed_stays_to_be_taken() -> None:
    """Its outcome may not have reached the history yet: a success is taken over, a
    failure or a cancelled call is not (a new run retries it)."""
    leftover = LeftoverThreads()
    futures: dict[str, concurrent.futures.Future[int]] = {
        key: concurrent.futures.Future() for key in ("ok", "failed", "cancelled")
    }

    async def earlier_run_ends() -> None:
        for key, future in futures.items():
            leftover.keep(OWNER, key, future, None)

    _on_a_new_loop(earlier_run_ends())
    futures["ok"].set_result(49)
    futures["failed"].set_exception(ValueError("flaky"))
    futures["cancelled"].cancel()
    assert len(leftover) == 3  # the loop that would forget them is closed
    assert leftover.take(OWNER, "ok") is futures["ok"]
    assert leftover.take(OWNER, "failed") is None
    assert leftover.take(OWNER, "cancelled") is None
    assert len(leftover) == 0  # dropped, not kept for later


def test_an_adopted_thread_ending_does_not_forget_a_newer_one_for_the_same_call(
    pool: concurrent.futures.ThreadPoolExecutor,
) -> None:
    leftover = LeftoverThreads()
    first_done, second_done = threading.Event(), threading.Event()

    async def scenario() -> None:
        first = pool.submit(first_done.wait, 10)
        leftover.keep(OWNER, "k", first, None)
        assert leftover.take(OWNER, "k") is first  # adopted by the next run ...
        second = pool.submit(second_done.wait, 10)
        leftover.keep(OWNER, "k", second, None)  # ... which ended too, leaving its own
        first_done.set()
        await asyncio.wrap_future(first)
        await asyncio.sleep(0.05)  # the first thread's end reaches the loop
        assert leftover.take(OWNER, "k") is second
        second_done.set()
        await asyncio.wrap_future(second)

    _on_a_new_loop(scenario())
