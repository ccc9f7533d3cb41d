"""Crash-matrix end-to-end tests: SIGKILL a real kernel at seeded moments, resume.

One orchestration of 1,000 activity calls covers every kind of durable step:

    stage A   a fan-out of 600 ``work(i)``                         i in [0, 600)
    timer     a durable timer of 0.3 s
    stage B   a sub-orchestration fanning out 300 ``work(600+i)``  i in [600, 900)
    stage C   a sequential chain of 100 ``work(900+i)``            i in [900, 1000)
              (every tenth returns a 1 MiB array: a large result, in a file of its own)

Every ``work(i)`` sleeps 2-5 ms, then appends ``i`` to a side-effect file (one short
O_APPEND write), then returns ``i * i``; ``--concurrency 16`` bounds the calls in
flight. For each seed, kernel 1 runs the orchestration and is SIGKILLed at a seeded
moment (after a random number of side-effect lines in [1, 999], or while the timer is
pending); kernel 2, on the same store, reruns it to completion. Then:

    a. the result equals the value of an uninterrupted run;
    b. every index ran at least once, and every index whose line was written well
       before the kill (its result long checkpointed) ran exactly once;
    c. re-executions are bounded by the calls in flight (16);
    d. the store is clean: diskcache's own check() has no warnings and
       ``durable-nb doctor --store DIR`` exits 0 without warnings.

Three seeds run by default (one kill in the fan-out, one during the timer, one in the
sub-orchestration); all twenty with ``-m crash_matrix`` (or with
``DURABLE_NB_CRASH_MATRIX=all``).

A second test runs two kernels on one store at once, each on its own instance, and
checks that neither loses the other's history.
"""

from __future__ import annotations

import collections
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import diskcache
import pytest
from kernel_harness import KernelSession, define, durable_nb_cli, history_of, read_indices

from durable_nb import history
from durable_nb.store import DiskCacheStore

pytestmark = pytest.mark.kernel

CELL_TIMEOUT = 90.0  # generous for a loaded 2-core machine; a whole run takes a few seconds
CONCURRENCY = 16
N_A, N_B, N_C = 600, 300, 100
N_TOTAL = N_A + N_B + N_C
TIMER_SECONDS = 0.3
EFFECTS = "work.txt"

# ---------------------------------------------------------------------- cells

SETUP = """
%load_ext durable_nb
import os, time
import durable_nb
durable_nb.configure(store=os.environ["DURABLE_NB_STORE"], progress="none")

def append_line(path, value):
    # One short O_APPEND write: a complete line on disk means the call did its work.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{value}\\n".encode())
    finally:
        os.close(fd)
"""

# Every LARGE_EVERY-th call of the chain returns a 1 MiB array instead of an int, so
# kills also land in the middle of a large result's write (its own file, under intent).
LARGE_EVERY = 10

WORK = f"""
%%activity --concurrency {CONCURRENCY}
def work(i):
    time.sleep(0.002 + (i % 4) * 0.001)
    append_line({EFFECTS!r}, i)
    if {N_A + N_B} <= i < {N_TOTAL} and i % {LARGE_EVERY} == 0:
        import numpy
        return numpy.full(1 << 17, i * i, dtype=numpy.int64)  # 1 MiB
    return i * i
"""

PIPELINE = f"""
%%orchestrator
def stage_b(ctx, base, n):
    squares = yield ctx.task_all([ctx.call_activity(work, base + i) for i in range(n)])
    return sum(squares)

def pipeline(ctx):
    a = yield ctx.task_all([ctx.call_activity(work, i) for i in range({N_A})])
    yield ctx.create_timer({TIMER_SECONDS})
    b = yield ctx.call_sub_orchestrator(stage_b, {N_A}, {N_B})
    chain = []
    for i in range({N_A + N_B}, {N_TOTAL}):
        value = yield ctx.call_activity(work, i)
        chain.append(int(value[-1]) if hasattr(value, "nbytes") else value)
    return [sum(a), b, sum(chain), len(a), len(chain)]
"""

EXPECTED = [
    sum(i * i for i in range(N_A)),
    sum(i * i for i in range(N_A, N_A + N_B)),
    sum(i * i for i in range(N_A + N_B, N_TOTAL)),
    N_A,
    N_C,
]

# ---------------------------------------------------------------------- helpers


def count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def records_in(store: Path) -> dict[str, dict[str, Any]]:
    opened = DiskCacheStore(store)
    try:
        return {r.instance_id: r.to_dict() for r in opened.list_instances()}
    finally:
        opened.close()


def completed_keys(events: list[history.Event]) -> list[str]:
    return [e.key for e in events if isinstance(e, history.TaskCompleted)]


