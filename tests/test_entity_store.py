"""Where entities live: the queue, the compare-and-set commit that applies a message
once, outcomes, locks and purges; the same contract for the store's SQLite tables and
for memory, and across processes for the tables."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from pathlib import Path

import pytest

from durable_nb.engine.entity_ids import LOCK, EntityId
from durable_nb.entity_store import (
    Applied,
    EntityFailure,
    EntityMessage,
    EntityStore,
    MemoryEntities,
    MessageOutcome,
)
from durable_nb.store import DiskCacheStore

C1 = EntityId("counter", "c1")


def message(n: int, entity: EntityId = C1, source: str | None = "inst") -> EntityMessage:
    return EntityMessage(f"m{n}", entity, "operation", "add", n, source)


@pytest.fixture(params=["memory", "sqlite-pickle", "sqlite-json"])
def entities(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EntityStore]:
    if request.param == "memory":
        yield MemoryEntities()
        return
    store = DiskCacheStore(tmp_path / "s", serializer=request.param.split("-")[1])
    yield store.entities
    store.close()


def test_messages_wait_in_the_order_they_arrived_and_an_id_is_queued_once(
    entities: EntityStore,
) -> None:
    assert [entities.enqueue(message(n)) for n in (3, 1, 2)] == [True] * 3
    assert entities.enqueue(message(1)) is False  # the same id again: no second message
    snapshot, waiting = entities.waiting(C1, 10)
    assert [m.input for m in waiting] == [3, 1, 2] and snapshot.waiting == 3
    assert not snapshot.exists and snapshot.version == 0
    assert [m.input for m in entities.waiting(C1, 2)[1]] == [3, 1]


def test_a_commit_applies_a_message_once_and_only_at_the_version_read(
    entities: EntityStore,
) -> None:
    entities.enqueue(message(1))
    entities.enqueue(message(2))
    snapshot, (first, second) = entities.waiting(C1, 10)
    assert entities.commit(first, 0, Applied(True, 1, None, MessageOutcome("r1")))
    # The same message again, or another read at the old version: refused, unchanged.
    assert not entities.commit(first, 1, Applied(True, 99, None, MessageOutcome()))
    assert not entities.commit(second, 0, Applied(True, 99, None, MessageOutcome()))
    snapshot, waiting = entities.waiting(C1, 10)
    assert (snapshot.exists, snapshot.state, snapshot.version) == (True, 1, 1)
    assert [m.message_id for m in waiting] == ["m2"]
    assert entities.outcome("m1") == MessageOutcome("r1", None, entities.outcome("m1").done)  # type: ignore[union-attr]
    assert entities.outcome("m2") is None and entities.is_queued("m2")


def test_a_failure_keeps_its_exception_where_the_store_can(
    entities: EntityStore, request: pytest.FixtureRequest
) -> None:
    entities.enqueue(message(1))
    _, (first,) = entities.waiting(C1, 1)
    error = KeyError("missing")
    failure = EntityFailure("KeyError", "'missing'", error)
    assert entities.commit(first, 0, Applied(False, None, None, MessageOutcome(None, failure)))
    outcome = entities.outcome("m1")
    assert outcome is not None and outcome.failure is not None
    assert (outcome.failure.error_type, outcome.failure.message) == ("KeyError", "'missing'")
    if "json" in request.node.callspec.id:
        assert outcome.failure.error is None  # known by name only
    else:
        assert isinstance(outcome.failure.error, KeyError)


def test_a_state_read_is_a_copy_of_its_own(entities: EntityStore) -> None:
    entities.enqueue(message(1))
    _, (first,) = entities.waiting(C1, 1)
    entities.commit(first, 0, Applied(True, {"items": [1]}, None, MessageOutcome()))
    snapshot, _ = entities.waiting(C1, 1)
    snapshot.state["items"].append(2)  # an operation changing it in place, then failing
    assert entities.waiting(C1, 1)[0].state == {"items": [1]}


def test_locks_are_released_by_their_holder_with_a_new_version(entities: EntityStore) -> None:
    entities.enqueue(EntityMessage("lock", C1, LOCK, None, None, "holder"))
    _, (lock,) = entities.waiting(C1, 1)
    entities.commit(lock, 0, Applied(False, None, "holder", MessageOutcome()))
    assert entities.read(C1).locked_by == "holder"  # type: ignore[union-attr]
    assert entities.release_locks("other") == []
    assert entities.release_locks("holder") == [C1]
    after = entities.read(C1)
    assert after is not None and after.locked_by is None and after.version == 2


def test_listing_purging_and_forgetting_what_a_purged_instance_sent(
    entities: EntityStore,
) -> None:
    other = EntityId("counter", "c2")
    entities.enqueue(message(1))
    entities.enqueue(message(2, other, source="gone"))
    entities.enqueue(message(3, EntityId("ledger", "x")))
    assert [str(s.entity) for s in entities.entities()] == [
        "@counter@c1",
        "@counter@c2",
        "@ledger@x",
    ]
    assert [str(s.entity) for s in entities.entities("ledger")] == ["@ledger@x"]
    _, (sent,) = entities.waiting(other, 1)
    entities.commit(sent, 0, Applied(True, 2, None, MessageOutcome()))
    entities.forget_sent("gone")
    assert not entities.is_queued("m2") and entities.read(other).state == 2  # type: ignore[union-attr]
    assert entities.purge(C1) and entities.read(C1) is None and not entities.purge(C1)


def _apply_all(folder: str, count: int) -> int:
    """In another process: apply counter messages, each once, by compare-and-set."""
    store = DiskCacheStore(folder)
    applied = 0
    try:
        while True:
            snapshot, waiting = store.entities.waiting(C1, 1)
            if not waiting:
                return applied
            state = (snapshot.state or 0) + waiting[0].input
            if store.entities.commit(
                waiting[0], snapshot.version, Applied(True, state, None, MessageOutcome())
            ):
                applied += 1
    finally:
        store.close()


def test_processes_racing_on_one_queue_apply_each_message_once(tmp_path: Path) -> None:
    store = DiskCacheStore(tmp_path / "s")
    for n in range(1, 201):
        store.entities.enqueue(message(n))
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        counts = pool.starmap(_apply_all, [(str(tmp_path / "s"), 200)] * 3)
    assert sum(counts) == 200
    final = store.entities.read(C1)
    assert final is not None and final.state == sum(range(1, 201)) and final.version == 200
    store.close()
