"""What history records for people to look at (store format 3): when each attempt began
to run, and a preview of each call's arguments. Runs on a real store and real threads;
rows of format 2 read back with those fields empty."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import durable_nb as dn
from durable_nb import history
from durable_nb.runtime import Runtime, _reset_for_tests
from durable_nb.store import DiskCacheStore


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    made = _reset_for_tests(
        lambda: Runtime(store=DiskCacheStore(tmp_path / "store"), progress="none", max_workers=4)
    )
    yield made
    _reset_for_tests()


def events_of(runtime: Runtime, instance_id: str) -> list[history.Event]:
    return runtime.store.read_history(instance_id)


def test_each_attempt_records_when_it_began_and_waiting_for_a_slot_is_not_running(
    runtime: Runtime,
) -> None:
    @dn.activity(concurrency=1)
    def slow(i: int) -> int:
        time.sleep(0.15)
        return i

    @dn.orchestrator
    def fan(ctx, n):  # type: ignore[no-untyped-def]
        return (yield ctx.task_all([ctx.call_activity(slow, i) for i in range(n)]))

    assert fan.run(3) == [0, 1, 2]
    events = events_of(runtime, fan.instance_id_for(3))
    scheduled = {e.key: e for e in events if isinstance(e, history.TaskScheduled)}
    done = sorted(
        (e for e in events if isinstance(e, history.TaskCompleted)), key=lambda e: e.timestamp
    )
    assert len(done) == 3
    for event in done:
        assert event.started is not None
        assert scheduled[event.key].timestamp <= event.started < event.timestamp
        assert event.timestamp - event.started >= 0.14  # it ran for its sleep
    # One slot: each began after the one before ended, not when it was scheduled.
    for before, after in itertools.pairwise(done):
        assert after.started is not None and after.started >= before.timestamp
    assert done[-1].started - scheduled[done[-1].key].timestamp >= 0.28  # type: ignore[operator]


def test_a_retried_attempt_records_when_it_began_and_the_last_attempt_too(
    runtime: Runtime,
) -> None:
    tries: list[float] = []

    @dn.activity(retries=1, backoff=0.2)
    def flaky() -> str:
        tries.append(time.time())
        if len(tries) == 1:
            raise ValueError("first try fails")
        return "ok"

    @dn.orchestrator
    def once(ctx):  # type: ignore[no-untyped-def]
        return (yield ctx.call_activity(flaky))

    assert once.run() == "ok"
    events = events_of(runtime, once.instance_id_for())
    (retried,) = [e for e in events if isinstance(e, history.TaskRetried)]
    (completed,) = [e for e in events if isinstance(e, history.TaskCompleted)]
    assert retried.started is not None and completed.started is not None
    assert retried.started <= tries[0] <= retried.timestamp
    assert retried.timestamp + retried.delay <= completed.started <= tries[1]


def test_a_failure_records_when_its_last_attempt_began(runtime: Runtime) -> None:
    @dn.activity
    def broken() -> None:
        raise KeyError("gone")

    @dn.orchestrator
    def calls_it(ctx):  # type: ignore[no-untyped-def]
        try:
            yield ctx.call_activity(broken)
        except KeyError:  # the activity's own exception, annotated
            return "handled"
        return "not reached"

    before = time.time()
    assert calls_it.run() == "handled"
    (failed,) = [
        e
        for e in events_of(runtime, calls_it.instance_id_for())
        if isinstance(e, history.TaskFailed)
    ]
    assert failed.started is not None and before <= failed.started <= failed.timestamp
    assert failed.error is None  # the live exception is never stored


def test_async_def_attempts_record_when_they_began(runtime: Runtime) -> None:
    @dn.activity
    async def nap(seconds: float) -> float:
        import asyncio

        await asyncio.sleep(seconds)
        return seconds

    @dn.orchestrator
    def naps(ctx):  # type: ignore[no-untyped-def]
        return (yield ctx.call_activity(nap, 0.1))

    assert naps.run() == 0.1
    (done,) = [
        e
        for e in events_of(runtime, naps.instance_id_for())
        if isinstance(e, history.TaskCompleted)
    ]
    assert done.started is not None and done.timestamp - done.started >= 0.09


def test_scheduled_calls_carry_a_short_preview_of_their_arguments(runtime: Runtime) -> None:
    import numpy as np

    @dn.activity
    def take(*args: object, **kwargs: object) -> int:
        return len(args) + len(kwargs)

    @dn.orchestrator
    def previews(ctx):  # type: ignore[no-untyped-def]
        yield ctx.call_activity(take, 3, "short")
        yield ctx.call_activity(take, "x" * 100)
        yield ctx.call_activity(take, np.zeros((200, 3)), rows=list(range(1000)))
        return "done"

    assert previews.run() == "done"
    shown = [
        e.arguments
        for e in events_of(runtime, previews.instance_id_for())
        if isinstance(e, history.TaskScheduled)
    ]
    assert shown == [
        "3, 'short'",
        "'" + "x" * 23 + "…'",
        "ndarray(200x3), rows=list[1000]",
    ]


def test_rows_written_before_format_3_read_with_the_new_fields_empty() -> None:
    """A format 2 row has no started or arguments: it decodes, with them None."""
    old_rows = [
        ("scheduled", 1.0, "a/b/c#0", "a"),
        ("completed", 2.0, "a/b/c#0", "a", 42, 1),
        ("failed", 3.0, "a/b/d#0", "a", "ValueError", "bad", 2),
        ("retried", 2.5, "a/b/d#0", "a", 1, "ValueError", "bad", 1.0),
    ]
    scheduled, completed, failed, retried = [history.decode(row) for row in old_rows]
    assert isinstance(scheduled, history.TaskScheduled) and scheduled.arguments is None
    assert isinstance(completed, history.TaskCompleted) and completed.started is None
    assert completed.result == 42 and completed.attempts == 1
    assert isinstance(failed, history.TaskFailed) and failed.started is None
    assert failed.attempts == 2 and failed.error is None
    assert isinstance(retried, history.TaskRetried) and retried.started is None
    # And rows of format 3 keep them, the live error still left out.
    new = history.TaskFailed(3.0, "k", "a", "KeyError", "x", 1, 2.5, error=KeyError("x"))
    row = history.encode(new)
    assert row == ("failed", 3.0, "k", "a", "KeyError", "x", 1, 2.5)
    again = history.decode(row)
    assert isinstance(again, history.TaskFailed) and again.started == 2.5 and again.error is None


@pytest.mark.parametrize("older", [2, 3])
def test_opening_an_older_format_store_marks_it_current(tmp_path: Path, older: int) -> None:
    from durable_nb.store_versions import FORMAT_VERSION, peek_versions

    store = DiskCacheStore(tmp_path / "s")
    store.append("i", [history.TaskCompleted(1.0, "a/b/c#0", "a", 1, 1)])
    store._cache.set("format", older)  # as a release before wrote it
    store.close()
    assert peek_versions(tmp_path / "s")[0] == older
    reopened = DiskCacheStore(tmp_path / "s")
    assert [e.result for e in reopened.read_history("i")] == [1]  # type: ignore[attr-defined]
    reopened.close()
    assert FORMAT_VERSION == 4 and peek_versions(tmp_path / "s")[0] == 4
