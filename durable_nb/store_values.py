"""How a :class:`~durable_nb.store.DiskCacheStore` puts values on disk.

Two concerns live here, below the store's keys and chunks:

* **Nothing stray after a kill.** diskcache writes a file-backed value's file
  first and commits its row after, so a SIGKILL in between leaves a file no row
  names ("unknown file" in ``Cache.check``). History chunks are rows of the store's
  own table (:mod:`durable_nb.tables`), all or nothing. Large results must be
  files, so each one is written under an *intent*: before the file, the writer
  records the result's key and its own pid in one small SQLite row; once the
  result's row is in, the intent is dropped.
  :func:`sweep_intents` deletes the files of intents whose writer died before
  finishing. An intent of a live process is never touched, so a sweep cannot race
  a write in progress.
* **Large results streamed.** A result of ``LARGE_RESULT_BYTES`` or more is
  pickled straight into its own file (no second copy in memory) and loaded only
  when the orchestrator uses it (:class:`LargeValueFile`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pickle
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import diskcache

from durable_nb import history
from durable_nb.errors import StoreError
from durable_nb.fingerprint import digest_bytes
from durable_nb.processes import on_this_host, process_exists, this_process


@dataclass(frozen=True)
class SharedResult:
    """A success of a ``share=True`` activity, found for a call of any instance."""

    result: Any
    finished: float  # when it finished, epoch seconds
    instance_id: str  # the instance whose call it was


def shared_digest(activity: str, key: str) -> str:
    """What shared results are matched by: the call key without the activity's name and
    the occurrence (``"name/code16/args#n"`` gives ``"code16/args"``)."""
    triple = key.rpartition("#")[0] or key
    prefix = activity + "/"
    return triple[len(prefix) :] if triple.startswith(prefix) else triple


RESULT_FIELD = 4  # where the result sits in an encoded completion tuple


def shared_rows(
    events: Sequence[history.Event],
    rows: list[tuple[Any, ...]],
    share: Collection[str],
    dumps: Callable[[Any], bytes],
) -> list[tuple[str, str, float, str | None, bytes]]:
    """The shared-table rows of the completions named in ``share``. A large result
    is shared by reference to the file of this instance's history: a purge or new
    generation of this instance deletes the row with the file, and an instance that
    reuses it stores its own copy (``find_shared`` loads it; appending writes it)."""
    found = []  # durable_nb.tables.SharedRow (a layer apart: not imported)
    wanted = set(share)
    for event, row in zip(events, rows, strict=True):
        if isinstance(event, history.TaskCompleted) and event.key in wanted:
            value = row[RESULT_FIELD]
            large = value.key if isinstance(value, LargeRef) else None
            digest = shared_digest(event.activity, event.key)
            found.append((event.activity, digest, event.timestamp, large, dumps(value)))
    return found


def pickle_dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def json_dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


# Results at least this big are stored on their own, streamed to a file, so that
# checkpointing them holds no second copy in memory and replay reads them only when used.
LARGE_RESULT_BYTES = 1 << 20
T = TypeVar("T")
_INTENTS = "w"  # the key of the table of large writes in progress
# An intent from another host cannot be checked by pid; after this long it is stale.
_FOREIGN_INTENT_SECONDS = 24 * 3600


def size_of(value: Any) -> int:
    """A cheap estimate of a value's size for the kinds that get big (arrays, frames, bytes)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value)
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    usage = getattr(value, "memory_usage", None)
    if callable(usage) and hasattr(value, "columns"):
        try:
            return int(usage(index=True, deep=False).sum())
        except Exception:
            return 0
    return 0


def estimate_size(value: Any, depth: int = 3) -> int:
    """:func:`size_of`, adding up the items of tuples, lists and dicts (an input by
    name, an output ``(frame, array)``) a few levels down; a long list of small items
    is not walked past its first thousand."""
    found = size_of(value)
    if found or depth == 0:
        return found
    items = value.values() if isinstance(value, dict) else value
    if not isinstance(value, (dict, list, tuple)):
        return 0
    return sum(estimate_size(item, depth - 1) for item in itertools.islice(items, 1000))


