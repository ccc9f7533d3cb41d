"""Checkpoint stores: where instances and their histories live.

The runtime talks to a store only through :class:`CheckpointStore`
(:mod:`durable_nb.store_protocol`, re-exported here), so tests can inject faults at this
seam. :class:`DiskCacheStore` is the default and survives kernel deaths;
:class:`~durable_nb.memory_store.MemoryStore` is for tests and throwaway runs.

Layout of a :class:`DiskCacheStore` (one ``diskcache.Cache`` folder):

* Tables of its own in diskcache's ``cache.db`` (:mod:`durable_nb.tables`):
  instance records, leases, and history chunks, one stream ``"h:<digest of id>"``
  per instance. A chunk is a list of encoded events written in one SQLite
  transaction, so it is either wholly there or not at all. Shared results of
  ``share=True`` activities are rows of their own table, written in the transaction
  of their chunk and deleted with their instance. Schedules are rows of
  ``durable_schedules``, created by :mod:`durable_nb.schedules` with the first one.
* diskcache keys: ``"format"`` (the store format version), ``"key_schemes"`` (how
  the call keys it holds were digested, :mod:`durable_nb.store_versions`), ``"serializer"``,
  ``"h:<digest>:v:<call key>:<random>"`` (a large result, in a file of its own; a large
  custom status of the history is ``"h:<digest>:v:custom_status:<random>"``),
  ``"h:<digest>:v:record:<random>"`` (a large value of the instance record, tagged
  ``"h:<digest>:r"``: :mod:`durable_nb.record_values`) and ``"w"`` (large writes in
  progress, so a kill mid-write leaves nothing stray).

Format 1 kept records, leases and chunks as diskcache keys (now moved: store_versions).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pickle
import uuid
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from durable_nb import history
from durable_nb.entity_tables import SqliteEntities
from durable_nb.errors import StoreError
from durable_nb.fingerprint import digest_bytes
from durable_nb.instance_record import InstanceRecord as InstanceRecord
from durable_nb.record_values import RecordValues, record_tag
from durable_nb.store_folder import STORE_ENV, check_private, default_location, open_cache
from durable_nb.store_protocol import CheckpointStore as CheckpointStore
from durable_nb.store_values import (
    LARGE_RESULT_BYTES,
    RESULT_FIELD,
    JsonValueDisk,
    LargeRef,
    LargeValueFile,
    ValueDisk,
    json_dumps,
    pickle_dumps,
    shared_rows,
    size_of,
    sweep_intents,
    write_large,
    writes_in_progress,
)
from durable_nb.store_values import SharedResult as SharedResult
from durable_nb.store_values import shared_digest as shared_digest
from durable_nb.store_versions import open_versions
from durable_nb.tables import SharedRow, StoreTables

logger = logging.getLogger(__name__)


# The events whose value may be large, and where it sits in the encoded tuple.
_LARGE_FIELDS: dict[type[history.Event], int] = {
    history.TaskCompleted: RESULT_FIELD,
    history.SubOrchestrationCompleted: RESULT_FIELD,
    history.CustomStatusSet: 2,
}
_LARGE_AT = {cls.TAG: at for cls, at in _LARGE_FIELDS.items()}  # the same, by row tag
# SQLite refuses a value over 1e9 bytes; chunks are kept well below.
MAX_CHUNK_BYTES = 256 << 20
# Results that are never large: no size estimate for them (str has none anyway).
_SMALL_TYPES = frozenset({int, float, bool, type(None), str, complex})


SERIALIZERS = ("pickle", "json")


class DiskCacheStore:
    """A :class:`CheckpointStore` in a ``diskcache.Cache`` folder."""

    def __init__(
        self, directory: str | os.PathLike[str] | None = None, *, serializer: str = "pickle"
    ) -> None:
        import diskcache

        if serializer not in SERIALIZERS:
            raise StoreError(
                f"serializer must be one of {SERIALIZERS}, got {serializer!r}",
                location=None if directory is None else str(directory),
            )
        self.serializer = serializer
        self._json = serializer == "json"
        self._dumps: Callable[[Any], bytes] = json_dumps if serializer == "json" else pickle_dumps
        self._loads: Callable[[bytes], Any] = json.loads if serializer == "json" else pickle.loads
        path = Path(directory) if directory is not None else default_location()
        self.location = str(path.resolve())
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            check_private(path)
            self._cache = open_cache(path, JsonValueDisk if serializer == "json" else ValueDisk)
            self._tables = StoreTables(os.path.join(self.location, "cache.db"))
            for name in os.listdir(path):
                if name.startswith("cache.db"):
                    os.chmod(path / name, 0o600)
        except StoreError:
            raise
        except (OSError, diskcache.Timeout) as exc:
            raise StoreError(
                f"cannot open the checkpoint store at {self.location}: {exc}. "
                f"Check the folder exists and is writable, or point {STORE_ENV} elsewhere.",
                location=self.location,
            ) from exc
        except Exception as exc:  # sqlite3.DatabaseError on a damaged file
            raise StoreError(
                f"the checkpoint store at {self.location} cannot be read ({exc}). "
                f"`durable-nb doctor --store {self.location}` tells more; moving the folder "
                "aside starts afresh (checkpointed work then runs again).",
                location=self.location,
            ) from exc
        self.versions = open_versions(
            self._cache,
            self._tables,
            self.location,
            self.serializer,
            self._dumps,
            lambda data: InstanceRecord.from_dict(data).history_id,
        )
        self.key_schemes = self.versions.key_schemes
        self._records = RecordValues(self._cache, self._dumps, self._loads, serializer == "json")
        self.entities = SqliteEntities(self._tables, self._dumps, self._loads, not self._json)
        swept = sweep_intents(self._cache)
        if swept:
            logger.info("removed %s file(s) of large writes cut short: %s", len(swept), swept)

    @staticmethod
    @functools.lru_cache(maxsize=4096)  # a digest per append otherwise
    def _stream_of(instance_id: str) -> str:
        # A fixed-length digest: raw ids can hold any character, and the large
        # results of an instance are tagged "<stream>:v".
        return "h:" + digest_bytes(instance_id.encode())

    # ------------------------------------------------------------ history

    def append(
        self, instance_id: str, events: Sequence[history.Event], share: Collection[str] = ()
    ) -> int:
        stream = self._stream_of(instance_id)
        rows = self._encode_all(stream, events)
        if not share:
            return self._append_rows(stream, rows)
        shared = shared_rows(events, rows, share, self._dumps)
        return self._append_rows(stream, rows, instance_id, shared)

    def _append_rows(
        self,
        stream: str,
        rows: list[tuple[Any, ...]],
        instance_id: str = "",
        shared: Sequence[SharedRow] = (),
    ) -> int:
        data = self._dumps(rows)
        if len(data) > MAX_CHUNK_BYTES and len(rows) > 1:
            # Too big for one SQLite row (a burst of results just under the size that
            # gets a file of its own): written as several chunks, in order. Each event
            # stands alone, so a crash between them keeps what was written (the shared
            # rows go with the last chunk: a crash before it only shares less).
            del data
            half = len(rows) // 2
            self._append_rows(stream, rows[:half])
            return self._append_rows(stream, rows[half:], instance_id, shared)
        return self._tables.append(stream, data, instance_id, shared)

    def find_shared(
        self, activity: str, digest: str, newer_than: float | None
    ) -> SharedResult | None:
        return self.find_shared_many(activity, [digest], newer_than).get(digest)

    def find_shared_many(
        self, activity: str, digests: Sequence[str], newer_than: float | None
    ) -> dict[str, SharedResult]:
        found: dict[str, SharedResult] = {}
        for digest, finished, instance_id, _, data in self._tables.find_shared(activity, digests):
            if newer_than is not None and finished < newer_than:
                continue
            value = self._loads(data)
            if isinstance(value, LargeRef):
                try:
                    value = LargeValueFile(self._cache, value.key).load()
                except StoreError:  # its file went with a purge under way: not shared now
                    self._tables.forget_shared(activity, digest, instance_id)
                    continue
            found[digest] = SharedResult(value, finished, instance_id)
        return found

    def append_late(
        self, instance_id: str, history_id: str, events: Sequence[history.Event]
    ) -> bool:
        stream = self._stream_of(instance_id)
        data = self._dumps(self._encode_all(stream, events))
        return self._tables.append_if(stream, data, instance_id, history_id)

    def _encode_all(self, stream: str, events: Sequence[history.Event]) -> list[tuple[Any, ...]]:
        return [self._encode(stream, event) for event in events]

    def _encode(self, stream: str, event: history.Event) -> tuple[Any, ...]:
        row = history.encode(event)
        if self._json:
            json.dumps(row)  # fail here, on this event, with a TypeError naming the type
            return row
        at = _LARGE_FIELDS.get(type(event))
        if at is None or type(row[at]) in _SMALL_TYPES:
            return row
        if size_of(row[at]) >= LARGE_RESULT_BYTES:
            key = f"{stream}:v:{getattr(event, 'key', event.TAG)}:{uuid.uuid4().hex[:12]}"
            write_large(self._cache, key, row[at], tag=stream + ":v")
            self._records.remember(key, row[at])
            row = (*row[:at], LargeRef(key), *row[at + 1 :])
        return row

    def storable(self, value: Any) -> bool:
        try:
            self._dumps(value)
        except Exception:
            return False
        return True

    def _decode_rows(self, rows: list[Any]) -> list[history.Event]:
        events, decode = [], history.decode
        for row in rows:
            at = _LARGE_AT.get(row[0])  # only where _encode puts them
            if at is not None and isinstance(row[at], LargeRef):
                row = (*row[:at], self._stored(row[at]), *row[at + 1 :])
            events.append(decode(row))
        return events

    def _stored(self, value: Any) -> Any:
        if not isinstance(value, LargeRef):
            return value
        stored = LargeValueFile(self._cache, value.key)
        self._records.remember(stored.key, stored)
        return stored

    def read_chunks(self, instance_id: str, start: int) -> list[tuple[int, list[history.Event]]]:
        rows = self._tables.read(self._stream_of(instance_id), start)
        return [(number, self._decode_rows(self._loads(data))) for number, data in rows]

    def read_history(self, instance_id: str) -> list[history.Event]:
        return self.load_history(instance_id)[0]

    def write_mark(self) -> int:
        return self._tables.data_version()

    def load_history(
        self, instance_id: str, compact_after: int | None = None, *, scheduled: bool = True
    ) -> tuple[list[history.Event], int]:
        stream = self._stream_of(instance_id)
        skip = None if scheduled else history.TaskScheduled.TAG
        if compact_after is None:
            chunks, count = self._tables.read_all(stream)
        else:
            loaded: list[Any] = []  # the rows of every chunk, when they were merged

            def merge(chunks: list[bytes]) -> bytes:
                loaded.extend(row for data in chunks for row in self._loads(data))
                return self._dumps(loaded)

            chunks, count = self._tables.read_compacting(stream, compact_after, merge)
            if loaded:  # decoded from the rows the merge read, compacted or not
                return self._decode_rows([row for row in loaded if row[0] != skip]), count
        loads = self._loads  # a chain's history is a chunk per step: one pass, one decode
        rows = [row for data in chunks for row in loads(data) if row[0] != skip]
        return self._decode_rows(rows), count

    def history_chunks(self, instance_id: str) -> int:
        return self._tables.count(self._stream_of(instance_id))

    def compact(self, instance_id: str) -> None:
        self._tables.compact(self._stream_of(instance_id), self._merge)

    def _merge(self, chunks: list[bytes]) -> bytes:
        return self._dumps([row for data in chunks for row in self._loads(data)])

    def reset_history(self, record: InstanceRecord) -> None:
        stream = self._stream_of(record.instance_id)
        data = self._records.dumps(record, stream, history_refs=False)
        old = self._tables.reset(stream, record.instance_id, data, record.history_id)
        self._cache.evict(stream + ":v", retry=True)  # no history refers to them now
        self._records.drop_replaced(old, data)

    # ------------------------------------------------------------ instances and leases

    def get_instance(self, instance_id: str) -> InstanceRecord | None:
        data = self._tables.get_instance(instance_id)
        return InstanceRecord.from_dict(self._records.loads(data)) if data is not None else None

    def put_instance(self, record: InstanceRecord) -> None:
        # Large values go to files first (durable_nb.record_values).
        data = self._records.dumps(record, self._stream_of(record.instance_id))
        old = self._tables.put_instance(record.instance_id, data, record.history_id)
        self._records.drop_replaced(old, data)

    def list_instances(self) -> list[InstanceRecord]:
        records = [
            InstanceRecord.from_dict(self._records.loads(d)) for d in self._tables.instances()
        ]
        return sorted(records, key=lambda r: r.created_at)

    def purge(self, instance_id: str) -> bool:
        stream = self._stream_of(instance_id)
        removed = self._tables.purge(stream, instance_id)
        self.entities.forget_sent(instance_id)
        self._cache.evict(stream + ":v", retry=True)
        self._cache.evict(record_tag(stream), retry=True)
        return removed

    def get_lease(self, instance_id: str) -> dict[str, Any] | None:
        found = self._tables.get_lease(instance_id)
        return dict(json.loads(found)) if found is not None else None

    def swap_lease(
        self, instance_id: str, expected: str | None, lease: dict[str, Any] | None
    ) -> bool:
        owner = lease["owner"] if lease is not None else None
        data = json.dumps(lease) if lease is not None else None
        return self._tables.swap_lease(instance_id, expected, owner, data)

    def open_run(
        self,
        instance_id: str,
        expected: str | None,
        lease: dict[str, Any],
        opened: Callable[[InstanceRecord | None], InstanceRecord],
    ) -> InstanceRecord | None:
        # Read and made outside the transaction: a large value of the record goes to a
        # file first, through diskcache's own connection, which a transaction held here
        # would lock out. The transaction writes only if the record is still as read.
        seen = self._tables.get_instance(instance_id)
        record = opened(
            InstanceRecord.from_dict(self._records.loads(seen)) if seen is not None else None
        )
        data = self._records.dumps(record, self._stream_of(instance_id))
        owner = lease["owner"]
        if not self._tables.open_run(
            instance_id, expected, owner, json.dumps(lease), seen, data, record.history_id
        ):
            return None
        self._records.drop_replaced(seen, data)
        return record

    def close_run(
        self, record: InstanceRecord, events: Sequence[history.Event], lease_owner: str | None
    ) -> None:
        stream = self._stream_of(record.instance_id)
        data = self._records.dumps(record, stream)  # first: a record that cannot be written
        chunk = None  # fails before any of the chunk's large results goes to a file
        if events:
            rows = self._encode_all(stream, events)
            chunk = self._dumps(rows)
            if len(chunk) > MAX_CHUNK_BYTES:  # written as chunks of their own, in order
                chunk = None
                self._append_rows(stream, rows)
        old = self._tables.close_run(
            stream, chunk, record.instance_id, data, record.history_id, lease_owner
        )
        self._records.drop_replaced(old, data)

    def orphans(self) -> tuple[list[str], list[str]]:
        """Histories and large results of no instance: left by a result that arrived
        after its instance was purged, or by a crash between a purge's two steps. Returns
        (history streams, large result keys)."""
        known = {self._stream_of(record.instance_id) for record in self.list_instances()}
        streams = [stream for stream in self._tables.streams() if stream not in known]
        values = [
            key
            for key in self._cache.iterkeys()
            if isinstance(key, str) and ":v:" in key and key.split(":v:", 1)[0] not in known
        ]
        return streams, values

    def remove_orphans(self, streams: list[str], values: list[str]) -> None:
        for stream in streams:
            self._tables.delete_stream(stream)
        for key in values:
            self._cache.delete(key, retry=True)

    def check_files(self, fix: bool) -> list[str]:
        """diskcache's check of its rows against its files (``fix``: delete files no row
        names, which would destroy a large write in progress: see
        :meth:`writes_in_progress`)."""
        return [str(warning.message) for warning in self._cache.check(fix=fix)]

    def writes_in_progress(self) -> bool:
        """Whether some live process is writing a large result into this store now."""
        return writes_in_progress(self._cache)

    def close(self) -> None:
        self._tables.close()
        self._cache.close()
