"""Store safety: private folders, refusing folders others can write, JSON without pickle,
damaged databases, and durable-nb doctor."""

from __future__ import annotations

import io
import os
import socket
import sqlite3
import stat
import time
from pathlib import Path

import pytest

import durable_nb as dn
from durable_nb.cli import main
from durable_nb.runtime import Runtime
from durable_nb.store import DiskCacheStore, InstanceRecord


def test_store_files_are_private(tmp_path: Path) -> None:
    store = DiskCacheStore(tmp_path / "s")
    store.append("i", [])
    assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "s" / "cache.db").stat().st_mode) == 0o600
    store.close()


def _modes_not_private(folder: Path) -> list[str]:
    """Every folder under ``folder`` that is not 0700 and every file that is not 0600."""
    wrong: list[str] = []
    for root, dirs, files in os.walk(folder):
        for name, want in [(d, 0o700) for d in dirs] + [(f, 0o600) for f in files]:
            mode = stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode)
            if mode != want:
                wrong.append(f"{os.path.relpath(os.path.join(root, name), folder)}: {mode:o}")
    return wrong


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_every_file_and_folder_of_the_store_is_private(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    folder = tmp_path / "s"
    previous = os.umask(0o022)  # the usual umask: what is not made private shows
    try:
        dn.runtime._reset_for_tests(lambda: Runtime(store=DiskCacheStore(folder), progress="none"))

        @dn.activity
        def big(n: int) -> object:
            return np.zeros(n, dtype=np.uint8)

        @dn.orchestrator
        def orch(ctx):  # type: ignore[no-untyped-def]
            data = yield ctx.call_activity(big, 2 << 20)
            return int(data.size)

        assert orch.run() == 2 << 20
        store = dn.get_runtime().store
        assert isinstance(store, DiskCacheStore)
        # Values diskcache itself writes to files: big bytes, str and pickles.
        store._cache.set("bytes", b"x" * (1 << 20))
        store._cache.set("text", "y" * (1 << 20))
        store._cache.set("pickle", list(range(100_000)))
        dn.get_runtime().close()
        json_store = DiskCacheStore(tmp_path / "j", serializer="json")
        json_store._cache.set("json", {"rows": list(range(100_000))})
        json_store.close()
    finally:
        os.umask(previous)
    assert len([f for _, _, files in os.walk(folder) for f in files if f.endswith(".val")]) == 4
    assert list((tmp_path / "j").rglob("*.val"))
    assert _modes_not_private(folder) == []
    assert _modes_not_private(tmp_path / "j") == []


def test_a_folder_others_can_write_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)
    with pytest.raises(dn.StoreError) as info:
        DiskCacheStore(folder)
    message = str(info.value)
    assert "written by other users" in message and "chmod 700" in message
    assert "run their code" in message