def wait_until(k: KernelSession, msg_id: str, predicate: Any, what: str, pause: float) -> None:
    """Poll ``predicate`` until true; fail at once if the cell ends first."""
    deadline = time.monotonic() + CELL_TIMEOUT
    while not predicate():
        cell = k.peek(msg_id)
        if cell.done:
            raise AssertionError(f"the cell ended before {what}\n{cell.describe()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{cell.describe()}")
        time.sleep(pause)


def assert_store_clean(store: Path) -> None:
    """diskcache's own consistency check and ``durable-nb doctor``, from other processes
    than the (closed) kernels: no warning of any kind, even after a kill."""
    cache = diskcache.Cache(str(store))
    try:
        warnings = [str(w.message) for w in cache.check()]
    finally:
        cache.close()
    assert warnings == []
    doctor = durable_nb_cli("doctor", "--store", str(store))
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    problems = [
        line for line in doctor.stdout.splitlines() if line.startswith(("[WARN]", "[FAIL]"))
    ]
    assert problems == [], doctor.stdout


# ================================================================ 1. the crash matrix

ALL_SEEDS = range(20)
TIMER = "timer"


STAGES = ("fan-out", "fan-out", TIMER, "sub-orchestration", "chain")


def kill_plan(seed: int) -> int | str:
    """When kernel 1 dies: after this many side-effect lines, or during the timer.

    Stratified so that every stage gets killed: ``seed % 5`` picks the stage, the seed's
    random generator the line within it (uniform over the stage's lines in [1, 999]).
    """
    rng = random.Random(f"durable_nb crash matrix {seed}")
    stage = STAGES[seed % len(STAGES)]
    if stage == TIMER:
        return TIMER
    low, high = {
        "fan-out": (1, N_A),
        "sub-orchestration": (N_A + 1, N_A + N_B),
        "chain": (N_A + N_B + 1, N_TOTAL - 1),
    }[stage]
    return rng.randint(low, high)


def _default_seeds() -> set[int]:
    """Three seeds that kill in different places: the fan-out, the timer, the child."""
    return {STAGES.index("fan-out"), STAGES.index(TIMER), STAGES.index("sub-orchestration")}


DEFAULT_SEEDS = _default_seeds()
_FULL = os.environ.get("DURABLE_NB_CRASH_MATRIX") == "all"
_ONLY_IN_FULL = pytest.mark.skipif(
    "not ('crash_matrix' in config.getoption('markexpr') or "
    "__import__('os').environ.get('DURABLE_NB_CRASH_MATRIX') == 'all')",
    reason="crash matrix seed: run all 20 with -m crash_matrix or DURABLE_NB_CRASH_MATRIX=all",
)


def _seed_params() -> list[Any]:
    params = []
    for seed in ALL_SEEDS:
        marks = [pytest.mark.crash_matrix]
        if seed not in DEFAULT_SEEDS and not _FULL:
            marks.append(_ONLY_IN_FULL)
        params.append(pytest.param(seed, marks=marks, id=f"seed{seed}-kill@{kill_plan(seed)}"))
    return params


