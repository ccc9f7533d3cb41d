"""A :class:`~durable_nb.store.CheckpointStore` in memory, for tests and throwaway runs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Sequence
from typing import Any

from durable_nb import history
from durable_nb.entity_store import MemoryEntities
from durable_nb.fingerprint import KEY_SCHEME
from durable_nb.store import InstanceRecord, SharedResult, shared_digest


class MemoryStore:
    """A :class:`CheckpointStore` in memory, for tests and throwaway runs."""

    def __init__(self) -> None:
        self.location = ":memory:"
        self.key_schemes = (KEY_SCHEME,)
        self._lock = threading.Lock()
        self._chunks: dict[str, list[list[tuple[Any, ...]]]] = {}
        self._records: dict[str, dict[str, Any]] = {}
        self._leases: dict[str, dict[str, Any]] = {}
        # (activity, digest) -> finished, instance, result; and each instance's keys.
        self._shared: dict[tuple[str, str], tuple[float, str, Any]] = {}
        self._shared_by: dict[str, set[tuple[str, str]]] = {}
        self.entities = MemoryEntities()
        self._appends = 0  # every writer's: it cannot tell one from another

    def append(
        self, instance_id: str, events: Sequence[history.Event], share: Collection[str] = ()
    ) -> int:
        chunk = [history.encode(event) for event in events]
        with self._lock:
            chunks = self._chunks.setdefault(instance_id, [])
            chunks.append(chunk)
            self._appends += 1
            if share and instance_id in self._records:
                share = set(share)
                for event in events:
                    if isinstance(event, history.TaskCompleted) and event.key in share:
                        self._share(instance_id, event)
            return len(chunks) - 1

    def _share(self, instance_id: str, event: history.TaskCompleted) -> None:
        key = (event.activity, shared_digest(event.activity, event.key))
        previous = self._shared.get(key)
        if previous is not None:
            self._shared_by.get(previous[1], set()).discard(key)
        self._shared[key] = (event.timestamp, instance_id, event.result)
        self._shared_by.setdefault(instance_id, set()).add(key)

    def find_shared(
        self, activity: str, digest: str, newer_than: float | None
    ) -> SharedResult | None:
        with self._lock:
            found = self._shared.get((activity, digest))
        if found is None or (newer_than is not None and found[0] < newer_than):
            return None
        return SharedResult(found[2], found[0], found[1])

    def find_shared_many(
        self, activity: str, digests: Sequence[str], newer_than: float | None
    ) -> dict[str, SharedResult]:
        found = {d: self.find_shared(activity, d, newer_than) for d in digests}
        return {digest: shared for digest, shared in found.items() if shared is not None}

    def append_late(
        self, instance_id: str, history_id: str, events: Sequence[history.Event]
    ) -> bool:
        chunk = [history.encode(event) for event in events]
        with self._lock:
            data = self._records.get(instance_id)
            if data is None or InstanceRecord.from_dict(dict(data)).history_id != history_id:
                return False
            self._chunks.setdefault(instance_id, []).append(chunk)
            self._appends += 1
        return True

    def read_chunks(self, instance_id: str, start: int) -> list[tuple[int, list[history.Event]]]:
        with self._lock:
            chunks = list(self._chunks.get(instance_id, ()))[start:]
        return [
            (start + i, [history.decode(row) for row in chunk]) for i, chunk in enumerate(chunks)
        ]

    def reset_history(self, record: InstanceRecord) -> None:
        with self._lock:
            self._chunks.pop(record.instance_id, None)
            self._records[record.instance_id] = record.to_dict()

    def storable(self, value: Any) -> bool:
        return True

    def get_lease(self, instance_id: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._leases.get(instance_id)
        return dict(found) if found is not None else None

    def swap_lease(
        self, instance_id: str, expected: str | None, lease: dict[str, Any] | None
    ) -> bool:
        with self._lock:
            if self._lease_owner(instance_id) != expected:
                return False
            if lease is None:
                self._leases.pop(instance_id, None)
            else:
                self._leases[instance_id] = dict(lease)
        return True

    def open_run(
        self,
        instance_id: str,
        expected: str | None,
        lease: dict[str, Any],
        opened: Callable[[InstanceRecord | None], InstanceRecord],
    ) -> InstanceRecord | None:
        with self._lock:
            if self._lease_owner(instance_id) != expected:
                return None
            data = self._records.get(instance_id)
            record = opened(InstanceRecord.from_dict(dict(data)) if data is not None else None)
            self._leases[instance_id] = dict(lease)
            self._records[instance_id] = record.to_dict()
        return record

    def close_run(
        self, record: InstanceRecord, events: Sequence[history.Event], lease_owner: str | None
    ) -> None:
        chunk = [history.encode(event) for event in events]
        with self._lock:
            if chunk:
                self._chunks.setdefault(record.instance_id, []).append(chunk)
                self._appends += 1
            self._records[record.instance_id] = record.to_dict()
            if lease_owner is not None and self._lease_owner(record.instance_id) == lease_owner:
                del self._leases[record.instance_id]

    def _lease_owner(self, instance_id: str) -> str | None:
        """Who holds the instance's lease (None: nobody); the caller holds the lock."""
        current = self._leases.get(instance_id)
        return current["owner"] if current is not None else None

    def read_history(self, instance_id: str) -> list[history.Event]:
        return self.load_history(instance_id)[0]

    def write_mark(self) -> int:
        return self._appends

    def load_history(
        self, instance_id: str, compact_after: int | None = None, *, scheduled: bool = True
    ) -> tuple[list[history.Event], int]:
        with self._lock:
            chunks = list(self._chunks.get(instance_id, ()))
            if compact_after is not None and len(chunks) > compact_after:
                chunks = [[row for chunk in chunks for row in chunk]]
                self._chunks[instance_id] = list(chunks)
        skip = None if scheduled else history.TaskScheduled.TAG
        rows = [row for chunk in chunks for row in chunk if row[0] != skip]
        return [history.decode(row) for row in rows], len(chunks)

    def history_chunks(self, instance_id: str) -> int:
        with self._lock:
            return len(self._chunks.get(instance_id, ()))

    def compact(self, instance_id: str) -> None:
        with self._lock:
            chunks = self._chunks.get(instance_id)
            if chunks and len(chunks) > 1:
                self._chunks[instance_id] = [[row for chunk in chunks for row in chunk]]

    def get_instance(self, instance_id: str) -> InstanceRecord | None:
        with self._lock:
            data = self._records.get(instance_id)
        return InstanceRecord.from_dict(dict(data)) if data is not None else None

    def put_instance(self, record: InstanceRecord) -> None:
        with self._lock:
            self._records[record.instance_id] = record.to_dict()

    def list_instances(self) -> list[InstanceRecord]:
        with self._lock:
            records = [InstanceRecord.from_dict(dict(d)) for d in self._records.values()]
        return sorted(records, key=lambda r: r.created_at)

    def purge(self, instance_id: str) -> bool:
        with self._lock:
            had_record = self._records.pop(instance_id, None) is not None
            had_chunks = self._chunks.pop(instance_id, None) is not None
            self._leases.pop(instance_id, None)
            for key in self._shared_by.pop(instance_id, ()):
                self._shared.pop(key, None)
        self.entities.forget_sent(instance_id)
        return had_record or had_chunks

    def close(self) -> None:
        pass
