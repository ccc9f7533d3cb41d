"""Schedules: due-time logic with fixed clocks, the table in a real store, and scheduler
passes against a launcher at the seam (counting what it was asked to start), including
schedulers racing on one store in threads and in processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from durable_nb.errors import ConfigurationError, StoreError
from durable_nb.processes import this_process
from durable_nb.schedule_times import (
    Timing,
    check_cron,
    due_tick,
    format_every,
    iso,
    parse_every,
)
from durable_nb.scheduler import CallLauncher, next_tick, run_due, run_forever
from durable_nb.schedules import ScheduleBook
from durable_nb.store import DiskCacheStore

ROOT = Path(__file__).resolve().parent.parent


def utc(*parts: int) -> float:
    return datetime(*parts, tzinfo=timezone.utc).timestamp()  # type: ignore[misc]


T0 = utc(2024, 3, 1, 10, 0, 0)

# ------------------------------------------------------------------ durations and cron


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("1h", 3600), ("1d", 86400), ("1h30m", 5400), (" 2H ", 7200)],
)
def test_every_takes_durations_with_units(text: str, seconds: int) -> None:
    assert parse_every(text) == seconds
    assert parse_every(format_every(seconds)) == seconds


@pytest.mark.parametrize(
    "text", ["0s", "0h0m", "-1h", "abc", "1x", "", "1h 30m", "1.5h", "h", "10"]
)
def test_every_refuses_zero_negative_and_garbage_saying_what_it_takes(text: str) -> None:
    with pytest.raises(ConfigurationError, match=r"--every") as caught:
        parse_every(text)
    assert repr(text) in str(caught.value) and caught.value.setting == "every"


@pytest.mark.parametrize("expression", ["61 * * * *", "* * * *", "every hour", "0 0 30 2 *"])
def test_a_bad_cron_expression_is_refused_with_an_example(expression: str) -> None:
    with pytest.raises(ConfigurationError, match=r'five\s+fields.*"0 \* \* \* \*"'):
        check_cron(expression)


def test_a_timing_has_exactly_one_of_every_and_cron() -> None:
    with pytest.raises(ConfigurationError, match="exactly one"):
        Timing(created=T0)
    with pytest.raises(ConfigurationError, match="exactly one"):
        Timing(created=T0, every=60, cron="* * * * *")


# ------------------------------------------------------------------ due ticks


def test_every_ticks_count_from_the_creation() -> None:
    timing = Timing(created=T0, every=3600)
    assert timing.next_tick(T0) == T0 + 3600  # the first tick is one period after adding
    assert timing.next_tick(T0 - 500) == T0 + 3600
    assert timing.next_tick(T0 + 3600) == T0 + 7200  # strictly after
    assert timing.last_tick(T0 + 3599) is None
    assert timing.last_tick(T0 + 3600) == T0 + 3600  # a tick at "now" is due now
    assert due_tick(timing, None, T0 + 10) is None


def test_missed_ticks_give_one_run_the_latest() -> None:
    timing = Timing(created=T0, every=60)
    now = T0 + 60 * 10 + 5  # ten ticks passed while nothing ran
    assert due_tick(timing, None, now) == T0 + 600
    assert due_tick(timing, T0 + 60, now) == T0 + 600  # the last run was nine ticks ago
    assert due_tick(timing, T0 + 600, now) is None  # handled: nothing more until the next
    assert due_tick(timing, T0 + 600, T0 + 660) == T0 + 660


def test_cron_is_evaluated_in_utc_whatever_the_local_zone() -> None:
    zone = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"  # DST starts 2024-03-10 there
    time.tzset()
    try:
        created = utc(2024, 3, 9, 12, 0)
        timing = Timing(created=created, cron="0 9 * * *")
        first = timing.next_tick(created)
        assert first == utc(2024, 3, 10, 9, 0)
        assert timing.next_tick(first) == utc(2024, 3, 11, 9, 0)  # 24 h, DST or not
        assert iso(first) == "2024-03-10 09:00:00 UTC"
        assert timing.last_tick(utc(2024, 3, 10, 8, 59)) is None  # before the first
        assert timing.last_tick(utc(2024, 3, 10, 9, 0)) == first  # at the tick: due
        assert due_tick(timing, None, utc(2024, 3, 14, 12, 0)) == utc(2024, 3, 14, 9, 0)
    finally:
        if zone is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = zone
        time.tzset()


def test_a_cron_tick_at_the_creation_minute_is_not_run() -> None:
    created = utc(2024, 3, 1, 10, 0, 0)
    timing = Timing(created=created, cron="0 * * * *")
    assert timing.last_tick(created + 30) is None  # 10:00 is not after the creation
    assert timing.next_tick(created) == utc(2024, 3, 1, 11, 0)


# ------------------------------------------------------------------ the table


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "project" / ".durable_nb"
    DiskCacheStore(folder).close()
    (tmp_path / "project" / "report.ipynb").write_text("{}")
    yield folder


def test_schedules_are_kept_in_the_store_with_the_notebook_beside_it_relative(
    store: Path, tmp_path: Path
) -> None:
    book = ScheduleBook(store)
    assert book.list() == []  # reading creates nothing
    inside = book.add(store.parent / "report.ipynb", Timing(created=T0, every=60), {"n": 3})
    outside = book.add(tmp_path / "x.ipynb", Timing(created=T0, cron="0 * * * *"), name="x")
    assert inside.notebook == "report.ipynb" and inside.schedule_id.startswith("report-")
    assert outside.notebook == str((tmp_path / "x.ipynb").resolve())
    again = ScheduleBook(store)
    assert [s.schedule_id for s in again.list()] == sorted([inside.schedule_id, "x"])
    got = again.get(inside.schedule_id)
    assert got is not None and got.parameters == {"n": 3} and got.timing.every == 60
    assert got.notebook_path(store) == (store.parent / "report.ipynb").resolve()
    with pytest.raises(ConfigurationError, match="already has a schedule named 'x'"):
        again.add(tmp_path / "x.ipynb", Timing(created=T0, every=5), name="x")
    assert again.remove("x") and not again.remove("x")
    assert [s.schedule_id for s in again.list()] == [inside.schedule_id]
    # The store still opens and is healthy for everything else.
    DiskCacheStore(store).close()


def test_a_folder_without_a_store_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no checkpoint store"):
        ScheduleBook(tmp_path)


# ------------------------------------------------------------------ passes


class CountingLauncher:
    """The seam: counts starts, answers ``finished`` as told, fails when told."""

    def __init__(self) -> None:
        self.started: list[tuple[Path, dict[str, Any], str]] = []
        self.running: set[str] = set()
        self.fail: Exception | None = None
        self.lock = threading.Lock()

    def start(self, notebook: Path, store: Path, parameters: dict[str, Any], origin: str) -> str:
        if self.fail is not None:
            raise self.fail
        with self.lock:
            self.started.append((notebook, parameters, origin))
            instance_id = f"run-{len(self.started)}"
        self.running.add(instance_id)
        return instance_id

    def finished(self, store: Path, instance_id: str) -> bool:
        return instance_id not in self.running


def test_a_pass_starts_a_due_tick_once_and_records_it(store: Path) -> None:
    book = ScheduleBook(store)
    schedule = book.add(store.parent / "report.ipynb", Timing(created=T0, every=60), {"n": 1})
    launcher = CountingLauncher()
    assert run_due(store, launcher, now=T0 + 30) == []  # not due yet
    [outcome] = run_due(store, launcher, now=T0 + 65)
    assert (outcome.action, outcome.tick, outcome.instance_id) == ("started", T0 + 60, "run-1")
    assert launcher.started == [
        ((store.parent / "report.ipynb").resolve(), {"n": 1}, f"schedule:{schedule.schedule_id}")
    ]
    assert run_due(store, launcher, now=T0 + 66) == []  # the same tick: nothing
    stored = book.get(schedule.schedule_id)
    assert stored is not None and stored.done == T0 + 60
    assert stored.state["instance"] == "run-1" and "launching" not in stored.state
    assert next_tick(store, now=T0 + 66) == T0 + 120


def test_after_many_missed_ticks_a_scheduler_starting_runs_once(store: Path) -> None:
    ScheduleBook(store).add(store.parent / "report.ipynb", Timing(created=T0, every=60))
    launcher = CountingLauncher()
    [outcome] = run_due(store, launcher, now=T0 + 3600 + 1)  # 60 ticks passed
    assert outcome.tick == T0 + 3600
    assert run_due(store, launcher, now=T0 + 3600 + 2) == []
    assert len(launcher.started) == 1


def test_a_tick_while_the_last_run_goes_on_is_skipped_and_recorded(
    store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    book = ScheduleBook(store)
    schedule = book.add(store.parent / "report.ipynb", Timing(created=T0, every=60))
    launcher = CountingLauncher()
    run_due(store, launcher, now=T0 + 60)
    with caplog.at_level("WARNING", logger="durable_nb.scheduler"):
        [skipped] = run_due(store, launcher, now=T0 + 120)
        assert run_due(store, launcher, now=T0 + 121) == []  # counted once per tick
        run_due(store, launcher, now=T0 + 180)
    assert skipped.action == "skipped" and len(launcher.started) == 1
    assert "skipped the tick of 2024-03-01 10:02:00 UTC" in caplog.text
    assert "run-1 is still going" in caplog.text
    stored = book.get(schedule.schedule_id)
    assert stored is not None and stored.state["skipped"] == 2
    assert stored.state["skipped_tick"] == T0 + 180
    launcher.running.clear()  # the run ended
    assert run_due(store, launcher, now=T0 + 200) == []  # its tick was skipped, not owed
    [started] = run_due(store, launcher, now=T0 + 240)
    assert started.action == "started" and len(launcher.started) == 2


def test_a_launch_that_fails_is_recorded_and_the_next_tick_runs(store: Path) -> None:
    book = ScheduleBook(store)
    schedule = book.add(store.parent / "report.ipynb", Timing(created=T0, every=60))
    launcher = CountingLauncher()
    launcher.fail = OSError("no room to fork")
    [failed] = run_due(store, launcher, now=T0 + 60)
    assert failed.action == "failed" and failed.error == "no room to fork"
    stored = book.get(schedule.schedule_id)
    assert stored is not None and stored.state["error"] == "no room to fork"
    launcher.fail = None
    [started] = run_due(store, launcher, now=T0 + 120)
    assert started.action == "started"
    stored = book.get(schedule.schedule_id)
    assert stored is not None and stored.state["error"] is None


def test_a_moved_notebook_fails_its_tick_saying_where_it_looked(store: Path) -> None:
    ScheduleBook(store).add(store.parent / "report.ipynb", Timing(created=T0, every=60))
    (store.parent / "report.ipynb").unlink()
    [failed] = run_due(store, CountingLauncher(), now=T0 + 60)
    assert failed.action == "failed" and "no notebook at" in str(failed.error)


def claimed_by(process: dict[str, Any], tick: float) -> Callable[[dict[str, Any]], None]:
    def claim(state: dict[str, Any]) -> None:
        state.update(tick=tick, instance=None, launching={**process, "since": time.time()})

    return claim


def test_a_tick_taken_by_a_live_scheduler_still_launching_counts_as_running(store: Path) -> None:
    book = ScheduleBook(store)
    schedule = book.add(store.parent / "report.ipynb", Timing(created=T0, every=60))
    # Another scheduler took the tick of T0+60 and has not recorded its run yet.
    assert book.take(schedule, T0 + 60, claimed_by(this_process(), T0 + 60))
    assert not book.take(schedule, T0 + 60, claimed_by(this_process(), T0 + 60))  # taken
    launcher = CountingLauncher()
    [skipped] = run_due(store, launcher, now=T0 + 120)
    assert skipped.action == "skipped" and launcher.started == []
    # Its record arrives after the skip: both are kept, and the claim ends.
    launcher.running.add("run-elsewhere")
    book.settle(schedule.schedule_id, T0 + 60, {"instance": "run-elsewhere"})
    stored = book.get(schedule.schedule_id)
    assert stored is not None and stored.done == T0 + 120
    assert stored.state["instance"] == "run-elsewhere" and stored.state["skipped"] == 1
    assert "launching" not in stored.state
    assert run_due(store, launcher, now=T0 + 180)[0].action == "skipped"  # it still runs
    launcher.running.clear()
    assert run_due(store, launcher, now=T0 + 240)[0].action == "started"


def test_a_claim_whose_scheduler_died_blocks_no_tick(store: Path) -> None:
    book = ScheduleBook(store)
    schedule = book.add(store.parent / "report.ipynb", Timing(created=T0, every=60))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    process = {"pid": dead.pid, "host": this_process()["host"]}
    assert book.take(schedule, T0 + 60, claimed_by(process, T0 + 60))
    [started] = run_due(store, CountingLauncher(), now=T0 + 120)
    assert started.action == "started"


def test_schedulers_racing_in_threads_launch_each_tick_exactly_once(store: Path) -> None:
    book = ScheduleBook(store)
    for i in range(20):
        book.add(store.parent / "report.ipynb", Timing(created=T0, every=60), name=f"s{i}")
    launcher = CountingLauncher()
    barrier = threading.Barrier(8)
    outcomes: list[int] = []

    def scheduler() -> None:
        barrier.wait()
        outcomes.append(len(run_due(store, launcher, now=T0 + 61)))

    threads = [threading.Thread(target=scheduler) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(launcher.started) == 20  # one launch per schedule, across 8 schedulers
    assert sum(outcomes) == 20
    assert sorted(origin for _, _, origin in launcher.started) == sorted(
        f"schedule:s{i}" for i in range(20)
    )


_RACER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from durable_nb.scheduler import run_due

    class FileLauncher:
        def start(self, notebook, store, parameters, origin):
            marker = Path(sys.argv[2]) / f"{origin}-{time.time_ns()}-{id(self)}"
            marker.write_text(origin)
            return marker.name

        def finished(self, store, instance_id):
            return True

    go = float(sys.argv[3])
    while time.time() < go:
        pass
    run_due(Path(sys.argv[1]), FileLauncher(), now=float(sys.argv[4]))
    """
)


