"""Checkpoint stores: the same contract for DiskCacheStore and MemoryStore, plus disk specifics."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

import pytest
from builders import completed, started

from durable_nb import history
from durable_nb.errors import StoreError
from durable_nb.store import CheckpointStore, DiskCacheStore, InstanceRecord
from durable_nb.store_versions import FORMAT_VERSION


def test_appended_chunks_read_back_in_order(store: CheckpointStore) -> None:
    store.append("i", [started()])
    store.append("i", [completed("a/1/2#0", {"x": 1}), completed("b/1/2#0", [1, 2])])
    events = store.read_history("i")
    assert [type(e).__name__ for e in events] == [
        "ExecutionStarted",
        "TaskCompleted",
        "TaskCompleted",
    ]
    assert events[1].result == {"x": 1}  # type: ignore[attr-defined]
    assert store.history_chunks("i") == 2


def test_the_write_mark_moves_when_another_writer_appends(
    store: CheckpointStore, tmp_path: Path
) -> None:
    """What lets a waiting run skip reading its history: the mark stays while nobody
    else writes, and moves once another writer (here another connection to the same
    folder, as another process has; the memory store cannot tell writers apart) appends."""
    store.append("i", [started()])
    mark = store.write_mark()
    assert store.write_mark() == mark
    if isinstance(store, DiskCacheStore):  # its own appends do not move it
        store.append("i", [completed("a/0/2#0", 0)])
        assert store.write_mark() == mark
    other = DiskCacheStore(tmp_path / "s") if isinstance(store, DiskCacheStore) else store
    other.append("i", [completed("a/1/2#0", 1)])
    assert store.write_mark() != mark
    assert [n for n, _ in store.read_chunks("i", 1)][-1] >= 1
    if other is not store:
        other.close()


def test_live_exception_objects_are_not_stored(store: CheckpointStore) -> None:
    store.append(
        "i", [history.TaskFailed(1.0, "k", "a", "ValueError", "bad", 2, error=ValueError("bad"))]
    )
    (event,) = store.read_history("i")
    assert isinstance(event, history.TaskFailed)
    assert event.error is None and event.error_type == "ValueError" and event.attempts == 2


def test_compaction_keeps_every_event_and_later_appends_follow(store: CheckpointStore) -> None:
    for n in range(5):
        store.append("i", [completed(f"a/x/y#{n}", n)])
    store.compact("i")
    assert store.history_chunks("i") == 1
    store.append("i", [completed("a/x/y#5", 5)])
    assert [e.result for e in store.read_history("i")] == [0, 1, 2, 3, 4, 5]  # type: ignore[attr-defined]


def test_ids_that_prefix_each_other_do_not_mix(store: CheckpointStore) -> None:
    store.append("a", [completed("k/1/1#0", "of a")])
    store.append("a-500000000000001", [completed("k/1/1#0", "of the other")])
    assert [e.result for e in store.read_history("a")] == ["of a"]  # type: ignore[attr-defined]


def test_instance_records_list_and_purge(store: CheckpointStore) -> None:
    store.put_instance(InstanceRecord("one", "orch", created_at=1.0))
    store.put_instance(InstanceRecord("two", "orch", created_at=2.0, status="completed"))
    store.append("one", [started()])
    assert [r.instance_id for r in store.list_instances()] == ["one", "two"]
    assert store.get_instance("two").status == "completed"  # type: ignore[union-attr]
    assert store.purge("one") is True
    assert store.purge("one") is False
    assert store.read_history("one") == [] and store.get_instance("one") is None


def test_disk_store_folder_is_private_and_never_evicts(tmp_path: Path) -> None:
    s = DiskCacheStore(tmp_path / "private")
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o700
    assert s._cache.eviction_policy == "none"
    s.close()


def test_disk_store_refuses_a_newer_format(tmp_path: Path) -> None:
    s = DiskCacheStore(tmp_path / "s")
    s._cache.set("format", 999)
    s.close()
    with pytest.raises(StoreError, match="newer than this durable_nb"):
        DiskCacheStore(tmp_path / "s")


def test_disk_store_reports_an_unusable_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError) as info:
        DiskCacheStore(blocker / "store")
    assert str(blocker) in str(info.value)


def _append_many(folder: str, worker: int) -> None:
    s = DiskCacheStore(folder)
    for n in range(100):
        s.append("shared", [completed(f"w{worker}/x/y#{n}", (worker, n))])
    s.close()


def _two_processes_appended(tmp_path: Path) -> str:
    """A store folder to which two processes appended 100 chunks each, at once."""
    folder = str(tmp_path / "s")
    DiskCacheStore(folder).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(folder, w)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    return folder


def test_two_processes_appending_to_one_instance_lose_nothing(tmp_path: Path) -> None:
    folder = _two_processes_appended(tmp_path)
    results = {e.result for e in DiskCacheStore(folder).read_history("shared")}  # type: ignore[attr-defined]
    assert results == {(w, n) for w in range(2) for n in range(100)}


def test_data_survives_reopening(tmp_path: Path) -> None:
    s = DiskCacheStore(tmp_path / "s")
    s.append("i", [completed("a/b/c#0", 42)])
    s.put_instance(InstanceRecord("i", "orch"))
    s.close()
    again = DiskCacheStore(tmp_path / "s")
    assert again.read_history("i")[0].result == 42  # type: ignore[attr-defined]
    assert again.get_instance("i") is not None
    assert os.listdir(tmp_path / "s")


def test_chunk_numbers_from_two_processes_are_distinct_and_dense(tmp_path: Path) -> None:
    folder = _two_processes_appended(tmp_path)
    s = DiskCacheStore(folder)
    numbers = [number for number, _ in s.read_chunks("shared", 0)]
    assert numbers == list(range(200))
    assert s.load_history("shared")[1] == s.history_chunks("shared") == 200
    s.close()


def test_a_format_1_store_is_upgraded_in_place(tmp_path: Path) -> None:
    """Format 1 kept records, leases and history chunks as diskcache keys."""
    import diskcache

    folder = tmp_path / "s"
    folder.mkdir(mode=0o700)
    prefix = DiskCacheStore._stream_of("old")
    with diskcache.Cache(str(folder), eviction_policy="none", tag_index=True) as cache:
        cache.set("format", 1)
        cache.set("serializer", "pickle")
        cache.set("i:old", InstanceRecord("old", "orch", status="completed", output=7).to_dict())
        cache.set("l:old", {"owner": "gone", "pid": 1, "host": "h", "heartbeat": 0.0})
        for n in range(3):
            chunk = [history.encode(completed(f"a/b/c#{n}", n))]
            cache.push(chunk, prefix=prefix, tag=prefix)
    s = DiskCacheStore(folder)
    assert [e.result for e in s.read_history("old")] == [0, 1, 2]  # type: ignore[attr-defined]
    record = s.get_instance("old")
    assert record is not None and record.status == "completed" and record.output == 7
    assert s.get_lease("old") is None
    assert s.append("old", [completed("a/b/c#3", 3)]) == 3  # numbering goes on
    assert s._cache.get("format") == FORMAT_VERSION
    assert sorted(s._cache.iterkeys()) == ["format", "key_schemes", "serializer"]
    assert s.key_schemes == (1, 2)  # its keys were digested by an older release
    s.close()
    reopened = DiskCacheStore(folder)  # nothing left to move: opening again changes nothing
    assert len(reopened.read_history("old")) == 4
    reopened.close()


def test_a_new_generation_replaces_history_and_record_together(tmp_path: Path) -> None:
    s = DiskCacheStore(tmp_path / "s")
    s.append("i", [completed("a/b/c#0", 1)])
    s.put_instance(InstanceRecord("i", "orch", generation=0, input={"n": 1}))
    s.reset_history(InstanceRecord("i", "orch", generation=1, input={"n": 2}))
    assert s.read_history("i") == []
    record = s.get_instance("i")
    assert record is not None and record.generation == 1 and record.input == {"n": 2}
    s.close()


def test_a_database_locked_too_long_is_a_store_error_saying_what_to_do(tmp_path: Path) -> None:
    import sqlite3

    from durable_nb.tables import StoreTables

    database = str(tmp_path / "cache.db")
    tables = StoreTables(database, timeout=0.2)
    other = sqlite3.connect(database, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process writing, and not letting go
    try:
        with pytest.raises(StoreError) as info:
            tables.append("stream", b"chunk")
    finally:
        other.execute("ROLLBACK")
        other.close()
    message = str(info.value)
    assert database in message and "another process held it" in message, message
    assert tables.append("stream", b"chunk") == 0  # nothing half-done is left behind
    tables.close()


def test_a_batch_too_big_for_one_row_is_split_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from durable_nb import store as store_module

    monkeypatch.setattr(store_module, "MAX_CHUNK_BYTES", 4096)
    s = DiskCacheStore(tmp_path / "s")
    events = [completed(f"a/b/c#{i}", f"{i:03d}" * 170) for i in range(40)]  # ~21 KB
    last = s.append("i", events)
    assert last == s.history_chunks("i") - 1 > 3  # several chunks
    assert [e.key for e in s.read_history("i")] == [e.key for e in events]  # type: ignore[attr-defined]
    assert all(len(data) <= 4096 for _, data in s._tables.read(s._stream_of("i")))
    s.close()


def test_a_record_given_a_status_member_stores_the_plain_string(tmp_path: Path) -> None:
    """Stores never depend on the Status class: a record keeps its value."""
    from durable_nb.history import Status

    store = DiskCacheStore(tmp_path / "store")
    record = InstanceRecord("i-1", "orch", status=Status.SUSPENDED)
    assert type(record.to_dict()["status"]) is str
    store.put_instance(record)
    loaded = store.get_instance("i-1")
    assert loaded is not None and type(loaded.status) is str and loaded.status == "suspended"
    store.close()


def test_a_long_history_is_compacted_by_the_load_that_reads_it(store: CheckpointStore) -> None:
    for n in range(40):
        store.append("i", [completed(f"a/x/y#{n}", n), completed(f"b/x/y#{n}", [n])])
    before, count = store.load_history("i")
    assert count == 40 and store.history_chunks("i") == 40  # not asked: left as it is
    assert store.load_history("i", compact_after=40) == (before, 40)  # not more than 40
    events, count = store.load_history("i", compact_after=32)
    assert events == before and count == 1 and store.history_chunks("i") == 1
    assert store.append("i", [completed("a/x/y#40", 40)]) == 1  # appends follow it
    assert store.load_history("i", compact_after=32) == ([*before, completed("a/x/y#40", 40)], 2)


@pytest.mark.parametrize("compact_after", [None, 8])
def test_a_load_for_replay_leaves_out_scheduled_events_only(
    store: CheckpointStore, compact_after: int | None
) -> None:
    """Replay never reads TaskScheduled (the orchestrator makes each call's key again):
    they are not decoded, and every other event comes back in its order, compacted or
    not; the stored history keeps them all."""
    for n in range(12):
        store.append(
            "i",
            [
                history.TaskScheduled(float(n), f"a/x/y#{n}", "a", str(n)),
                completed(f"a/x/y#{n}", n),
            ],
        )
    everything, _ = store.load_history("i")
    events, count = store.load_history("i", compact_after, scheduled=False)
    assert events == [e for e in everything if not isinstance(e, history.TaskScheduled)]
    assert len(events) == 12 and count == (12 if compact_after is None else 1)
    assert store.load_history("i")[0] == everything  # nothing was dropped from the store


def test_a_history_of_big_chunks_is_not_rewritten_by_a_load(tmp_path: Path) -> None:
    """A fan-out's chunks hold hundreds of completions each: merging them would rewrite
    the whole history (seconds at a million calls) to save reading a few rows."""
    store = DiskCacheStore(tmp_path / "store")
    for n in range(40):
        store.append("i", [completed(f"a/x/y#{n}.{k}", f"{n}.{k}" * 8) for k in range(100)])
    events, count = store.load_history("i", compact_after=32)
    assert len(events) == 4000 and count == 40 and store.history_chunks("i") == 40
    store.close()


def test_an_append_during_a_compacting_load_is_not_lost(tmp_path: Path) -> None:
    """Another process appends after the load read the chunks and before it writes the
    merged one: the load keeps every chunk (compacting is left to a later load)."""
    first, second = DiskCacheStore(tmp_path / "s"), DiskCacheStore(tmp_path / "s")
    tables, other = first._tables, second._tables  # two connections, as two processes
    for n in range(40):
        tables.append("s", b"%d" % n)

    def merge_while_another_appends(chunks: list[bytes]) -> bytes:
        other.append("s", b"late")
        return b"".join(chunks)

    chunks, count = tables.read_compacting("s", 32, merge_while_another_appends)
    assert chunks == [b"%d" % n for n in range(40)] and count == 40  # what was read
    assert [data for _, data in tables.read("s")] == [*chunks, b"late"]  # nothing lost
    chunks, count = tables.read_compacting("s", 32, b"".join)  # the next load compacts
    assert chunks == [b"".join(b"%d" % n for n in range(40)) + b"late"] and count == 1
    assert tables.read("s") == [(0, chunks[0])]
    first.close()
    second.close()


def test_chunks_are_numbered_densely_per_stream(tmp_path: Path) -> None:
    from durable_nb.tables import StoreTables

    tables = StoreTables(str(tmp_path / "cache.db"))
    assert [tables.append("a", b"x"), tables.append("b", b"y"), tables.append("a", b"z")] == [
        0,
        0,
        1,
    ]
    assert tables.read("a") == [(0, b"x"), (1, b"z")]
    tables.close()


def test_a_record_with_a_field_of_a_later_release_reads_without_it(tmp_path: Path) -> None:
    """A later release may add fields to the record: this one reads what it knows."""
    import pickle

    store = DiskCacheStore(tmp_path / "store")
    record = InstanceRecord("i-1", "orch", status="completed", runs=2)
    data = {**record.to_dict(), "added_later": {"x": 1}}
    store._tables.put_instance("i-1", pickle.dumps(data), record.history_id)
    loaded = store.get_instance("i-1")
    assert loaded == record and not hasattr(loaded, "added_later")
    assert [r.instance_id for r in store.list_instances()] == ["i-1"]
    store.close()