class LargeRef:
    """What a history chunk holds in place of a large result: the key of its value."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        return (LargeRef, (self.key,))


class LargeValueFile(history.LargeValue):
    """A large result in a DiskCacheStore, loaded on first use."""

    __slots__ = ("_cache", "_key", "_loaded", "_value")

    def __init__(self, cache: Any, key: str) -> None:
        self._cache, self._key = cache, key
        self._loaded, self._value = False, None

    @property
    def key(self) -> str:
        return self._key

    @classmethod
    def holding(cls, cache: Any, key: str, value: Any) -> LargeValueFile:
        """The stored value of ``key``, which is ``value``: already loaded."""
        stored = cls(cache, key)
        stored._loaded, stored._value = True, value
        return stored

    def holds(self, value: Any) -> bool:
        """Whether this is loaded and is ``value`` (the same object)."""
        return self._loaded and self._value is value

    def load(self) -> Any:
        if not self._loaded:
            handle = self._cache.get(self._key, read=True, retry=True)
            if handle is None:
                raise StoreError(f"the stored result {self._key} is missing from the store")
            with handle:
                self._value = pickle.load(handle)
            self._loaded = True
        return self._value


class LazyField(Generic[T]):
    """A field of :class:`~durable_nb.store.InstanceRecord` (output, input, custom
    status) that the store may keep in a file: it holds a :class:`history.LargeValue`
    then, and reading the field loads it (once). The store reads and writes what the
    field holds with :func:`raw_field`, so a record read for a list or a status never
    loads a large output."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._slot = "_lazy_" + name

    def __get__(self, record: Any, owner: type | None = None) -> T:
        if record is None:
            return None  # type: ignore[return-value]  # the dataclass field's default
        value = record.__dict__.get(self._slot)
        return value.load() if isinstance(value, history.LargeValue) else value  # type: ignore[no-any-return]

    def __set__(self, record: Any, value: T) -> None:
        record.__dict__[self._slot] = value


def raw_field(record: Any, name: str) -> Any:
    """What a :class:`LazyField` holds, unloaded."""
    return record.__dict__.get("_lazy_" + name)


def set_raw_field(record: Any, name: str, value: Any) -> None:
    record.__dict__["_lazy_" + name] = value


class _Streamed:
    """A value for :class:`ValueDisk` to pickle straight into its own file."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def large_filename(key: str) -> str:
    """The file of a large result: fixed by its key, so an intent can name it up front."""
    name = digest_bytes(key.encode())[:32]
    return os.path.join(name[:2], name[2:4], name[4:] + ".val")


def _private_folders(directory: str, folder: str) -> None:
    """Create the missing folders from ``directory`` down to ``folder``, each 0700
    whatever the umask (``os.makedirs(mode=...)`` is subject to it and leaves the
    folders it finds as they are)."""
    path = directory
    relative = os.path.relpath(folder, directory)
    for part in [] if relative == os.curdir else relative.split(os.sep):
        path = os.path.join(path, part)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        os.chmod(path, 0o700)


def _open_private(directory: str, full_path: str, mode: str, encoding: str | None = None) -> Any:
    """Open ``full_path`` (under ``directory``) for writing as a file of mode 0600, in
    private folders: the store promises both. ``mode`` is ``open``'s: "x" (exclusive)
    or "w", binary or text."""
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_BINARY", 0)
    flags |= os.O_EXCL if "x" in mode else os.O_TRUNC
    for attempt in range(10):
        with contextlib.suppress(OSError):
            _private_folders(directory, os.path.dirname(full_path))
        try:
            fd = os.open(full_path, flags, 0o600)
        except FileNotFoundError:
            # Another process removed the folder as it emptied it (Disk.remove).
            if attempt == 9:
                raise
            continue
        try:
            os.chmod(full_path, 0o600)  # os.open's mode is subject to the umask
            return os.fdopen(fd, mode.replace("x", "w"), encoding=encoding)
        except BaseException:
            os.close(fd)
            raise
    raise AssertionError("unreachable")


class ValueDisk(diskcache.Disk):  # type: ignore[misc, unused-ignore]
    """diskcache's Disk, plus large results pickled into a file named by their key; every
    file and folder it writes is private (0600 and 0700), as the store's folder is."""

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if not isinstance(value, _Streamed):
            return super().store(value, read, key=key)
        filename = large_filename(key)
        full_path = os.path.join(self._directory, filename)
        with _open_private(self._directory, full_path, "wb") as out:
            pickle.dump(value.value, out, protocol=pickle.HIGHEST_PROTOCOL)
        return os.path.getsize(full_path), diskcache.core.MODE_BINARY, filename, None

    def _write(self, full_path: str, iterator: Any, mode: str, encoding: str | None = None) -> int:
        """diskcache's own writer of the values it puts in files (big bytes, str and
        pickles), with private files and folders."""
        with _open_private(self._directory, full_path, mode, encoding) as writer:
            size = 0
            for chunk in iterator:
                size += len(chunk)
                writer.write(chunk)
            return size