def test_schedulers_racing_in_processes_launch_each_tick_exactly_once(
    store: Path, tmp_path: Path
) -> None:
    book = ScheduleBook(store)
    for i in range(30):
        book.add(store.parent / "report.ipynb", Timing(created=T0, every=60), name=f"p{i}")
    launched = tmp_path / "launched"
    launched.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    go = time.time() + 2.0  # all four start their pass at the same moment
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(store), str(launched), str(go), str(T0 + 61)],
            env=env,
        )
        for _ in range(4)
    ]
    assert [racer.wait(timeout=60) for racer in racers] == [0, 0, 0, 0]
    origins = sorted(path.read_text() for path in launched.iterdir())
    assert origins == sorted(f"schedule:p{i}" for i in range(30))


# ------------------------------------------------------------------ the default launcher


def test_the_default_launcher_asks_the_run_instance_whether_it_is_over(tmp_path: Path) -> None:
    from durable_nb.leases import LeaseKeeper
    from durable_nb.notebook_runs import NOTEBOOK_RUN
    from durable_nb.scheduler import NotebookRunLauncher, default_launcher
    from durable_nb.store import DiskCacheStore, InstanceRecord

    assert isinstance(default_launcher(), NotebookRunLauncher)
    launcher = NotebookRunLauncher()
    folder = tmp_path / "store"
    store = DiskCacheStore(folder)
    try:
        assert launcher.finished(folder, "never-started")
        store.put_instance(InstanceRecord("run-1", NOTEBOOK_RUN, status="running"))
        assert launcher.finished(folder, "run-1")  # running, but no runner holds it
        keeper = LeaseKeeper(store, "run-1")
        keeper.acquire()  # a live runner (this process)
        assert not launcher.finished(folder, "run-1")
        keeper.release()
        store.put_instance(InstanceRecord("run-1", NOTEBOOK_RUN, status="completed"))
        assert launcher.finished(folder, "run-1")
    finally:
        store.close()


