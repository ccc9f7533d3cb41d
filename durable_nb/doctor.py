"""``durable-nb doctor``: is a checkpoint store healthy, and what to do if not."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from durable_nb.errors import StoreError
from durable_nb.fingerprint import KEY_SCHEME
from durable_nb.history import Status
from durable_nb.leases import describe, holder_alive
from durable_nb.store import DiskCacheStore, InstanceRecord
from durable_nb.store_versions import FORMAT_VERSION, peek_versions


@dataclass
class Report:
    """What the checks found: each line is 'ok', 'warn' or 'fail' and a sentence."""

    lines: list[tuple[str, str]] = field(default_factory=list)

    def add(self, level: str, text: str) -> None:
        self.lines.append((level, text))

    @property
    def healthy(self) -> bool:
        return all(level != "fail" for level, _ in self.lines)

    def text(self) -> str:
        marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
        return "\n".join(f"[{marks[level]}] {text}" for level, text in self.lines)


def _size(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:
                pass
    return total


def _check_orphans(store: DiskCacheStore, fix: bool, report: Report) -> None:
    streams, values = store.orphans()
    if not streams and not values:
        return
    text = (
        f"{len(streams)} history(ies) and {len(values)} large result(s) belong to no "
        "instance (a result that arrived after its instance was purged)"
    )
    if fix:
        store.remove_orphans(streams, values)
        report.add("warn", text + "; removed")
    else:
        report.add("warn", text + "; `doctor --fix` removes them while no kernel uses the store")


def _check_files(
    store: DiskCacheStore, records: list[InstanceRecord], now: float, fix: bool, report: Report
) -> bool:
    """diskcache's check of rows against files. Its fix deletes files no row names, which
    would destroy a write in progress, so it only runs while no kernel uses the store."""
    live = [
        record.instance_id
        for record in records
        if (lease := store.get_lease(record.instance_id)) is not None and holder_alive(lease, now)
    ]
    busy = bool(live) or store.writes_in_progress()
    for warning in store.check_files(fix=fix and not busy):
        text = f"diskcache: {warning}"
        if fix and busy:
            text += (
                f"; not fixed while a kernel uses the store ({', '.join(live) or 'a write'}): "
                "stop it, then run `doctor --fix` again"
            )
        report.add("warn", text)
    return busy


def _versions_text(found_format: int | None, schemes: tuple[int, ...]) -> str:
    """The store's format and key schemes, and what opening it with this release does."""
    if found_format is None:
        text = f"format {FORMAT_VERSION} (new store)"
    elif found_format == 1:
        text = (
            f"format {found_format}: opening it with this release moves its records, "
            f"histories and leases into tables (format {FORMAT_VERSION}), done by this check"
        )
    elif found_format < FORMAT_VERSION:
        text = (
            f"format {found_format}: opening it with this release marks it format "
            f"{FORMAT_VERSION} (its histories read as they are; new events record attempt "
            "start times, argument previews and signals to durable entities, whose tables "
            "it gets), done by this check; releases before this one then refuse it"
        )
    else:
        text = f"format {found_format} (this release's)"
    older = [scheme for scheme in schemes if scheme != KEY_SCHEME]
    shown = ", ".join(map(str, schemes or (KEY_SCHEME,)))
    text += f"; key scheme(s) {shown}"
    if older:
        text += (
            f": results keyed by scheme {', '.join(map(str, older))} (an older release) "
            f"replay as they are, their digests reproduced on any Python; new results are "
            f"keyed by scheme {KEY_SCHEME}, and nothing checkpointed runs again"
        )
    else:
        text += " (this release's)"
    return text


def diagnose(folder: Path, fix: bool = False) -> Report:
    """Check a store folder; with ``fix``, release dead leases and mark their runs
    interrupted."""
    report = Report()
    if not folder.is_dir():
        report.add("fail", f"no store folder at {folder.resolve()}; pass --store DIR")
        return report
    mode = stat.S_IMODE(folder.stat().st_mode)
    database = folder / "cache.db"
    if database.exists():
        try:
            with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
                verdict = connection.execute("PRAGMA integrity_check(1)").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            verdict = str(exc)
        verdict = " ".join(str(verdict).replace("*** in database main ***", "").split())
        if verdict != "ok":
            report.add(
                "fail",
                f"the database {database} is damaged ({verdict}). Move the folder aside "
                f"(mv {folder} {folder}.damaged) and rerun your notebook: work that was "
                "checkpointed there runs again.",
            )
            return report
        report.add("ok", "database integrity check passed")
    try:
        found_format, found_schemes = peek_versions(folder)
    except sqlite3.Error:
        found_format, found_schemes = None, ()  # opening the store below says what is wrong
    try:
        store = DiskCacheStore(folder)
    except StoreError as exc:
        report.add("fail", str(exc))
        return report
    try:
        report.add("ok", f"{store.serializer} serializer, mode {mode:o}")
        report.add("ok", _versions_text(found_format, found_schemes))
        records = store.list_instances()
        now = time.time()
        busy = _check_files(store, records, now, fix, report)
        _check_orphans(store, fix and not busy, report)
        size = _size(folder)
        report.add("ok", f"{len(records)} instance(s), {size / 1e6:.1f} MB on disk")
        for record in records:
            lease = store.get_lease(record.instance_id)
            if lease is not None and not holder_alive(lease, now):
                text = f"{record.instance_id}: its runner is gone ({describe(lease, now)})"
                if fix:
                    store.swap_lease(record.instance_id, lease["owner"], None)
                    text += "; lease released"
                report.add("warn", text + ("" if fix else "; `doctor --fix` releases it"))
            if record.status in (Status.RUNNING, Status.SUSPENDED) and (
                lease is None or not holder_alive(lease, now)
            ):
                text = (
                    f"{record.instance_id} is marked {record.status} but no kernel runs it "
                    "(it died); rerun its cell to resume"
                )
                if fix and record.status == Status.RUNNING:
                    record.status = Status.INTERRUPTED.value
                    store.put_instance(record)
                    text += "; marked interrupted"
                report.add("warn", text)
        if size > 5e9:
            report.add(
                "warn",
                "the store is larger than 5 GB: `durable-nb purge --status completed "
                "--older-than 30d` removes old finished instances",
            )
    finally:
        store.close()
    return report