@pytest.mark.parametrize("seed", _seed_params())
def test_sigkill_at_a_seeded_moment_then_resume(tmp_path: Path, seed: int) -> None:
    store = tmp_path / "store"
    effects = tmp_path / EFFECTS
    plan = kill_plan(seed)
    cells = (SETUP, WORK, PIPELINE)

    # ---- kernel 1: run, and SIGKILL it at the planned moment
    with KernelSession(cwd=tmp_path, store=store) as k1:
        define(k1, *cells, timeout=CELL_TIMEOUT)
        parent_id = k1.eval("pipeline.instance_id_for()")
        running = k1.run_async("result = await pipeline()")
        if plan == TIMER:

            def timer_pending() -> bool:
                if count_lines(effects) < N_A:
                    return False
                return any(
                    isinstance(e, history.TimerCreated) for e in history_of(store, parent_id)
                )

            wait_until(k1, running, timer_pending, "the timer was created", 0.005)
        else:
            wait_until(
                k1,
                running,
                lambda: count_lines(effects) >= plan,
                f"{plan} side-effect lines",
                0.001,
            )
        k1.kill()
        assert not k1.is_alive()
        assert not k1.peek(running).done, "the run finished before the kill"

    before = read_indices(effects)  # the kernel is dead: nothing more gets written
    assert len(set(before)) == len(before), "a call ran twice in the first kernel"
    if plan == TIMER:
        assert sorted(before) == list(range(N_A)), "the kill missed the timer"
        assert not any(isinstance(e, history.TimerFired) for e in history_of(store, parent_id))
    else:
        assert plan <= len(before) < N_TOTAL, (plan, len(before))

    # ---- kernel 2: same store, rerun to completion
    with KernelSession(cwd=tmp_path, store=store) as k2:
        define(k2, *cells, timeout=CELL_TIMEOUT)
        k2.run("result = await pipeline()", timeout=CELL_TIMEOUT)
        result = k2.eval("result")

    after = read_indices(effects)
    times_run = collections.Counter(after)

    twice = sorted(i for i, n in times_run.items() if n == 2)
    lag = [len(before) - before.index(i) for i in twice]  # 1 = the last line before the kill
    print(f"seed {seed}: kill@{plan}, {len(before)} lines before, reran {len(twice)} {lag}")

    # a. the same result as an uninterrupted run
    assert result == EXPECTED, result

    # b. every call ran; calls that finished well before the kill ran exactly once
    assert set(times_run) == set(range(N_TOTAL)), sorted(set(range(N_TOTAL)) - set(times_run))
    assert max(times_run.values()) <= 2, times_run.most_common(3)
    # A call's slot is freed when its result reaches the event loop, a moment before the
    # chunk holding that result is committed; so the lines whose result may not have
    # been on disk at the kill are at most the last 2 x concurrency lines.
    well_before = before[: max(0, len(before) - 2 * CONCURRENCY)]
    assert [i for i in well_before if times_run[i] != 1] == []

    # c. re-executions: only calls in flight at the kill, and each at most once more
    assert set(twice) <= set(before), twice
    assert len(twice) <= CONCURRENCY, (len(twice), twice)
    assert len(after) == N_TOTAL + len(twice)

    # The histories hold every result exactly once: 700 in the parent, 300 in the child.
    records = records_in(store)
    children = [iid for iid, r in records.items() if r["parent"] == parent_id]
    assert len(children) == 1, records.keys()
    parent_keys = completed_keys(history_of(store, parent_id))
    child_keys = completed_keys(history_of(store, children[0]))
    assert len(parent_keys) == len(set(parent_keys)) == N_A + N_C
    assert len(child_keys) == len(set(child_keys)) == N_B
    assert records[parent_id]["status"] == "completed", records[parent_id]
    assert records[parent_id]["output"] == EXPECTED
    assert records[children[0]]["status"] == "completed", records[children[0]]

    # d. the store is clean, with no stray file of a write the kill interrupted
    assert_store_clean(store)


# ================================================================ 2. two kernels, one store

N_FAN = 300
BASES = (0, 10_000)

FAN = """
%%orchestrator
def fan(ctx, base, n):
    squares = yield ctx.task_all([ctx.call_activity(work, base + i) for i in range(n)])
    return sum(squares)
"""


def test_two_kernels_run_different_instances_on_one_store_at_once(tmp_path: Path) -> None:
    store = tmp_path / "store"
    effects = tmp_path / EFFECTS
    expected = [sum(i * i for i in range(base, base + N_FAN)) for base in BASES]

    with (
        KernelSession(cwd=tmp_path, store=store) as k1,
        KernelSession(cwd=tmp_path, store=store) as k2,
    ):
        kernels = (k1, k2)
        for k in kernels:
            define(k, SETUP, WORK, FAN, timeout=CELL_TIMEOUT)
        ids = [
            k.eval(f"fan.instance_id_for({base}, {N_FAN})")
            for k, base in zip(kernels, BASES, strict=True)
        ]
        assert ids[0] != ids[1]
        running = [
            k.run_async(f"total = await fan({base}, {N_FAN})")
            for k, base in zip(kernels, BASES, strict=True)
        ]
        for k, msg_id in zip(kernels, running, strict=True):
            k.wait(msg_id, timeout=CELL_TIMEOUT, allow_error=False)
        totals = [k.eval("total") for k in kernels]

    assert totals == expected

    lines = read_indices(effects)
    per_instance = [[i for i in lines if base <= i < base + N_FAN] for base in BASES]
    for base, indices in zip(BASES, per_instance, strict=True):
        assert sorted(indices) == list(range(base, base + N_FAN)), base  # each exactly once
    assert len(lines) == 2 * N_FAN
    # The two runs really overlapped: each wrote its first line before the other's last.
    spans = [
        (
            min(n for n, i in enumerate(lines) if i in set(ix)),
            max(n for n, i in enumerate(lines) if i in set(ix)),
        )
        for ix in per_instance
    ]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], spans

    # Nothing lost in the store, read by a third process (this one).
    records = records_in(store)
    for instance_id, total in zip(ids, expected, strict=True):
        keys = completed_keys(history_of(store, instance_id))
        assert len(keys) == len(set(keys)) == N_FAN, (instance_id, len(keys))
        assert records[instance_id]["status"] == "completed", records[instance_id]
        assert records[instance_id]["output"] == total
    assert_store_clean(store)


