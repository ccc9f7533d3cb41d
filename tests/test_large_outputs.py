"""Large outputs, inputs and custom statuses of instance records: stored once, in files,
loaded only when asked for (issue 11, point 4)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import durable_nb as dn
from durable_nb.runtime import Runtime
from durable_nb.store import DiskCacheStore
from durable_nb.store_values import LargeValueFile

np = pytest.importorskip("numpy")

BIG = 50 << 20  # 50 MiB


def _folder_bytes(folder: Path) -> int:
    return sum(
        os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files
    )


def _values(folder: Path) -> int:
    return len([f for _, _, files in os.walk(folder) for f in files if f.endswith(".val")])


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The keys of the large values loaded from the store, in order."""
    loaded: list[str] = []
    original = LargeValueFile.load

    def counting(self: LargeValueFile) -> Any:
        loaded.append(self._key)
        return original(self)

    monkeypatch.setattr(LargeValueFile, "load", counting)
    return loaded


def test_a_big_output_that_is_an_activity_result_is_stored_once(
    rt: Runtime, store_dir: Path, loads: list[str]
) -> None:
    @dn.activity
    def make_big(n: int) -> Any:
        return np.arange(n // 8, dtype=np.int64)

    @dn.orchestrator
    def passes_it_on(ctx):  # type: ignore[no-untyped-def]
        data = yield ctx.call_activity(make_big, BIG)
        return data

    expected = np.arange(BIG // 8, dtype=np.int64)
    assert np.array_equal(passes_it_on.run(), expected)
    used = _folder_bytes(store_dir)
    assert used <= 1.2 * BIG, f"{used / 2**20:.1f} MiB on disk for a 50 MiB result"
    assert _values(store_dir) == 1  # the output refers to the activity's result file

    (record,) = rt.store.list_instances()
    loads.clear()
    status = rt.status(record.instance_id)
    assert status is not None and status.status == "completed"
    assert loads == []  # reading the record for status does not load the output
    assert np.array_equal(passes_it_on.run(), expected)  # the recorded outcome
    assert len(loads) == 1
    assert _folder_bytes(store_dir) <= 1.2 * BIG
    assert rt.store.purge(record.instance_id)
    assert _values(store_dir) == 0


def test_big_inputs_outputs_and_custom_statuses_are_files_loaded_when_asked_for(
    rt: Runtime, store_dir: Path, loads: list[str]
) -> None:
    @dn.activity
    def count(n: int) -> int:
        return n

    @dn.orchestrator
    def doubles(ctx, data):  # type: ignore[no-untyped-def]
        ctx.set_custom_status(data + 1)
        yield ctx.call_activity(count, int(data.size))
        return data * 2

    data = np.ones(2 << 20, dtype=np.uint8)
    assert np.array_equal(doubles.run(data), data * 2)
    # input, custom status and output: one file each, written once however often the
    # record was written during the run
    assert _values(store_dir) == 3
    assert _folder_bytes(store_dir) < 4 * data.nbytes

    (record,) = rt.store.list_instances()
    loads.clear()
    assert record.status == "completed" and loads == []
    assert np.array_equal(record.output, data * 2) and len(loads) == 1
    assert np.array_equal(record.input["data"], data)
    assert np.array_equal(record.custom_status, data + 1)
    assert len(loads) == 3

    # A second run returns the recorded outcome and rewrites the record: no new files.
    assert np.array_equal(doubles.run(data), data * 2)
    assert _values(store_dir) == 3
    # Reopened elsewhere, the record still reads.
    reopened = DiskCacheStore(store_dir)
    try:
        again = reopened.get_instance(record.instance_id)
        assert again is not None and np.array_equal(again.output, data * 2)
    finally:
        reopened.close()
    assert rt.store.purge(record.instance_id)
    assert _values(store_dir) == 0


def test_a_replaced_big_value_leaves_no_file_behind(tmp_path: Path) -> None:
    from durable_nb.store import InstanceRecord

    store = DiskCacheStore(tmp_path / "s")
    try:
        record = InstanceRecord("i", "o", custom_status=np.zeros(2 << 20, dtype=np.uint8))
        store.put_instance(record)
        store.put_instance(record)  # the same value: still one file
        assert _values(tmp_path / "s") == 1
        record.custom_status = np.ones(2 << 20, dtype=np.uint8)
        store.put_instance(record)
        assert _values(tmp_path / "s") == 1  # the first one went
        record.custom_status = "small"
        store.put_instance(record)
        assert _values(tmp_path / "s") == 0
        found = store.get_instance("i")
        assert found is not None and found.custom_status == "small"
    finally:
        store.close()


def test_json_stores_keep_record_values_inline(tmp_path: Path) -> None:
    from durable_nb.store import InstanceRecord

    store = DiskCacheStore(tmp_path / "j", serializer="json")
    try:
        big = list(range(300_000))
        store.put_instance(InstanceRecord("i", "o", output=big, input={"n": big}))
        found = store.get_instance("i")
        assert found is not None and found.output == big and found.input == {"n": big}
        assert _values(tmp_path / "j") == 0
    finally:
        store.close()


def test_a_big_custom_status_outlives_the_history_it_came_from(
    rt: Runtime, store_dir: Path
) -> None:
    @dn.activity
    def count(n: int) -> int:
        return n

    @dn.orchestrator
    def rounds(ctx, n):  # type: ignore[no-untyped-def]
        if n == 0:
            ctx.set_custom_status(np.full(2 << 20, 7, dtype=np.uint8))
        yield ctx.call_activity(count, n)
        if n < 2:
            ctx.continue_as_new(n + 1)
        return n

    assert rounds.run(0) == 2
    (record,) = rt.store.list_instances()
    assert record.generation == 2
    # The first generation's history (and its files) went; the record kept its own copy.
    assert int(record.custom_status[0]) == 7 and record.custom_status.size == 2 << 20
    assert _values(store_dir) == 1


def test_a_big_write_through_sqlite_leaves_no_copy_in_the_wal(tmp_path: Path) -> None:
    from builders import completed

    store = DiskCacheStore(tmp_path / "s")
    try:
        # A list is not estimated as large: it goes inline, into a history chunk.
        store.append("i", [completed("a/1/2#0", list(range(500_000)))])
        wal = tmp_path / "s" / "cache.db-wal"
        assert not wal.exists() or wal.stat().st_size < 1 << 20
        assert store.read_history("i")[0].result == list(range(500_000))  # type: ignore[attr-defined]
    finally:
        store.close()


def test_a_new_generation_record_holds_its_values_not_references_to_them(
    tmp_path: Path,
) -> None:
    from builders import started

    from durable_nb import history
    from durable_nb.store import InstanceRecord

    store = DiskCacheStore(tmp_path / "s")
    try:
        status = np.full(2 << 20, 3, dtype=np.uint8)
        store.put_instance(InstanceRecord("i", "o"))
        store.append("i", [started(), history.CustomStatusSet(1.0, status)])
        (_, event) = store.read_history("i")
        record = InstanceRecord("i", "o", custom_status=event.value)  # type: ignore[attr-defined]
        store.put_instance(record)
        assert _values(tmp_path / "s") == 1  # the history's file, referred to
        record.generation = 1
        store.reset_history(record)  # the history's files go: the record keeps a copy
        assert _values(tmp_path / "s") == 1
        assert isinstance(record.custom_status, np.ndarray)
        found = store.get_instance("i")
        assert found is not None and np.array_equal(found.custom_status, status)
    finally:
        store.close()
