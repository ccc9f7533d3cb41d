"""The versions a checkpoint store carries, and what opening it with this release does.

Two numbers say how to read a store folder:

* its **format** (``FORMAT_VERSION``): how records, histories and leases are laid out.
  Format 1 kept them all as diskcache keys; opening it moves them into the store's
  tables (format 2). Format 3 events may carry fields format 2 has not: when an
  attempt began to run, a preview of a call's arguments (for ``h.calls()`` and the
  timeline). Format 2 rows read as they are (those fields empty), so opening a format 2
  store only marks it format 3, which releases before it then refuse, as they would
  fail on the new rows. Format 4 adds durable entities: histories may hold
  ``EntitySignaled`` events, which releases before it cannot read, and the store gets
  the entities' tables (:mod:`durable_nb.entity_tables`); opening a format 2 or 3 store
  marks it format 4 in the same way.
* its **key schemes**: how the call keys of its results were digested
  (:mod:`durable_nb.fingerprint`). A store lists every scheme that wrote to it; a
  store with a format but no list was written by release 0.1.0, scheme 1. Older
  schemes are read as they are (replay recomputes a call's key under them), so opening
  only adds this release's scheme to the list.

A store of a newer format or key scheme than this release knows is refused with a
message to upgrade: reading on would re-run, or misread, what it holds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from durable_nb.errors import StoreError
from durable_nb.fingerprint import KEY_SCHEME
from durable_nb.tables import StoreTables

logger = logging.getLogger(__name__)

FORMAT_VERSION = 4
# diskcache numbers pushed keys from 500 trillion upwards (documented in Cache.push).
_FIRST_PUSHED = 500_000_000_000_000


@dataclass(frozen=True)
class Versions:
    """What a store held when it was opened, and what it holds now."""

    format_found: int | None  # None: a new store
    key_schemes_found: tuple[int, ...]
    key_schemes: tuple[int, ...]


def open_versions(
    cache: Any,
    tables: StoreTables,
    location: str,
    serializer: str,
    dumps: Callable[[Any], bytes],
    history_id_of: Callable[[dict[str, Any]], str],
) -> Versions:
    """Check a store's versions as it is opened, upgrade an older format, and record
    this release's key scheme."""
    found = cache.get("format")
    schemes_found = _parse_schemes(cache.get("key_schemes"), found)
    if found is None:
        cache.add("format", FORMAT_VERSION)
        cache.add("serializer", serializer)
    elif not isinstance(found, int) or found > FORMAT_VERSION:
        raise StoreError(
            f"the checkpoint store at {location} has format {found!r}, newer than "
            f"this durable_nb understands ({FORMAT_VERSION}); upgrade durable_nb.",
            location=location,
        )
    stored = cache.get("serializer", "pickle")
    if stored != serializer:
        raise StoreError(
            f"the checkpoint store at {location} was written with the {stored} "
            f"serializer; open it with serializer={stored!r}, or use another folder",
            location=location,
        )
    newer = [scheme for scheme in schemes_found if scheme > KEY_SCHEME]
    if newer:
        raise StoreError(
            f"the checkpoint store at {location} holds results keyed by key scheme "
            f"{max(newer)}, newer than this durable_nb understands ({KEY_SCHEME}); "
            "upgrade durable_nb",
            location=location,
        )
    if found == 1:
        _upgrade_from_format_1(cache, tables, dumps, history_id_of)
        logger.info("upgraded the store at %s to format %s", location, FORMAT_VERSION)
    elif found is not None and found < FORMAT_VERSION:
        cache.set("format", FORMAT_VERSION, retry=True)  # its rows read as they are
        logger.info("the store at %s is now format %s", location, FORMAT_VERSION)
    schemes = tuple(sorted({*schemes_found, KEY_SCHEME}))
    if schemes != schemes_found:
        cache.set("key_schemes", ",".join(map(str, schemes)), retry=True)
    return Versions(found, schemes_found, schemes)


def _upgrade_from_format_1(
    cache: Any,
    tables: StoreTables,
    dumps: Callable[[Any], bytes],
    history_id_of: Callable[[dict[str, Any]], str],
) -> None:
    """Format 1 kept everything as diskcache keys: records ``i:<id>``, leases
    ``l:<id>`` and history chunks ``h:<digest>-<15 digits>`` numbered from 500
    trillion (Cache.push). Copy each into its table, then delete the key: repeating
    after a crash copies nothing twice."""
    streams: dict[str, list[tuple[int, str]]] = {}
    for key in list(cache.iterkeys()):
        if not isinstance(key, str):
            continue
        if key.startswith("h:") and ":" not in key[2:]:
            stream, _, number = key.rpartition("-")
            streams.setdefault(stream, []).append((int(number) - _FIRST_PUSHED, key))
        elif key.startswith("i:") and (data := cache.get(key)) is not None:
            tables.put_instance(key[2:], dumps(data), history_id_of(data))
            cache.delete(key, retry=True)
        elif key.startswith("l:"):
            cache.delete(key, retry=True)  # a lease of a run of an older version
    for stream, keys in streams.items():
        chunks = [(n, dumps(cache.get(key) or [])) for n, key in keys]
        tables.insert_chunks(stream, chunks)
        for _, key in keys:
            cache.delete(key, retry=True)
    cache.set("format", FORMAT_VERSION, retry=True)


def _parse_schemes(text: Any, format_found: Any) -> tuple[int, ...]:
    """The ``key_schemes`` setting ("1,2"); a store without it was written by release
    0.1.0 (scheme 1) if it has a format, else it is new."""
    if text is None:
        return (1,) if format_found is not None else ()
    try:
        return tuple(sorted(int(part) for part in str(text).split(",")))
    except ValueError:
        raise StoreError(f"the store's key_schemes setting {text!r} is not understood") from None


def peek_versions(folder: str | os.PathLike[str]) -> tuple[int | None, tuple[int, ...]]:
    """A store folder's format and key schemes, read without opening (so without
    upgrading) it: what opening it with this release will find."""
    database = Path(folder) / "cache.db"
    if not database.exists():
        return None, ()
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        rows = dict(
            db.execute(
                "SELECT key, value FROM Cache WHERE key IN ('format', 'key_schemes') AND raw = 1"
            ).fetchall()
        )
    found = rows.get("format")
    return (int(found) if found is not None else None), _parse_schemes(
        rows.get("key_schemes"), found
    )
