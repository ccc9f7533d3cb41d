"""Checkpoint stores: where instances and their histories live.

The runtime talks to a store only through :class:`CheckpointStore`, so tests can
inject faults at this seam. :class:`DiskCacheStore` is the default and survives
kernel deaths; :class:`MemoryStore` is for tests and throwaway runs.

Layout of a :class:`DiskCacheStore` (one ``diskcache.Cache`` folder):

* ``"format"``: the store format version (an int).
* ``"i:<instance id>"``: the instance record (a plain dict).
* ``"h:<digest of id>-<15 digits>"``: history chunks, appended with
  ``Cache.push``, which allocates keys atomically even across processes. Each
  chunk is a list of encoded events written in one SQLite transaction, so a chunk
  is either wholly there or not at all.
* ``"h:<digest>:v:<call key>:<random>"``: a large result, in a file of its own.
* ``"l:<instance id>"``: the lease of the run in progress.
* ``"w"``: large writes in progress, so a kill mid-write leaves nothing stray.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import stat
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from durable_nb import history
from durable_nb.errors import StoreError
from durable_nb.fingerprint import digest_bytes
from durable_nb.store_values import (
    CHUNK_FILE_BYTES,
    LARGE_RESULT_BYTES,
    JsonValueDisk,
    LargeRef,
    StoredValue,
    ValueDisk,
    size_of,
    sweep_intents,
    write_large,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
STORE_ENV = "DURABLE_NB_STORE"
DEFAULT_FOLDER = ".durable_nb"

# diskcache numbers pushed keys from 500 trillion upwards (documented in Cache.push).
_FIRST_PUSHED = 500_000_000_000_000
_RESULT_FIELD = 4  # where the result sits in an encoded completion tuple


@dataclass
class InstanceRecord:
    """What a store knows about an instance without reading its history."""

    instance_id: str
    orchestrator: str
    # pending | running | suspended | completed | failed | interrupted | terminated
    status: str = "pending"
    created_at: float = 0.0
    updated_at: float = 0.0
    started_at: float = 0.0
    finished_at: float | None = None
    runs: int = 0
    custom_status: Any = None
    output: Any = None
    error: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    input: dict[str, Any] | None = None  # the orchestrator's arguments by name
    generation: int = 0  # how many times it continued as new
    parent: str | None = None  # the parent instance of a sub-orchestration

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstanceRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class CheckpointStore(Protocol):
    """The seam between the runtime and durable storage."""

    location: str

    def append(self, instance_id: str, events: Sequence[history.Event]) -> int:
        """Durably append ``events`` as one atomic chunk; returns the chunk's number."""

    def read_chunks(self, instance_id: str, start: int) -> list[tuple[int, list[history.Event]]]:
        """The chunks numbered ``start`` and up, with their numbers (to see what other
        processes appended: raised events, control requests)."""

    def read_history(self, instance_id: str) -> list[history.Event]:
        """Every event of the instance, oldest first."""

    def load_history(self, instance_id: str) -> tuple[list[history.Event], int]:
        """Every event of the instance, oldest first, and how many chunks held them."""

    def history_chunks(self, instance_id: str) -> int:
        """How many chunks the history is made of (compaction merges them)."""

    def compact(self, instance_id: str) -> None:
        """Rewrite the history as one chunk, atomically."""

    def get_instance(self, instance_id: str) -> InstanceRecord | None: ...

    def put_instance(self, record: InstanceRecord) -> None: ...

    def list_instances(self) -> list[InstanceRecord]: ...

    def purge(self, instance_id: str) -> bool:
        """Delete an instance and its history; False when there was nothing to delete."""

    def reset_history(self, record: InstanceRecord) -> None:
        """Atomically delete the instance's history and write its record
        (continue_as_new: a new input and an empty history, or neither)."""

    def get_lease(self, instance_id: str) -> dict[str, Any] | None: ...

    def storable(self, value: Any) -> bool:
        """Whether the store can serialise ``value``."""

    def swap_lease(
        self, instance_id: str, expected: str | None, lease: dict[str, Any] | None
    ) -> bool:
        """Atomically replace the lease if its current owner is ``expected`` (None: no
        lease); ``lease=None`` releases it. False when someone else holds it."""

    def close(self) -> None: ...


SERIALIZERS = ("pickle", "json")


def _check_private(path: Path) -> None:
    """Refuse a folder others can write to: loading a pickle from it would run their code."""
    info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022 or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
        raise StoreError(
            f"the checkpoint store at {path.resolve()} can be written by other users "
            f"(mode {mode:o}, owner uid {info.st_uid}); whoever can write there could make "
            "this kernel run their code when it loads checkpoints. If you trust its "
            f"contents, make it yours and private (chmod 700 {path}), or use another folder."
        )
    if mode & 0o077:
        path.chmod(0o700)  # readable by others: ours, so make it private


