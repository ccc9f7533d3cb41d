"""Large values of instance records in a :class:`~durable_nb.store.DiskCacheStore`.

An instance record's output, input and custom status are written with the record
whenever it changes (at each step's flush, at the end of a run). One of at least
``LARGE_RESULT_BYTES`` (estimated) goes to a file of its own, as large activity results
do, and the record holds a :class:`LargeRef` to it:

* A record's own value file has the key ``"<stream>:v:record:<random>"`` and the tag
  ``"<stream>:r"``: a purge evicts the tag. It is written once: the record then holds
  it as a loaded :class:`LargeValueFile`, and writing the record again refers to the same
  file. When a write replaces the record, the files the old record referred to and the
  new one does not are deleted.
* An output or custom status that *is* a large value of the instance's own history
  (an orchestrator returning what an activity gave it; the history's own
  ``CustomStatusSet``) refers to that value's file instead of writing a second copy.
  The history's files go with a purge or a new generation; the record written with a
  new generation (``reset_history``) refers to no history file, so a reference
  cannot outlive its file.
* Reading a record puts a :class:`LargeValueFile` in each such field, loaded when the
  field is read (:class:`~durable_nb.store_values.LazyField`): a list or a status never
  loads a large output.

Records written by release 0.1.0 hold their values inline and read as they are. JSON
stores keep every value inline.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
import weakref
from collections.abc import Callable
from typing import Any

from durable_nb import history
from durable_nb.store_values import (
    LARGE_RESULT_BYTES,
    LargeRef,
    LargeValueFile,
    estimate_size,
    raw_field,
    set_raw_field,
    write_large,
)

RECORD_FIELDS = ("input", "output", "custom_status")
_RECORD_KEY = ":v:record:"


def field_names(cls: type) -> tuple[str, ...]:
    """A dataclass's field names, found once: ``dataclasses.fields`` builds them on every
    call, and a run reads and writes its instance record several times."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def record_tag(stream: str) -> str:
    """The tag of an instance's record value files (its history's are ``stream:v``)."""
    return stream + ":r"


class RecordValues:
    """The large values of one store's instance records."""

    def __init__(
        self,
        cache: Any,
        dumps: Callable[[Any], bytes],
        loads: Callable[[bytes], Any],
        json: bool,
    ) -> None:
        self._cache, self._dumps, self._loads, self._json = cache, dumps, loads, json
        # Large history results seen by this process, by key: the value itself when it
        # was written here, its LargeValueFile when read back. Weak: only what is alive.
        self._results: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()  # late results are written from worker threads

    def remember(self, key: str, value: Any) -> None:
        """Note a large history result (written or read), so that an output that is the
        same object can refer to its file."""
        try:
            with self._lock:
                self._results[key] = value
        except TypeError:  # bytes and the like cannot be referred to weakly
            pass

    def dumps(self, record: Any, stream: str, history_refs: bool = True) -> bytes:
        """The record serialised, its large values as LargeRefs (written to their files
        first; a JSON store keeps them inline). ``history_refs=False``: refer to no
        history file (for a record about to replace its history)."""
        if self._json:
            return self._dumps(record.to_dict())
        data: dict[str, Any] = {}
        for name in field_names(type(record)):
            value = raw_field(record, name) if name in RECORD_FIELDS else getattr(record, name)
            if name == "status":
                value = str(value)  # the plain value, even if given a Status
            if name in RECORD_FIELDS:
                key = self._large_key(stream, name, value, history_refs)
                if key is not None:
                    if isinstance(value, LargeValueFile) and value.key != key:
                        value = value.load()  # loaded already: it was written again
                    if not isinstance(value, LargeValueFile):
                        set_raw_field(record, name, LargeValueFile.holding(self._cache, key, value))
                    value = LargeRef(key)
                elif isinstance(value, history.LargeValue):
                    value = value.load()
            data[name] = value
        return self._dumps(data)

    def _large_key(self, stream: str, name: str, value: Any, history_refs: bool) -> str | None:
        own = stream + ":v:"
        if isinstance(value, LargeValueFile):
            if value.key.startswith(stream + _RECORD_KEY):
                return value.key
            if history_refs and name != "input" and value.key.startswith(own):
                return value.key
            value = value.load()
        if estimate_size(value) < LARGE_RESULT_BYTES:
            return None
        if history_refs and name != "input":
            with self._lock:
                known_results = list(self._results.items())
            for key, known in known_results:
                if key.startswith(own) and (
                    known is value or (isinstance(known, LargeValueFile) and known.holds(value))
                ):
                    return key
        key = f"{stream}{_RECORD_KEY}{uuid.uuid4().hex}"
        write_large(self._cache, key, value, tag=record_tag(stream))
        return key

    def loads(self, stored: bytes) -> dict[str, Any]:
        """A stored record's dict with its LargeRefs as StoredValues (not loaded)."""
        data: dict[str, Any] = self._loads(stored)
        for name in RECORD_FIELDS:
            value = data.get(name)
            if isinstance(value, LargeRef):
                data[name] = LargeValueFile(self._cache, value.key)
        return data

    def drop_replaced(self, old: bytes | None, new: bytes) -> None:
        """Delete the value files the replaced record ``old`` referred to and the record
        ``new`` that replaced it does not (both as stored)."""
        if old is None or self._json or _RECORD_KEY.encode() not in old:
            return  # the usual case: nothing to read
        keep = _record_keys(self._loads(new))
        for key in _record_keys(self._loads(old)) - keep:
            self._cache.delete(key, retry=True)


def _record_keys(data: dict[str, Any]) -> set[str]:
    return {
        value.key
        for value in (data.get(name) for name in RECORD_FIELDS)
        if isinstance(value, LargeRef) and _RECORD_KEY in value.key
    }
