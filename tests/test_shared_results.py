"""Shared results: ``%%activity --share`` / ``@activity(share=True)`` answer a call from any
instance's success with the same activity, code and arguments, on a real store."""

from __future__ import annotations

import datetime
import io
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import durable_nb as dn
from durable_nb import history, management
from durable_nb.cli import main
from durable_nb.errors import DefinitionError
from durable_nb.memory_store import MemoryStore
from durable_nb.options import ActivityOptions
from durable_nb.runtime import Runtime, _reset_for_tests
from durable_nb.store import CheckpointStore, DiskCacheStore, InstanceRecord, shared_digest
from durable_nb.store_values import LargeRef, LargeValueFile


class Runs:
    """Each execution of an activity writes one file; counting files counts executions."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir()

    def mark(self) -> None:
        (self.folder / uuid.uuid4().hex).touch()

    @property
    def count(self) -> int:
        return sum(1 for _ in self.folder.iterdir())


@pytest.fixture
def runs(tmp_path: Path) -> Runs:
    return Runs(tmp_path / "runs")


def _runtime(store: CheckpointStore) -> Runtime:
    return _reset_for_tests(lambda: Runtime(store=store, progress="none"))


def make_sweep(runs: Runs, share: bool = True, **options: Any) -> dn.Orchestrator:
    @dn.activity(share=share, **options)
    def square(i: int) -> int:
        runs.mark()
        return i * i

    @dn.orchestrator
    def sweep(ctx, n, offset=0):  # type: ignore[no-untyped-def]
        values = yield ctx.task_all([ctx.call_activity(square, i + offset) for i in range(n)])
        return sum(values)

    return sweep


def _replay_next(store: CheckpointStore, instance_id: str) -> None:
    """Make the next run of a completed instance replay its history (instead of returning
    its recorded outcome), as after an interrupt."""
    record = store.get_instance(instance_id)
    assert record is not None
    record.status = "interrupted"
    store.put_instance(record)


def _shared_rows(store_dir: Path) -> list[tuple[str, str, float, str]]:
    with sqlite3.connect(store_dir / "cache.db") as db:
        return db.execute(
            "SELECT activity, digest, finished, instance_id FROM durable_shared"
        ).fetchall()


def test_a_shared_activity_runs_only_the_new_calls_of_a_second_instance(
    rt: Runtime, runs: Runs, store_dir: Path
) -> None:
    sweep = make_sweep(runs)
    assert sweep.run(100) == sum(i * i for i in range(100))
    assert runs.count == 100
    assert sweep.run(200) == sum(i * i for i in range(200))
    assert runs.count == 200  # exactly the 100 new calls ran
    second = sweep.instance_id_for(200)
    record = rt.status(second)
    assert record is not None
    assert record.counts["cached"] == 100 and record.counts["ran"] == 100
    # Recorded in the second instance's own history (attempts 0: reused, not run), so
    # its replay does not need the first instance any more.
    reused = [
        e
        for e in rt.store.read_history(second)
        if isinstance(e, history.TaskCompleted) and e.attempts == 0
    ]
    assert len(reused) == 100
    management.purge(rt.store, [sweep.instance_id_for(100)])
    _replay_next(rt.store, second)
    assert sweep.run(200) == sum(i * i for i in range(200))
    assert rt.status(second).counts["cached"] == 200  # type: ignore[union-attr]
    assert runs.count == 200
    assert len(_shared_rows(store_dir)) == 100  # the second instance's own 100 successes


def test_without_share_each_instance_runs_its_own_calls(rt: Runtime, runs: Runs) -> None:
    sweep = make_sweep(runs, share=False)
    sweep.run(100)
    sweep.run(200)
    assert runs.count == 300
    record = rt.status(sweep.instance_id_for(200))
    assert record is not None and record.counts["cached"] == 0


def test_an_unshared_activity_never_asks_the_store(tmp_path: Path, runs: Runs) -> None:
    class Watching(DiskCacheStore):
        lookups: list[int] = []

        def find_shared_many(self, activity: str, digests: Any, newer_than: Any) -> Any:
            Watching.lookups.append(len(digests))
            return super().find_shared_many(activity, digests, newer_than)

    runtime = _runtime(Watching(tmp_path / "s"))
    try:
        make_sweep(runs, share=False).run(20)
        assert Watching.lookups == []
        make_sweep(runs, share=True).run(20, offset=1)
        assert Watching.lookups == [20]  # a fan-out's calls are looked up together
    finally:
        runtime.close()


def test_memory_store_shares_too(runs: Runs) -> None:
    store = MemoryStore()
    runtime = _runtime(store)
    try:
        sweep = make_sweep(runs)
        sweep.run(100)
        sweep.run(200)
        assert runs.count == 200
        record = runtime.status(sweep.instance_id_for(200))
        assert record is not None and record.counts["cached"] == 100
        for n in (100, 200):
            store.purge(sweep.instance_id_for(n))
        sweep.run(50)
        assert runs.count == 250  # purged instances share nothing any more
    finally:
        runtime.close()


def test_results_older_than_ttl_run_again(rt: Runtime, runs: Runs, store_dir: Path) -> None:
    sweep = make_sweep(runs, ttl="1h")
    sweep.run(10)
    sweep.run(15)
    assert runs.count == 15  # young enough: 10 reused
    with sqlite3.connect(store_dir / "cache.db") as db:
        db.execute("UPDATE durable_shared SET finished = finished - 7200")
    sweep.run(20)
    assert runs.count == 35  # all 20 ran: every shared result was two hours old
    record = rt.status(sweep.instance_id_for(20))
    assert record is not None and record.counts["cached"] == 0


def test_a_changed_body_or_other_arguments_never_hit(rt: Runtime, runs: Runs) -> None:
    sweep = make_sweep(runs)
    sweep.run(10)
    sweep.run(10, offset=100)  # other arguments
    assert runs.count == 20

    @dn.activity(share=True)
    def square(i: int) -> int:  # the same name, another body
        runs.mark()
        return i * i + 0

    @dn.orchestrator
    def sweep_again(ctx, n):  # type: ignore[no-untyped-def]
        return (yield ctx.task_all([ctx.call_activity(square, i) for i in range(n)]))

    sweep_again.run(10)
    assert runs.count == 30
    sweep_again.run(10, instance_id="another")  # the new body's results are shared
    assert runs.count == 30


def test_purging_the_source_removes_its_shared_rows(
    rt: Runtime, runs: Runs, store_dir: Path
) -> None:
    sweep = make_sweep(runs)
    sweep.run(10)
    source = sweep.instance_id_for(10)
    assert {row[3] for row in _shared_rows(store_dir)} == {source}
    assert management.purge(rt.store, [source]) == ([source], [])
    assert _shared_rows(store_dir) == []
    sweep.run(10, instance_id="other")
    assert runs.count == 20
    sweep.run(10, instance_id="other", fresh=True)  # fresh purges its own rows first
    assert runs.count == 30


def test_failures_are_never_shared(rt: Runtime, runs: Runs, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.touch()

    @dn.activity(share=True)
    def flaky(i: int) -> int:
        runs.mark()
        if i % 2 and broken.exists():
            raise ConnectionError(f"call {i} failed")
        return i

    @dn.orchestrator
    def careful(ctx, n, tag):  # type: ignore[no-untyped-def]
        results = []
        for i in range(n):
            try:
                results.append((yield ctx.call_activity(flaky, i)))
            except ConnectionError:
                results.append(None)
        return results

    assert careful.run(6, "a") == [0, None, 2, None, 4, None]
    assert runs.count == 6
    broken.unlink()
    assert careful.run(6, "b") == [0, 1, 2, 3, 4, 5]
    assert runs.count == 9  # only the three failures ran again
    record = rt.status(careful.instance_id_for(6, "b"))
    assert record is not None and record.counts["cached"] == 3 and record.counts["ran"] == 3


def test_a_chain_of_async_activities_with_retries_shares_its_successes(
    rt: Runtime, runs: Runs, tmp_path: Path
) -> None:
    tried: set[int] = set()

    @dn.activity(share=True, retries=1, backoff=0.01)
    async def step(i: int) -> int:
        runs.mark()
        if i not in tried:  # every call fails once, then succeeds on its retry
            tried.add(i)
            raise ConnectionError("once")
        return i + 1

    @dn.orchestrator
    def chain(ctx, n, tag):  # type: ignore[no-untyped-def]
        value = 0
        for _ in range(n):
            value = yield ctx.call_activity(step, value)
        return value

    assert chain.run(3, "a") == 3
    assert runs.count == 6
    assert chain.run(5, "b") == 5
    assert runs.count == 10  # 3 reused one by one, 2 new calls with a retry each
    record = rt.status(chain.instance_id_for(5, "b"))
    assert record is not None and record.counts["cached"] == 3 and record.counts["retried"] == 2


def _large(i: int) -> Any:
    return np.full(200_000, float(i))  # 1.6 MB: stored in a file of its own


def test_a_large_shared_result_outlives_its_source_and_leaves_the_store_clean(
    rt: Runtime, runs: Runs, store_dir: Path
) -> None:
    @dn.activity(share=True)
    def big(i: int) -> Any:
        runs.mark()
        return _large(i)

    @dn.orchestrator
    def arrays(ctx, n, tag):  # type: ignore[no-untyped-def]
        values = yield ctx.task_all([ctx.call_activity(big, i) for i in range(n)])
        return [float(v.sum()) for v in values]

    expected = [float(_large(i).sum()) for i in range(2)]
    assert arrays.run(2, "a") == expected
    assert arrays.run(2, "b") == expected
    assert runs.count == 2
    store = rt.store
    assert isinstance(store, DiskCacheStore)
    source, reuser = arrays.instance_id_for(2, "a"), arrays.instance_id_for(2, "b")
    refs = [
        e.result
        for e in store.read_history(reuser)
        if isinstance(e, history.TaskCompleted) and e.attempts == 0
    ]
    assert len(refs) == 2 and all(isinstance(r, LargeValueFile) for r in refs)
    own = DiskCacheStore._stream_of(reuser) + ":v:"
    assert all(r._key.startswith(own) for r in refs)  # its own copies, not the source's

    assert management.purge(store, [source]) == ([source], [])
    _replay_next(store, reuser)
    assert arrays.run(2, "b") == expected  # replayed from its own files
    assert rt.status(reuser).counts["cached"] == 2  # type: ignore[union-attr]
    assert runs.count == 2
    assert store.orphans() == ([], []) and store.check_files(fix=False) == []
    out = io.StringIO()
    assert main(["doctor", "--store", str(store_dir)], out=out) == 0
    assert "belong to no instance" not in out.getvalue() and "WARN" not in out.getvalue()

    management.purge(store, [reuser])
    assert _shared_rows(store_dir) == []
    assert arrays.run(2, "c") == expected  # nothing shared is left: it runs
    assert runs.count == 4


def test_a_new_generation_unshares_its_large_results_and_keeps_small_ones(
    tmp_path: Path,
) -> None:
    store = DiskCacheStore(tmp_path / "s")
    record = InstanceRecord("src", "orch")
    store.put_instance(record)
    small = history.TaskCompleted(1.0, "act/c/small#0", "act", 7, 1)
    large = history.TaskCompleted(1.0, "act/c/large#0", "act", _large(1), 1)
    store.append("src", [small, large], share={small.key, large.key})
    assert store.find_shared("act", "c/small", None) is not None
    found = store.find_shared("act", "c/large", None)
    assert found is not None and np.array_equal(found.result, _large(1))
    assert found.instance_id == "src" and found.finished == 1.0
    assert store.find_shared("act", "c/large", newer_than=2.0) is None
    record.generation += 1
    store.reset_history(record)  # continue_as_new: the history and its files go
    assert store.find_shared("act", "c/large", None) is None
    assert store.find_shared("act", "c/small", None) is not None
    # A chunk of an instance with no record (purged while its run went on) shares nothing.
    store.append("gone", [small], share={small.key})
    assert store.find_shared("act", "c/small", None).instance_id == "src"  # type: ignore[union-attr]
    store.close()


def test_a_shared_row_whose_file_is_gone_is_a_miss(tmp_path: Path) -> None:
    store = DiskCacheStore(tmp_path / "s")
    store.put_instance(InstanceRecord("src", "orch"))
    event = history.TaskCompleted(1.0, "act/c/large#0", "act", _large(1), 1)
    store.append("src", [event], share={event.key})
    (ref,) = [e.result for e in store.read_history("src") if isinstance(e, history.TaskCompleted)]
    store._cache.delete(ref._key)
    assert store.find_shared("act", "c/large", None) is None
    assert store._tables.find_shared("act", ["c/large"]) == []  # and forgotten
    store.close()


def test_a_store_from_before_shared_results_gets_the_table_when_opened(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    DiskCacheStore(folder).close()
    with sqlite3.connect(folder / "cache.db") as db:
        db.execute("DROP TABLE durable_shared")  # as a store written before it existed
    store = DiskCacheStore(folder)
    store.put_instance(InstanceRecord("src", "orch"))
    event = history.TaskCompleted(1.0, "act/c/a#0", "act", 42, 1)
    store.append("src", [event], share={event.key})
    assert store.find_shared("act", "c/a", None).result == 42  # type: ignore[union-attr]
    store.close()


def test_the_shared_digest_is_the_call_key_without_name_and_occurrence() -> None:
    assert shared_digest("square", "square/0123456789abcdef/a1b2#3") == "0123456789abcdef/a1b2"
    assert shared_digest("a/b", "a/b/0123/ff#0") == "0123/ff"
    assert isinstance(LargeRef("k"), LargeRef)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 90.0),
        (2.5, 2.5),
        (datetime.timedelta(minutes=5), 300.0),
        ("90s", 90.0),
        ("15m", 900.0),
        ("12h", 43200.0),
        ("1d", 86400.0),
        ("2w", 1209600.0),
        ("45", 45.0),
        ("1.5h", 5400.0),
    ],
)
def test_ttl_is_normalised_to_seconds(value: Any, seconds: float) -> None:
    assert ActivityOptions(share=True, ttl=value).ttl == seconds


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ttl": 60}, "ttl applies to shared results only: add share=True"),
        ({"share": True, "ttl": -5}, "ttl must be > 0 seconds, got -5"),
        ({"share": True, "ttl": 0}, "ttl must be > 0 seconds, got 0"),
        ({"share": True, "ttl": "ten minutes"}, "ttl 'ten minutes' is not a duration"),
        ({"share": True, "ttl": "5y"}, "90s, 15m, 12h, 1d, 2w"),
        ({"share": True, "ttl": [1]}, "ttl must be seconds, a timedelta or text"),
        ({"share": "yes"}, "share must be True or False, got 'yes'"),
    ],
)
def test_bad_share_options_are_clear_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionError, match=message.replace("(", r"\(")):
        ActivityOptions(**options)
    with pytest.raises(DefinitionError, match=message.replace("(", r"\(")):
        dn.activity(**options)