# ------------------------------------------------------------------ the loops


def test_the_loop_wakes_for_each_tick_and_stops_when_told(store: Path) -> None:
    created = time.time() - 0.5
    ScheduleBook(store).add(
        store.parent / "report.ipynb", Timing(created=created, every=1), name="often"
    )
    launcher = CountingLauncher()
    launcher.running = _Forgetful()  # every run ends at once
    outcomes: list[tuple[float, float]] = []  # (tick, when the loop started it)
    stop = threading.Event()

    def told(_store: Path, outcome: Any) -> None:
        outcomes.append((outcome.tick, time.time()))
        if len(outcomes) == 3:
            stop.set()

    loop = threading.Thread(target=run_forever, args=(lambda: [store], launcher, stop, 30.0, told))
    loop.start()
    loop.join(timeout=10)
    assert not loop.is_alive(), "the loop did not stop when told"
    ticks = [tick for tick, _ in outcomes]
    assert ticks == [created + 1, created + 2, created + 3]  # one start per tick
    # It slept until each tick (not the 30 s poll), and started it soon after.
    assert all(0 <= started - tick < 0.9 for tick, started in outcomes)
    assert len(launcher.started) == 3


class _Forgetful(set[str]):
    """A set of running runs that never holds any."""

    def add(self, element: str) -> None:
        pass


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, 30.0),
        ("", 30.0),
        ("5", 5.0),
        ("0.5", 0.5),
        ("off", None),
        ("0", None),
        ("OFF", None),
        ("soon", 30.0),
        ("-3", 30.0),
        ("nan", 30.0),
    ],
)
def test_the_server_interval_comes_from_the_environment(
    value: str | None, seconds: float | None
) -> None:
    from durable_nb.server_extension import schedule_interval

    assert schedule_interval(value) == seconds


def test_a_launcher_of_two_functions_passes_what_a_pass_gives_it(store: Path) -> None:
    """The shape notebook_runs.start_run will be plugged in with."""
    calls: list[tuple[Path, Path, dict[str, Any], str]] = []

    def start_run(notebook: Path, *, store: Path, parameters: dict[str, Any], origin: str) -> str:
        calls.append((notebook, store, parameters, origin))
        return f"instance-{len(calls)}"

    ended: set[str] = set()
    launcher = CallLauncher(start_run, lambda _store, instance_id: instance_id in ended)
    book = ScheduleBook(store)
    book.add(store.parent / "report.ipynb", Timing(created=T0, every=60), {"n": 2}, name="s")
    assert run_due(store, launcher, now=T0 + 60)[0].instance_id == "instance-1"
    assert calls == [((store.parent / "report.ipynb").resolve(), store, {"n": 2}, "schedule:s")]
    assert run_due(store, launcher, now=T0 + 120)[0].action == "skipped"
    ended.add("instance-1")
    assert run_due(store, launcher, now=T0 + 180)[0].instance_id == "instance-2"
