"""Human-readable tables of instances, shared by ``%durable`` and ``durable-nb``."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from typing import Any

from durable_nb.calls import CallRow
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
            "-" if r.duration is None else f"{r.duration:.3f} s",
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
