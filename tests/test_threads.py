"""The default executor, ActivityThreads: calls without a Future, with the standard
pool's semantics (cancel while queued, errors kept, threads on demand, calls handed
over run to their end at exit)."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from durable_nb.errors import ActivityLostError, ConfigurationError
from durable_nb.threads import ActivityThreads, ThreadCall


@pytest.fixture
def pool() -> Iterator[ActivityThreads]:
    made = ActivityThreads(2, thread_name_prefix="test_threads")
    yield made
    made.shutdown(wait=True)


class Ended:
    """A done callback that records the call and the thread it ran on."""

    def __init__(self) -> None:
        self.calls: list[ThreadCall] = []
        self.threads: list[str] = []
        self.event = threading.Event()

    def __call__(self, call: ThreadCall) -> None:
        self.calls.append(call)
        self.threads.append(threading.current_thread().name)
        self.event.set()

    def wait(self) -> ThreadCall:
        assert self.event.wait(10), "the call never ended"
        return self.calls[-1]


def test_a_call_runs_in_a_worker_and_its_callback_gets_the_result(pool: ActivityThreads) -> None:
    ended = Ended()
    call = pool.start_call(lambda x, y=0: x + y, (40,), {"y": 2}, ended)
    assert ended.wait() is call
    assert call.done() and not call.cancelled() and call.result() == 42
    assert call.exception() is None
    assert ended.threads[0].startswith("test_threads_")


def test_an_error_even_a_base_exception_is_kept_and_the_worker_survives(
    pool: ActivityThreads,
) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    for fn, kind in ((lambda: 1 / 0, ZeroDivisionError), (interrupted, KeyboardInterrupt)):
        ended = Ended()
        call = pool.start_call(fn, (), {}, ended)
        ended.wait()
        assert isinstance(call.exception(), kind)
        with pytest.raises(kind):
            call.result()
    ended = Ended()
    pool.start_call(lambda: "still here", (), {}, ended)
    assert ended.wait().result() == "still here"


def test_a_queued_call_can_be_cancelled_and_a_running_one_cannot() -> None:
    pool = ActivityThreads(1)
    gate = threading.Event()
    running = threading.Event()

    def blocked() -> str:
        running.set()
        gate.wait(10)
        return "ran"

    first_ended, second_ended = Ended(), Ended()
    first = pool.start_call(blocked, (), {}, first_ended)
    assert running.wait(10)
    second = pool.start_call(lambda: "never", (), {}, second_ended)
    assert not first.cancel() and first.running()
    assert second.cancel() and second.cancelled() and second.done()
    assert second_ended.calls == [second]  # told at once, on the cancelling thread
    with pytest.raises(concurrent.futures.CancelledError):
        second.result()
    gate.set()
    assert first_ended.wait().result() == "ran"
    pool.shutdown(wait=True)
    assert second_ended.calls == [second]  # never ran


def test_asking_for_the_result_before_the_end_is_an_error_not_a_wait(
    pool: ActivityThreads,
) -> None:
    gate = threading.Event()
    call = pool.start_call(gate.wait, (10,), {}, lambda _: None)
    with pytest.raises(concurrent.futures.InvalidStateError):
        call.result()
    gate.set()


def test_a_callback_added_late_runs_once_whenever_it_is_added(pool: ActivityThreads) -> None:
    gate = threading.Event()
    ended = Ended()
    call = pool.start_call(gate.wait, (10,), {}, ended)
    before, after = Ended(), Ended()
    call.add_done_callback(before)
    gate.set()
    ended.wait()
    before.wait()
    call.add_done_callback(after)  # already done: called here, now
    assert len(before.calls) == 1 and after.calls == [call]
    assert after.threads == [threading.current_thread().name]


def test_threads_start_on_demand_up_to_max_workers_and_are_reused() -> None:
    pool = ActivityThreads(2)
    names: list[str] = []
    for i in range(20):  # one at a time: one thread is enough
        ended = Ended()
        pool.start_call(lambda i=i: names.append(threading.current_thread().name), (), {}, ended)
        ended.wait()
        time.sleep(0.001)  # let the worker count itself idle again
    assert len(set(names)) == 1
    gate = threading.Event()
    started = threading.Semaphore(0)

    def held() -> str:
        started.release()
        gate.wait(10)
        return threading.current_thread().name

    calls = [pool.start_call(held, (), {}, lambda _: None) for _ in range(3)]
    assert started.acquire(timeout=10) and started.acquire(timeout=10)
    assert not started.acquire(timeout=0.2)  # the third waits: only two threads
    assert len(pool._threads) == 2
    gate.set()
    pool.shutdown(wait=True)
    assert all(call.done() for call in calls)


def test_submit_gives_a_real_future(pool: ActivityThreads) -> None:
    future = pool.submit(lambda x, *, y: x * y, 6, y=7)
    assert isinstance(future, concurrent.futures.Future) and future.result(10) == 42
    failing = pool.submit(lambda: {}["missing"])
    assert isinstance(failing.exception(10), KeyError)


def test_shutdown_runs_what_was_queued_or_cancels_it_when_asked() -> None:
    for cancel in (False, True):
        pool = ActivityThreads(1)
        gate = threading.Event()
        ran: list[int] = []
        pool.start_call(gate.wait, (10,), {}, lambda _: None)
        queued = [pool.start_call(ran.append, (i,), {}, lambda _: None) for i in range(3)]
        threading.Timer(0.1, gate.set).start()
        pool.shutdown(wait=True, cancel_futures=cancel)
        assert ran == ([] if cancel else [0, 1, 2])
        assert all(call.cancelled() == cancel for call in queued)
        with pytest.raises(ActivityLostError, match=r"'print' could not start.*shut down"):
            pool.start_call(print, (), {}, lambda _: None)


def test_a_pool_needs_a_worker() -> None:
    with pytest.raises(ConfigurationError, match="max_workers=0"):
        ActivityThreads(0)


def run_script(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )


def test_calls_handed_over_run_to_their_end_at_exit_and_an_idle_pool_does_not_hold_it(
    tmp_path: Path,
) -> None:
    """As concurrent.futures' exit hook: the interpreter waits for the calls given to
    the pool (a result on its way to the store), but not for idle workers."""
    started = time.monotonic()
    done = run_script(
        tmp_path,
        """
        import time
        from pathlib import Path
        from durable_nb.threads import ActivityThreads

        def slow(name):
            time.sleep(0.5)
            Path(name).write_text("finished")

        idle = ActivityThreads(2)
        idle.start_call(int, (), {}, lambda _: None)
        busy = ActivityThreads(1)
        for name in ("a", "b"):
            busy.start_call(slow, (name,), {}, lambda _: None)
        """,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "a").read_text() == (tmp_path / "b").read_text() == "finished"
    assert time.monotonic() - started < 30


def test_a_pool_nobody_refers_to_lets_its_threads_go() -> None:
    import gc

    pool = ActivityThreads(2)
    ended = Ended()
    pool.start_call(int, (), {}, ended)
    ended.wait()
    threads: list[Any] = list(pool._threads)
    del pool, ended
    gc.collect()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
