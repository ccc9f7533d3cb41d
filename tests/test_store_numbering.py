"""How history chunks get their numbers: a run's append is one SQLite statement at the
number after its last, and another writer's chunk is never lost or misordered.

Two ``StoreTables`` (or two ``DiskCacheStore``) on one file stand for two processes:
each has its own connections and its own idea of the next number.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from builders import completed

from durable_nb import history
from durable_nb.store import DiskCacheStore
from durable_nb.tables import StoreTables


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[StoreTables, StoreTables]]:
    database = str(tmp_path / "cache.db")
    first, second = StoreTables(database), StoreTables(database)
    yield first, second
    first.close()
    second.close()


def statements_of(tables: StoreTables, action: object) -> list[str]:
    """The SQL statements ``action()`` runs on the calling thread's connection."""
    seen: list[str] = []
    connection = tables._connection()
    connection.set_trace_callback(seen.append)
    try:
        action()  # type: ignore[operator]
    finally:
        connection.set_trace_callback(None)
    return seen


def test_an_append_after_one_of_its_own_is_a_single_statement(
    two: tuple[StoreTables, StoreTables],
) -> None:
    tables, _ = two
    first = statements_of(tables, lambda: tables.append("s", b"0"))
    assert [s.split()[0] for s in first] == ["BEGIN", "SELECT", "INSERT", "COMMIT"]
    for n in range(1, 5):
        seen = statements_of(tables, lambda n=n: tables.append("s", b"%d" % n))
        assert len(seen) == 1 and seen[0].startswith("INSERT"), seen
    assert tables.read("s") == [(n, b"%d" % n) for n in range(5)]


def test_a_loaded_history_gets_its_next_chunk_in_one_statement(
    two: tuple[StoreTables, StoreTables],
) -> None:
    """A run loads its history before it appends: the load tells the number that comes
    next, a new (empty) history's first chunk included, which is taken only while the
    stream is still empty."""
    tables, other = two
    assert tables.read_all("new") == ([], 0)
    seen = statements_of(tables, lambda: tables.append("new", b"first"))
    assert len(seen) == 1 and seen[0].startswith("INSERT"), seen
    for n in range(3):
        other.append("old", b"%d" % n)
    assert tables.read_all("old") == ([b"0", b"1", b"2"], 3)
    seen = statements_of(tables, lambda: tables.append("old", b"3"))
    assert len(seen) == 1 and seen[0].startswith("INSERT"), seen
    assert [n for n, _ in tables.read("new")] == [0] and len(tables.read("old")) == 4


def test_a_first_chunk_another_writer_wrote_after_the_load_comes_first(
    two: tuple[StoreTables, StoreTables],
) -> None:
    mine, other = two
    assert mine.read_all("s") == ([], 0)
    assert other.append("s", b"theirs") == 0  # an event raised before the run's first chunk
    assert mine.append("s", b"mine") == 1
    assert mine.append("s", b"next") == 2
    assert [data for _, data in mine.read("s")] == [b"theirs", b"mine", b"next"]


def test_a_number_another_writer_took_sends_the_chunk_after_the_last(
    two: tuple[StoreTables, StoreTables],
) -> None:
    mine, other = two
    assert [mine.append("s", b"a"), mine.append("s", b"b")] == [0, 1]
    assert other.append("s", b"theirs") == 2  # the number `mine` expects next
    assert mine.append("s", b"c") == 3  # refused at 2, numbered after the last
    assert mine.append("s", b"d") == 4  # and expected right again
    assert [data for _, data in mine.read("s")] == [b"a", b"b", b"theirs", b"c", b"d"]


def test_a_run_sees_another_writers_event_as_the_chunk_it_skipped(tmp_path: Path) -> None:
    """The journal finds others' chunks by the jump in its own chunk's number."""
    run, cli = DiskCacheStore(tmp_path / "s"), DiskCacheStore(tmp_path / "s")
    assert run.append("i", [completed("a/x/y#0", 0)]) == 0
    assert run.append("i", [completed("a/x/y#1", 1)]) == 1
    cli.append("i", [history.EventRaised(1.0, "go", 7)])
    number = run.append("i", [completed("a/x/y#2", 2)])
    assert number == 3
    ((skipped, events),) = run.read_chunks("i", 2)[:1]
    assert skipped == 2 and isinstance(events[0], history.EventRaised)
    run.close()
    cli.close()


def test_a_stream_emptied_by_another_writer_is_numbered_densely_again(
    two: tuple[StoreTables, StoreTables],
) -> None:
    """The number a store expects is stale: its predecessor is gone. Taking it would
    leave a gap that sorts this chunk after chunks others append later."""
    mine, other = two
    for n in range(3):
        mine.append("s", b"old%d" % n)
    other.delete_stream("s")  # a purge by another process
    other.append("s", b"new0")
    assert mine.append("s", b"mine") == 1
    assert other.append("s", b"new1") == 2
    assert mine.read("s") == [(0, b"new0"), (1, b"mine"), (2, b"new1")]


def test_a_stream_compacted_by_another_writer_is_numbered_densely_again(
    two: tuple[StoreTables, StoreTables],
) -> None:
    mine, other = two
    for n in range(5):
        mine.append("s", b"%d" % n)
    other.compact("s", b"".join)
    assert mine.append("s", b"5") == 1
    assert mine.read("s") == [(0, b"01234"), (1, b"5")]


@pytest.mark.parametrize("how", ["delete", "compact", "purge", "reset"])
def test_a_stream_this_store_empties_is_numbered_from_zero_again(
    two: tuple[StoreTables, StoreTables], how: str
) -> None:
    tables, _ = two
    for n in range(3):
        tables.append("s", b"%d" % n)
    if how == "delete":
        tables.delete_stream("s")
    elif how == "compact":
        tables.compact("s", b"".join)
    elif how == "purge":
        tables.purge("s", "i")
    else:
        tables.reset("s", "i", b"record", "h2")
    expected = 1 if how == "compact" else 0
    assert tables.append("s", b"next") == expected
    assert [n for n, _ in tables.read("s")] == list(range(expected + 1))


def test_a_compacting_load_restarts_the_numbering(tmp_path: Path) -> None:
    store = DiskCacheStore(tmp_path / "s")
    for n in range(40):
        store.append("i", [completed(f"a/x/y#{n}", n)])
    events, count = store.load_history("i", compact_after=32)
    assert len(events) == 40 and count == 1
    seen = statements_of(store._tables, lambda: store.append("i", [completed("a/x/y#40", 40)]))
    assert len(seen) == 1 and seen[0].startswith("INSERT"), seen  # at 1, known from the load
    assert store.history_chunks("i") == 2
    assert [e.result for e in store.read_history("i")] == list(range(41))  # type: ignore[attr-defined]
    store.close()