def test_a_folder_others_can_read_is_made_private(tmp_path: Path) -> None:
    folder = tmp_path / "readable"
    folder.mkdir()
    folder.chmod(0o755)
    DiskCacheStore(folder).close()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_json_serializer_never_pickles_and_refuses_what_json_cannot_hold(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "json"
    dn.runtime._reset_for_tests(
        lambda: Runtime(store=DiskCacheStore(folder, serializer="json"), progress="none")
    )

    @dn.activity
    def row(i: int) -> dict[str, int]:
        return {"i": i}

    @dn.activity
    def a_set() -> set[int]:
        return {1}

    @dn.orchestrator
    def orch(ctx, n):  # type: ignore[no-untyped-def]
        rows = yield ctx.task_all([ctx.call_activity(row, i) for i in range(n)])
        return [r["i"] for r in rows]

    @dn.orchestrator
    def bad(ctx):  # type: ignore[no-untyped-def]
        return (yield ctx.call_activity(a_set))

    assert orch.run(3) == [0, 1, 2]
    assert orch.run(3) == [0, 1, 2]
    with pytest.raises(dn.ResultNotStorableError, match="not JSON data"):
        bad.run()
    raw = (folder / "cache.db").read_bytes()
    assert b"\x80\x05" not in raw  # no pickle protocol-5 header anywhere in the database
    dn.get_runtime().close()
    with pytest.raises(dn.StoreError, match="json serializer"):
        DiskCacheStore(folder)
    dn.runtime._reset_for_tests()


def test_a_damaged_database_is_a_clear_error_naming_doctor(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    store = DiskCacheStore(folder)
    for _ in range(300):
        store.append("x", [])
    store.close()
    for extra in ("cache.db-wal", "cache.db-shm"):
        (folder / extra).unlink(missing_ok=True)
    data = bytearray((folder / "cache.db").read_bytes())
    for i in range(4096, min(len(data), 60000), 7):
        data[i] = 0xAB
    (folder / "cache.db").write_bytes(bytes(data))
    with pytest.raises(dn.StoreError) as info:
        DiskCacheStore(folder).read_history("x")
    assert str(folder) in str(info.value) and "doctor" in str(info.value)
    out = io.StringIO()
    assert main(["doctor", "--store", str(folder)], out=out) == 1
    assert "damaged" in out.getvalue() and ".damaged" in out.getvalue()
    assert len(out.getvalue().splitlines()) == 1


def test_doctor_finds_and_fixes_dead_runners(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    store = DiskCacheStore(folder)
    store.put_instance(InstanceRecord("lost", "orch", status="running"))
    dead = {
        "owner": "x",
        "pid": 2**22 + 12345,  # no such process
        "host": socket.gethostname(),
        "since": time.time(),
        "heartbeat": time.time(),
    }
    assert store.swap_lease("lost", None, dead)
    store.close()
    out = io.StringIO()
    assert main(["doctor", "--store", str(folder)], out=out) == 0
    assert "runner is gone" in out.getvalue() and "doctor --fix" in out.getvalue()
    out = io.StringIO()
    assert main(["doctor", "--store", str(folder), "--fix"], out=out) == 0
    assert "lease released" in out.getvalue() and "marked interrupted" in out.getvalue()
    store = DiskCacheStore(folder)
    assert store.get_lease("lost") is None
    assert store.get_instance("lost").status == "interrupted"  # type: ignore[union-attr]
    store.close()
    assert os.path.isdir(folder)


def test_doctor_fix_leaves_unknown_files_alone_while_a_kernel_uses_the_store(
    tmp_path: Path,
) -> None:
    """diskcache's fix deletes files no row names; during a live run such a file may be a
    large result being written, so doctor only fixes once no runner holds a lease."""
    folder = tmp_path / "s"
    store = DiskCacheStore(folder)
    store.put_instance(InstanceRecord("busy", "orch", status="running"))
    live = {
        "owner": "me",
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.time(),
        "heartbeat": time.time(),
    }
    assert store.swap_lease("busy", None, live)
    store.close()
    unknown = folder / "ab" / "cd" / "0123456789abcdef.val"
    unknown.parent.mkdir(parents=True)
    unknown.write_bytes(b"half a result")
    out = io.StringIO()
    assert main(["doctor", "--store", str(folder), "--fix"], out=out) == 0
    assert "unknown file" in out.getvalue() and "not fixed while a kernel uses" in out.getvalue()
    assert unknown.exists()
    store = DiskCacheStore(folder)
    assert store.swap_lease("busy", "me", None)
    store.close()
    out = io.StringIO()
    assert main(["doctor", "--store", str(folder), "--fix"], out=out) == 0
    assert not unknown.exists(), out.getvalue()


def test_doctor_finds_and_removes_what_belongs_to_no_instance(tmp_path: Path) -> None:
    """A thread's result that arrives after its instance was purged is appended to a
    history of no instance; doctor reports it and --fix removes it."""
    from builders import completed

    folder = tmp_path / "s"
    store = DiskCacheStore(folder)
    store.put_instance(InstanceRecord("kept", "orch"))
    store.append("kept", [completed("a/b/c#0", 1)])
    store.append("purged", [completed("a/b/c#0", bytes(2 << 20))])  # a large result
    store.close()
    out = io.StringIO()
    assert main(["doctor", "--store", str(folder)], out=out) == 0
    assert "1 history(ies) and 1 large result(s) belong to no instance" in out.getvalue()
    out = io.StringIO()
    assert main(["doctor", "--store", str(folder), "--fix"], out=out) == 0
    assert "; removed" in out.getvalue(), out.getvalue()
    store = DiskCacheStore(folder)
    assert store.read_history("purged") == [] and len(store.read_history("kept")) == 1
    assert store.orphans() == ([], [])
    assert store.check_files(fix=False) == []  # the large result's file went with it
    store.close()


def test_a_store_another_process_is_setting_up_is_opened_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite refuses some set-up statements at once while another process sets up the
    same new folder (two kernels started together); opening retries them."""
    import diskcache

    real = diskcache.Cache
    refusals = [2]

    def contended(*args: object, **kwargs: object) -> object:
        if refusals[0]:
            refusals[0] -= 1
            raise sqlite3.OperationalError("database is locked")
        return real(*args, **kwargs)

    monkeypatch.setattr(diskcache, "Cache", contended)
    store = DiskCacheStore(tmp_path / "s")
    assert refusals == [0] and store.list_instances() == []
    store.close()

    def damaged(*args: object, **kwargs: object) -> object:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(diskcache, "Cache", damaged)  # other errors are not retried
    with pytest.raises(dn.StoreError, match="disk I/O error"):
        DiskCacheStore(tmp_path / "other")