# ================================================================ 3. kills mid-write

CHUNK_WRITER = """
import sys, time
from durable_nb import DiskCacheStore, history
store = DiskCacheStore(sys.argv[1])
# The first chunk of a 600-call fan-out: ExecutionStarted and 600 TaskScheduled, about
# 45 KB pickled: above diskcache's default 32 KiB file threshold.
events = [history.TaskScheduled(time.time(), f"work:{'ab' * 20}:{i}", "work") for i in range(600)]
print("opened", flush=True)
sys.stdin.readline()
store.append("instance", events)
"""


def test_a_kill_during_a_large_chunk_write_leaves_no_stray_file(tmp_path: Path) -> None:
    """The writer appends a large chunk while another process holds the database's
    write lock for a moment (as a second kernel or the CLI does), and is killed while
    it waits. With diskcache's defaults the chunk's value file was already written by
    then; chunks are kept inside SQLite, so there is nothing to leave behind."""
    store = tmp_path / "store"
    DiskCacheStore(store).close()
    writer = subprocess.Popen(
        [sys.executable, "-c", CHUNK_WRITER, str(store)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    lock = sqlite3.connect(store / "cache.db", isolation_level=None)
    try:
        assert writer.stdout is not None and writer.stdin is not None
        assert writer.stdout.readline().strip() == "opened"
        lock.execute("BEGIN IMMEDIATE")  # another writer, for a moment
        writer.stdin.write("go\n")
        writer.stdin.flush()
        time.sleep(1.0)  # the chunk is encoded and waits for the lock
        assert writer.poll() is None
        writer.kill()  # the crash, while the chunk waits for the lock
        writer.wait(timeout=10)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(timeout=10)
        if lock.in_transaction:
            lock.execute("ROLLBACK")
        lock.close()
    assert [p for p in store.rglob("*") if p.is_file() and not p.name.startswith("cache.db")] == []
    assert history_of(store, "instance") == []  # the chunk itself is rightly lost
    assert_store_clean(store)


# A large result (>= 1 MiB, so it gets a file of its own) whose pickling stops the
# writer half-way: after 2 MiB of it are in the file, the process kills itself (when
# STOP is "kill") or sleeps (when STOP is "hang", a live writer mid-write).
LARGE_WRITER = """
import os, signal, sys, time
from durable_nb import DiskCacheStore, InstanceRecord, history

class Stop:
    def __reduce__(self):
        if sys.argv[2] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        print("writing", flush=True)
        time.sleep(120)
        return (Stop, ())

class Big:
    nbytes = 3 << 20
    def __reduce__(self):
        return (tuple, ((b"x" * (2 << 20), Stop()),))

store = DiskCacheStore(sys.argv[1])
store.put_instance(InstanceRecord("instance", "work"))
store.append("instance", [history.TaskCompleted(time.time(), "small", "work", 1, 1)])
store.append("instance", [history.TaskCompleted(time.time(), "big", "work", Big(), 1)])
"""


def stray_files(store: Path) -> list[Path]:
    return [p for p in store.rglob("*.val") if p.is_file()]


def test_a_kill_during_a_large_result_write_is_swept_on_next_open(tmp_path: Path) -> None:
    store = tmp_path / "store"
    writer = subprocess.run(
        [sys.executable, "-c", LARGE_WRITER, str(store), "kill"], timeout=60, check=False
    )
    assert writer.returncode == -9  # it died mid-pickle
    assert [p.stat().st_size >= 2 << 20 for p in stray_files(store)] == [True]
    # Opening the store (here through reading the history) sweeps the dead write.
    events = history_of(store, "instance")
    assert [e.key for e in events if isinstance(e, history.TaskCompleted)] == ["small"]
    assert stray_files(store) == []
    assert_store_clean(store)


def test_a_live_writers_file_is_never_swept(tmp_path: Path) -> None:
    store = tmp_path / "store"
    writer = subprocess.Popen(
        [sys.executable, "-c", LARGE_WRITER, str(store), "hang"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "writing"
        (half_written,) = stray_files(store)
        DiskCacheStore(store).close()  # another process opens the store meanwhile
        assert half_written.exists()  # its writer is alive: the file is not stray yet
    finally:
        writer.kill()
        writer.wait(timeout=10)
    DiskCacheStore(store).close()
    assert not half_written.exists()
    assert_store_clean(store)