def default_location() -> Path:
    """``$DURABLE_NB_STORE`` if set, else ``.durable_nb`` in the working directory."""
    return Path(os.environ.get(STORE_ENV) or DEFAULT_FOLDER)


class DiskCacheStore:
    """A :class:`CheckpointStore` in a ``diskcache.Cache`` folder."""

    def __init__(
        self, directory: str | os.PathLike[str] | None = None, *, serializer: str = "pickle"
    ) -> None:
        import diskcache

        if serializer not in SERIALIZERS:
            raise StoreError(f"serializer must be one of {SERIALIZERS}, got {serializer!r}")
        self.serializer = serializer
        path = Path(directory) if directory is not None else default_location()
        self.location = str(path.resolve())
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            _check_private(path)
            # eviction_policy='none': the default policy would silently evict
            # checkpoints once the cache passes its 1 GB size limit.
            # tag_index: an instance's chunks share a tag, so purge and compaction
            # delete them with a few indexed statements.
            # disk_min_file_size: history chunks stay in SQLite, all or nothing, so a
            # kill mid-write leaves no stray file (see store_values).
            self._cache = diskcache.Cache(
                str(path),
                eviction_policy="none",
                tag_index=True,
                disk=JsonValueDisk if serializer == "json" else ValueDisk,
                disk_min_file_size=CHUNK_FILE_BYTES,
            )
            for name in os.listdir(path):
                if name.startswith("cache.db"):
                    os.chmod(path / name, 0o600)
        except StoreError:
            raise
        except (OSError, diskcache.Timeout) as exc:
            raise StoreError(
                f"cannot open the checkpoint store at {self.location}: {exc}. "
                f"Check the folder exists and is writable, or point {STORE_ENV} elsewhere."
            ) from exc
        except Exception as exc:  # sqlite3.DatabaseError on a damaged file
            raise StoreError(
                f"the checkpoint store at {self.location} cannot be read ({exc}). "
                f"`durable-nb doctor --store {self.location}` tells more; moving the folder "
                "aside starts afresh (checkpointed work then runs again)."
            ) from exc
        self._check_format()
        swept = sweep_intents(self._cache)
        if swept:
            logger.info("removed %s file(s) of large writes cut short: %s", len(swept), swept)

    def _check_format(self) -> None:
        found = self._cache.get("format")
        if found is None:
            self._cache.add("format", FORMAT_VERSION)
            self._cache.add("serializer", self.serializer)
        elif not isinstance(found, int) or found > FORMAT_VERSION:
            raise StoreError(
                f"the checkpoint store at {self.location} has format {found!r}, newer than "
                f"this durable_nb understands ({FORMAT_VERSION}); upgrade durable_nb."
            )
        stored = self._cache.get("serializer", "pickle")
        if stored != self.serializer:
            raise StoreError(
                f"the checkpoint store at {self.location} was written with the {stored} "
                f"serializer; open it with serializer={stored!r}, or use another folder"
            )

    @staticmethod
    def _prefix(instance_id: str) -> str:
        # A fixed-length hex digest: push() finds its last key by a key range, and
        # raw ids could be prefixes of each other ("a" and "a-1").
        return "h:" + digest_bytes(instance_id.encode())

    def _chunk_keys(self, instance_id: str) -> Iterator[str]:
        prefix = self._prefix(instance_id)
        number = _FIRST_PUSHED
        while True:
            key = f"{prefix}-{number:015d}"
            if key not in self._cache:
                return
            yield key
            number += 1

    def append(self, instance_id: str, events: Sequence[history.Event]) -> int:
        prefix = self._prefix(instance_id)
        chunk = [self._encode(prefix, event) for event in events]
        key = self._cache.push(chunk, prefix=prefix, tag=prefix, retry=True)
        return int(key.rsplit("-", 1)[1]) - _FIRST_PUSHED

    def _encode(self, prefix: str, event: history.Event) -> tuple[Any, ...]:
        row = history.encode(event)
        if self.serializer == "json":
            json.dumps(row)  # fail here, on this event, with a TypeError naming the type
            return row
        if isinstance(event, (history.TaskCompleted, history.SubOrchestrationCompleted)):
            if size_of(event.result) >= LARGE_RESULT_BYTES:
                key = f"{prefix}:v:{event.key}:{uuid.uuid4().hex[:12]}"
                write_large(self._cache, key, event.result, tag=prefix + ":v")
                row = (*row[:_RESULT_FIELD], LargeRef(key), *row[_RESULT_FIELD + 1 :])
        return row

    def storable(self, value: Any) -> bool:
        try:
            if self.serializer == "json":
                json.dumps(value)
            else:
                pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            return False
        return True

    def _decode(self, row: tuple[Any, ...]) -> history.Event:
        if len(row) > _RESULT_FIELD and isinstance(row[_RESULT_FIELD], LargeRef):
            stored = StoredValue(self._cache, row[_RESULT_FIELD].key)
            row = (*row[:_RESULT_FIELD], stored, *row[_RESULT_FIELD + 1 :])
        return history.decode(row)

    def read_chunks(self, instance_id: str, start: int) -> list[tuple[int, list[history.Event]]]:
        prefix = self._prefix(instance_id)
        found: list[tuple[int, list[history.Event]]] = []
        number = start
        while True:
            chunk = self._cache.get(f"{prefix}-{number + _FIRST_PUSHED:015d}", retry=True)
            if chunk is None:
                return found
            found.append((number, [self._decode(row) for row in chunk]))
            number += 1

    def read_history(self, instance_id: str) -> list[history.Event]:
        return self.load_history(instance_id)[0]

    def load_history(self, instance_id: str) -> tuple[list[history.Event], int]:
        events: list[history.Event] = []
        decode = self._decode
        prefix = self._prefix(instance_id)
        number = _FIRST_PUSHED
        while True:
            chunk = self._cache.get(f"{prefix}-{number:015d}", retry=True)
            if chunk is None:
                return events, number - _FIRST_PUSHED
            events.extend(decode(row) for row in chunk)
            number += 1

    def history_chunks(self, instance_id: str) -> int:
        return sum(1 for _ in self._chunk_keys(instance_id))

    def compact(self, instance_id: str) -> None:
        prefix = self._prefix(instance_id)
        with self._cache.transact(retry=True):
            keys = list(self._chunk_keys(instance_id))
            if len(keys) <= 1:
                return
            merged: list[Any] = []
            for key in keys:
                merged.extend(self._cache.get(key) or ())
            self._cache.evict(prefix)
            self._cache.push(merged, prefix=prefix, tag=prefix)

    def reset_history(self, record: InstanceRecord) -> None:
        with self._cache.transact(retry=True):
            self._cache.evict(self._prefix(record.instance_id))
            self._cache.evict(self._prefix(record.instance_id) + ":v")
            self._cache.set("i:" + record.instance_id, record.to_dict())

    def get_lease(self, instance_id: str) -> dict[str, Any] | None:
        found = self._cache.get("l:" + instance_id, retry=True)
        return dict(found) if found is not None else None

    def swap_lease(
        self, instance_id: str, expected: str | None, lease: dict[str, Any] | None
    ) -> bool:
        key = "l:" + instance_id
        with self._cache.transact(retry=True):
            current = self._cache.get(key)
            if (current["owner"] if current else None) != expected:
                return False
            if lease is None:
                self._cache.delete(key)
            else:
                self._cache.set(key, lease)
        return True

    def get_instance(self, instance_id: str) -> InstanceRecord | None:
        data = self._cache.get("i:" + instance_id, retry=True)
        return InstanceRecord.from_dict(data) if data is not None else None

    def put_instance(self, record: InstanceRecord) -> None:
        self._cache.set("i:" + record.instance_id, record.to_dict(), retry=True)

    def list_instances(self) -> list[InstanceRecord]:
        records = []
        for key in self._cache.iterkeys():
            if isinstance(key, str) and key.startswith("i:"):
                data = self._cache.get(key)
                if data is not None:
                    records.append(InstanceRecord.from_dict(data))
        return sorted(records, key=lambda r: r.created_at)

    def purge(self, instance_id: str) -> bool:
        with self._cache.transact(retry=True):
            existed = self._cache.delete("i:" + instance_id)
            removed = self._cache.evict(self._prefix(instance_id))
            self._cache.evict(self._prefix(instance_id) + ":v")
            self._cache.delete("l:" + instance_id)
        return bool(existed or removed)

    def close(self) -> None:
        self._cache.close()