class JsonValueDisk(ValueDisk):
    """Values as JSON (keys stay plain strings), for stores that must never unpickle."""

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if not read and not isinstance(value, (str, int, float, _Streamed)):
            value = json.dumps(value).encode()
        return super().store(value, read, key=key)

    def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> Any:
        found = super().fetch(mode, filename, value, read)
        if not read and isinstance(found, (bytes, bytearray)):
            return json.loads(found)  # every bytes value here is JSON written above
        return found


def write_large(cache: Any, key: str, value: Any, tag: str) -> None:
    """Store ``value`` in its own file under ``key``, leaving nothing stray if killed."""
    intent = uuid.uuid4().hex
    _edit_intents(cache, lambda table: table.__setitem__(intent, _intent(key)))
    try:
        cache.set(key, _Streamed(value), tag=tag, retry=True)
    except BaseException:
        # diskcache removes the file when its own transaction fails; when pickling
        # failed, the half-written file is ours to remove.
        if key not in cache:
            cache.disk.remove(large_filename(key))
        raise
    finally:
        _edit_intents(cache, lambda table: table.pop(intent, None))


def _intent(key: str) -> dict[str, Any]:
    return {"key": key, **this_process(), "at": time.time()}


def _edit_intents(cache: Any, edit: Any) -> None:
    with cache.transact(retry=True):
        table = cache.get(_INTENTS, default={})
        edit(table)
        if table:
            cache.set(_INTENTS, table)
        else:
            cache.delete(_INTENTS)


def _writer_gone(intent: dict[str, Any], now: float) -> bool:
    if on_this_host(intent.get("host")):
        return not process_exists(int(intent.get("pid", 0)))
    return now - float(intent.get("at", now)) > _FOREIGN_INTENT_SECONDS


def writes_in_progress(cache: Any) -> bool:
    """Whether some process is writing a large result right now."""
    return bool(cache.get(_INTENTS, default=None, retry=True))


def sweep_intents(cache: Any) -> list[str]:
    """Remove the files of large writes whose writer died mid-write; returns their keys.

    Cheap when there is nothing to do (one read of a small row), so every store open
    calls it.
    """
    table = cache.get(_INTENTS, default=None, retry=True)
    if not table:
        return []
    now = time.time()
    swept: list[str] = []
    with cache.transact(retry=True):
        table = cache.get(_INTENTS, default={})
        for intent_id, intent in list(table.items()):
            if not _writer_gone(intent, now):
                continue
            key = intent["key"]
            if key not in cache:  # the row never made it: the file, if any, is stray
                cache.disk.remove(large_filename(key))  # and its emptied folders
                swept.append(key)
            del table[intent_id]
        if table:
            cache.set(_INTENTS, table)
        else:
            cache.delete(_INTENTS)
    return swept
