"""Human-readable tables of instances and durable entities, shared by ``%durable`` and
``durable-nb``."""

from __future__ import annotations

import datetime as _dt
import pprint
import reprlib
from collections.abc import Sequence
from typing import Any

from durable_nb.calls import CallRow
from durable_nb.engine.preview import arguments_preview
from durable_nb.entity_store import EntityMessage, EntitySnapshot
from durable_nb.history import Status
from durable_nb.store import InstanceRecord


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return _dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain-text table with aligned columns."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)


def list_instances_text(records: list[InstanceRecord]) -> str:
    if not records:
        return "no instances in the store"
    rows = [
        [
            r.instance_id,
            r.orchestrator,
            r.status,
            str(r.runs),
            f"{r.counts.get('calls', 0)}",
            _when(r.updated_at),
            "" if r.custom_status is None else repr(r.custom_status)[:40],
        ]
        for r in records
    ]
    headers = ["instance", "orchestrator", "status", "runs", "calls", "updated", "custom status"]
    return format_table(headers, rows)


def show_instance_text(record: InstanceRecord, events: Sequence[Any]) -> str:
    lines = [
        f"instance:      {record.instance_id}",
        f"orchestrator:  {record.orchestrator}",
        f"status:        {record.status}",
        f"runs:          {record.runs}",
        f"created:       {_when(record.created_at)}",
        f"last started:  {_when(record.started_at)}",
        f"finished:      {_when(record.finished_at)}",
    ]
    if record.custom_status is not None:
        lines.append(f"custom status: {record.custom_status!r}")
    if record.error:
        lines.append(f"error:         {record.error}")
    if record.status == Status.COMPLETED:
        lines.append(f"output:        {repr(record.output)[:200]}")
    per_activity: dict[str, dict[str, int]] = {}
    for event in events:
        activity = getattr(event, "activity", None)
        if activity is not None:
            counts = per_activity.setdefault(activity, {})
            counts[event.TAG] = counts.get(event.TAG, 0) + 1
    if per_activity:
        kinds = ["scheduled", "completed", "failed", "retried"]
        rows = [[name] + [str(c.get(k, 0)) for k in kinds] for name, c in per_activity.items()]
        lines += [
            "",
            "history (the runs kept in the store):",
            format_table(["activity", *kinds], rows),
        ]
    return "\n".join(lines)


def calls_text(rows: Sequence[CallRow]) -> str:
    """The calls of an instance, one line each (``durable-nb show ID --calls``)."""
    if not rows:
        return "no calls"
    table = [
        [
            r.activity,
            _short_key(r.key),
            r.arguments or "-",
            r.status,
            str(r.attempts),
            _when(r.started),
            "-" if r.duration is None or r.status == "sent" else f"{r.duration:.3f} s",
            "yes" if r.cached else "",
            (r.error[:60] + "…") if len(r.error) > 60 else r.error,
        ]
        for r in rows
    ]
    headers = ["activity", "call", "arguments", "status", "attempts", "started", "duration"]
    return format_table([*headers, "cached", "error"], table)


def _short_key(key: str) -> str:
    """A call key's arguments digest, cut, and occurrence: enough to tell calls apart."""
    digest, _, occurrence = key.rsplit("/", 1)[-1].partition("#")
    return f"{digest[:10]}…#{occurrence}" if occurrence else digest[:12]


# ---------------------------------------------------------------------- entities

# A state shown by `entity show` is cut to this much: a state may be a large dict, and
# reprlib's limits keep even building the text bounded (pprint alone would not be).
STATE_LIMIT = 2000
_BOUNDED = reprlib.Repr()
_BOUNDED.maxlevel, _BOUNDED.maxdict, _BOUNDED.maxlist = 4, 40, 40
_BOUNDED.maxtuple, _BOUNDED.maxset, _BOUNDED.maxfrozenset = 40, 40, 40
_BOUNDED.maxstring, _BOUNDED.maxother, _BOUNDED.maxlong = 200, 200, 200


def state_preview(snapshot: EntitySnapshot) -> str:
    """A state in a table cell: short, and cheap for any state (engine/preview.py)."""
    return arguments_preview((snapshot.state,), {}) if snapshot.exists else "-"


def state_text(value: Any) -> str:
    """A state in full when it is small enough, pretty-printed; else its bounded repr."""
    bounded = _BOUNDED.repr(value)
    if "..." not in bounded and len(bounded) <= STATE_LIMIT:
        # Whole (reprlib cut nothing), so pretty-printing it costs as little.
        pretty = pprint.pformat(value, width=88, sort_dicts=False)
        if len(pretty) <= STATE_LIMIT:
            return pretty
    if len(bounded) > STATE_LIMIT:
        bounded = bounded[: STATE_LIMIT - 1] + "…"
    return bounded


def list_entities_text(snapshots: Sequence[EntitySnapshot]) -> str:
    """``entity list``: one row per entity with a state or a queued message."""
    if not snapshots:
        return "no entities in the store"
    rows = [
        [
            str(s.entity),
            "yes" if s.exists else "no",
            state_preview(s),
            str(s.waiting),
            s.locked_by or "-",
            str(s.version),
            _when(s.updated),
        ]
        for s in snapshots
    ]
    headers = ["entity", "exists", "state", "waiting", "locked by", "version", "updated"]
    return format_table(headers, rows)


def show_entity_text(snapshot: EntitySnapshot, messages: Sequence[EntityMessage]) -> str:
    """``entity show``: the state in full (bounded), the lock, and the waiting messages
    (``messages``: the first of them, oldest first; ``snapshot.waiting`` counts all)."""
    state = state_text(snapshot.state) if snapshot.exists else "(none: no operation set one)"
    lines = [
        f"entity:     {snapshot.entity}",
        f"exists:     {'yes' if snapshot.exists else 'no'}",
        f"version:    {snapshot.version} (operations applied, locks taken and released)",
        f"updated:    {_when(snapshot.updated)}",
        f"locked by:  {snapshot.locked_by or '-'}"
        + (" (a critical section: its messages only are applied)" if snapshot.locked_by else ""),
        "state:",
        *(f"  {line}" for line in state.splitlines()),
        "",
    ]
    if not snapshot.waiting:
        lines.append("waiting messages: none")
        return "\n".join(lines)
    lines.append(f"waiting messages: {snapshot.waiting} (applied in this order)")
    rows = [
        [
            str(m.seq),
            m.operation if m.kind == "operation" and m.operation else f"({m.kind})",
            arguments_preview((m.input,), {}) if m.input is not None else "-",
            m.source or "client",
            _when(m.queued),
        ]
        for m in messages
    ]
    lines.append(format_table(["#", "operation", "input", "from", "queued"], rows))
    if snapshot.waiting > len(messages):
        lines.append(f"... and {snapshot.waiting - len(messages)} more")
    return "\n".join(lines)