class MemoryStore:
    """A :class:`CheckpointStore` in memory, for tests and throwaway runs."""

    def __init__(self) -> None:
        self.location = ":memory:"
        self._lock = threading.Lock()
        self._chunks: dict[str, list[list[tuple[Any, ...]]]] = {}
        self._records: dict[str, dict[str, Any]] = {}
        self._leases: dict[str, dict[str, Any]] = {}

    def append(self, instance_id: str, events: Sequence[history.Event]) -> int:
        chunk = [history.encode(event) for event in events]
        with self._lock:
            chunks = self._chunks.setdefault(instance_id, [])
            chunks.append(chunk)
            return len(chunks) - 1

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
            current = self._leases.get(instance_id)
            if (current["owner"] if current else None) != expected:
                return False
            if lease is None:
                self._leases.pop(instance_id, None)
            else:
                self._leases[instance_id] = dict(lease)
        return True

    def read_history(self, instance_id: str) -> list[history.Event]:
        return self.load_history(instance_id)[0]

    def load_history(self, instance_id: str) -> tuple[list[history.Event], int]:
        with self._lock:
            chunks = list(self._chunks.get(instance_id, ()))
        return [history.decode(row) for chunk in chunks for row in chunk], len(chunks)

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
        return had_record or had_chunks

    def close(self) -> None:
        pass
