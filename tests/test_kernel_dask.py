"""End-to-end tests of the Dask executor in real Jupyter kernels.

Each kernel starts its own real ``LocalCluster(processes=True)`` with
``durable_nb.executors.local_cluster(n_workers=2, threads_per_worker=1)`` and runs
its activities there. Activities are defined in notebook cells, so Dask ships them to
the worker processes with cloudpickle. They append one line, ``"<input> <pid>"``, to a
side-effect file per execution: the workers share the filesystem with the test, so
counting lines counts executions (and tells which process ran them), even across an
interrupt or a SIGKILL of the kernel.

Worker processes are in the kernel's process group. After every kernel, whatever is
left of that group (workers orphaned by a SIGKILL, the multiprocessing resource
tracker) is waited for and then killed, by pid.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from kernel_harness import (
    CELL_TIMEOUT,
    CellResult,
    KernelSession,
    complete_lines,
    define,
    fan_cell,
    history_of,
    poll,
    record_of,
    wait_for_lines,
)

from durable_nb import history

pytestmark = pytest.mark.kernel

WORKERS = 2

SETUP = f"""
%load_ext durable_nb
import os, signal, sys, time
import durable_nb
from durable_nb.executors import local_cluster

durable_nb.configure(store=os.environ["DURABLE_NB_STORE"], progress="none")
client = local_cluster(n_workers={WORKERS}, threads_per_worker=1)
durable_nb.configure(executor=client)

def append_line(path, value):
    with open(path, "a") as f:
        f.write(f"{{value}}\\n")
        f.flush()
        os.fsync(f.fileno())
"""

CLOSE = "durable_nb.configure(executor='threads'); client.close(); client.cluster.close()"


def activity_cell(name: str, path: Path, body: str, options: str = "") -> str:
    """An activity that appends ``"<i> <pid>"`` to ``path`` (before ``body``)."""
    lines = "\n".join(f"    {line}" for line in body.strip().splitlines())
    return f"""
%%activity {options}
def {name}(i):
    append_line({str(path)!r}, f"{{i}} {{os.getpid()}}")
{lines}
"""


# ------------------------------------------------------------------ side effects


def read_calls(path: Path) -> list[tuple[int, int]]:
    """``(input, pid)`` per line of a side-effect file, in order (complete lines only)."""
    return [(int(i), int(pid)) for i, pid in (line.split() for line in complete_lines(path))]


def read_indices(path: Path) -> list[int]:
    return [i for i, _ in read_calls(path)]


def completed_in_store(store: Path, instance_id: str) -> int:
    """How many activity results the instance's history holds (read by this process)."""
    return sum(isinstance(e, history.TaskCompleted) for e in history_of(store, instance_id))


def worker_pids(k: KernelSession) -> list[int]:
    pids = k.eval("sorted(client.run(os.getpid).values())", timeout=CELL_TIMEOUT)
    assert isinstance(pids, list)
    return pids


# ------------------------------------------------------------- processes left over


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of a live process, from /proc; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    state, pgrp = fields[0], int(fields[2])
    return None if state in ("Z", "X") else (state, pgrp)


def _in_group(group: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[1] == group:
                found.add(int(entry))
    return found


def left_over(group: int | None, pids: set[int]) -> set[int]:
    """Recorded pids still alive in the kernel's process group, and anything else in
    that group (unless it is this process's own group)."""
    if group is None:
        return set()
    found = {pid for pid in pids if (_stat(pid) or ("", -1))[1] == group}
    if group != os.getpgrp():
        found |= _in_group(group)
    found.discard(os.getpid())
    return found


def end_left_over(group: int | None, pids: set[int], grace: float) -> set[int]:
    """Wait up to ``grace`` s for them to exit; SIGKILL the rest. Returns the killed."""
    deadline = time.monotonic() + grace
    while left_over(group, pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    killed = left_over(group, pids)
    for pid in killed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return killed


@dataclass
class DaskKernel:
    k: KernelSession
    setup: CellResult  # the cell that started the cluster
    workers: list[int]  # worker pids at the start
    group: int | None  # the kernel's process group


@contextmanager
def dask_kernel(tmp_path: Path, store: Path | None = None) -> Iterator[DaskKernel]:
    """A kernel with a LocalCluster of WORKERS worker processes in it. Afterwards the
    cluster is closed (if the kernel still runs) and nothing of it is left running."""
    k = KernelSession(cwd=tmp_path, store=store or tmp_path / "store")
    group: int | None = None
    pids: set[int] = set()
    try:
        k.start()
        assert k.pid is not None
        group = os.getpgid(k.pid)
        setup = k.execute(SETUP, timeout=CELL_TIMEOUT)
        workers = worker_pids(k)
        pids.update(workers)
        assert len(workers) == WORKERS and k.pid not in workers, workers
        yield DaskKernel(k, setup, workers, group)
    finally:
        try:
            if k.is_alive():
                k.execute(CLOSE, timeout=30, allow_error=True)
                # The cluster is closed and every cell has ended: nothing is lost by a
                # kill, which saves the ~2.5 s a graceful shutdown takes after a cluster.
                k.kill()
        except Exception:
            pass
        k.close()
        end_left_over(group, pids, grace=10.0)


# ================================================================ a. results and failures

N_SQUARES = 20


def test_fan_out_results_and_failures_on_dask(tmp_path: Path) -> None:
    squares, checks = tmp_path / "square.txt", tmp_path / "check.txt"

    with dask_kernel(tmp_path) as dk:
        k = dk.k
        define(k, activity_cell("square", squares, "return i * i"), fan_cell("square", "fan"))
        assert k.eval(f"await fan({N_SQUARES})", timeout=CELL_TIMEOUT) == sum(
            i * i for i in range(N_SQUARES)
        )
        calls = read_calls(squares)
        assert sorted(i for i, _ in calls) == list(range(N_SQUARES)), calls
        # In the cluster's worker processes, not in the kernel.
        assert {pid for _, pid in calls} <= set(dk.workers), (calls, dk.workers)

        check = activity_cell(
            "check",
            checks,
            'if i in BAD:\n    raise ValueError(f"bad input {i}")\nreturn i',
            options="--retries 1 --backoff 0.1",
        )
        define(k, "BAD = {7}", check, fan_cell("check", "fan_check"))
        instance_id = k.eval("fan_check.instance_id_for(10)")

        cell = k.execute("await fan_check(10)", timeout=CELL_TIMEOUT, allow_error=True)
        assert cell.status == "error", cell.describe()
        assert cell.error is not None
        assert cell.error["ename"] == "ValueError", cell.describe()  # the original type
        assert "bad input 7" in cell.error["evalue"]
        assert k.eval(
            "(type(sys.last_value).__name__, sys.last_value.durable_activity, "
            "sys.last_value.durable_attempts)"
        ) == ("ValueError", "check", 2)
        record = record_of(k, instance_id)
        assert record["status"] == "failed" and "bad input 7" in record["error"], record

        time.sleep(0.5)  # calls in flight at the failure finish on their workers
        first = read_calls(checks)
        attempts = collections.Counter(i for i, _ in first)
        assert attempts[7] == 2, first  # the first attempt and its one retry
        assert all(n == 1 for i, n in attempts.items() if i != 7), first
        assert {pid for _, pid in first} <= set(dk.workers), (first, dk.workers)

        # Fix the data (BAD travels with the activity at each submission): the rerun
        # runs the failed call again and never one that had succeeded.
        k.run("BAD = set()")
        assert k.eval("await fan_check(10)", timeout=CELL_TIMEOUT) == 45
        rerun = read_indices(checks)[len(first) :]
        assert 7 in rerun, rerun
        assert not set(rerun) & (set(attempts) - {7}), (first, rerun)
        assert sorted(set(read_indices(checks))) == list(range(10))


# ================================================================ b. interrupt

N_SLOW = 10


def test_interrupt_leaves_the_workers_alive_and_keeps_what_they_finish(tmp_path: Path) -> None:
    store = tmp_path / "store"
    started, done = tmp_path / "started.txt", tmp_path / "done.txt"
    slow = f"""
%%activity
def slow(i):
    append_line({str(started)!r}, f"{{i}} {{os.getpid()}}")
    time.sleep(1.0)
    append_line({str(done)!r}, f"{{i}} {{os.getpid()}}")
    return i * 2
"""

    with dask_kernel(tmp_path, store) as dk:
        k = dk.k
        define(k, slow, fan_cell("slow", "fan"))
        instance_id = k.eval(f"fan.instance_id_for({N_SLOW})")
        assert k.eval(
            "set(client.run(lambda: signal.getsignal(signal.SIGINT) == signal.SIG_IGN).values())"
        ) == {True}, "the workers do not ignore SIGINT"

        running = k.run_async(f"total = await fan({N_SLOW})")
        # The first wave (one call per worker) takes 1 s; interrupt in the second.
        wait_for_lines(k, running, done, WORKERS)
        time.sleep(0.3)
        interrupted_at = time.monotonic()
        k.interrupt()
        cell = k.wait(running, timeout=CELL_TIMEOUT)
        latency = time.monotonic() - interrupted_at
        started_then, done_then = set(read_indices(started)), set(read_indices(done))
        assert cell.status == "error", cell.describe()
        assert cell.error is not None
        assert cell.error["ename"] in ("KeyboardInterrupt", "CancelledError"), cell.describe()
        assert latency < 2.0, f"the interrupted cell replied {latency:.2f} s after the interrupt"
        running_then = started_then - done_then
        assert running_then, (started_then, done_then)  # calls were running on the workers

        # The kernel, the cluster and its very worker processes survived the SIGINT.
        assert k.eval("1 + 1", timeout=10) == 2
        assert k.eval("len(client.scheduler_info()['workers'])") == WORKERS
        assert worker_pids(k) == dk.workers
        assert record_of(k, instance_id)["status"] == "interrupted"

        # The calls running at the interrupt finish, and their results are checkpointed.
        poll(
            lambda: k.eval("sum(len(keys) for keys in client.processing().values())") == 0,
            CELL_TIMEOUT,
            "the cluster to finish the calls it was running",
            pause=0.02,
        )
        poll(
            lambda: completed_in_store(store, instance_id) == len(read_calls(done)),
            10.0,
            "every finished call to be checkpointed",
            pause=0.02,
        )
        finished = read_indices(done)
        assert running_then <= set(finished), (running_then, finished)
        assert len(finished) > len(done_then), "nothing finished after the interrupt"

        k.run(f"total = await fan({N_SLOW})", timeout=CELL_TIMEOUT)
        assert k.eval("total") == sum(2 * i for i in range(N_SLOW))
        assert worker_pids(k) == dk.workers
        record = record_of(k, instance_id)

    rerun = read_indices(done)[len(finished) :]
    assert len(rerun) < N_SLOW
    assert not set(rerun) & set(finished), (finished, rerun)  # nothing ran twice
    assert sorted(read_indices(done)) == list(range(N_SLOW))
    assert record["status"] == "completed" and record["runs"] == 2, record
    counts = record["counts"]
    assert (counts["cached"], counts["ran"]) == (len(finished), len(rerun)), (counts, finished)


# ================================================================ c. kernel killed

N_STEPS = 30


def test_kernel_killed_mid_run_resumes_on_a_new_cluster(tmp_path: Path) -> None:
    store = tmp_path / "store"
    effects = tmp_path / "step.txt"
    step = f"""
%%activity
def step(i):
    time.sleep(0.3)
    append_line({str(effects)!r}, f"{{i}} {{os.getpid()}}")
    return i * 2
"""
    expected = sum(2 * i for i in range(N_STEPS))

    with dask_kernel(tmp_path, store) as dk1:
        k1 = dk1.k
        define(k1, step, fan_cell("step", "fan"))
        instance_id = k1.eval(f"fan.instance_id_for({N_STEPS})")
        running = k1.run_async(f"total = await fan({N_STEPS})")
        wait_for_lines(k1, running, effects, 10)
        k1.kill()
        assert not k1.peek(running).done, "the run finished before the kill"
        # The workers die with their nannies' process (the kernel), or are orphaned:
        # either way none may write once `before` is read.
        end_left_over(dk1.group, set(dk1.workers), grace=10.0)
        poll(lambda: not left_over(dk1.group, set(dk1.workers)), 5.0, "no process left", pause=0.02)
        first_workers = set(dk1.workers)

    before = read_indices(effects)
    assert 10 <= len(before) < N_STEPS, before
    assert len(set(before)) == len(before), "a call ran twice in the first kernel"

    with dask_kernel(tmp_path, store) as dk2:
        k2 = dk2.k
        define(k2, step, fan_cell("step", "fan"))
        k2.run(f"total = await fan({N_STEPS})", timeout=CELL_TIMEOUT)
        assert k2.eval("total") == expected
        record = record_of(k2, instance_id)
        second_workers = set(dk2.workers)

    calls = read_calls(effects)
    after = [i for i, _ in calls]
    times_run = collections.Counter(after)
    assert set(times_run) == set(range(N_STEPS)), "some calls never ran"
    twice = sorted(i for i, n in times_run.items() if n == 2)
    assert max(times_run.values()) <= 2, times_run.most_common(3)
    # Only calls in flight at the kill (written, not yet checkpointed) ran again: at most
    # one per worker; everything that finished before them ran exactly once.
    assert len(twice) <= WORKERS and set(twice) <= set(before), (twice, before)
    assert all(times_run[i] == 1 for i in before[: len(before) - WORKERS]), (twice, before)
    # The first calls ran on the first cluster, the rest on the second.
    assert {pid for _, pid in calls[: len(before)]} <= first_workers
    assert {pid for _, pid in calls[len(before) :]} <= second_workers

    assert record["status"] == "completed" and record["runs"] == 2, record
    assert record["output"] == expected
    counts = record["counts"]
    assert counts["cached"] + counts["ran"] == N_STEPS, counts
    assert counts["ran"] == len(after) - len(before), (counts, len(before))
    assert counts["cached"] >= len(before) - WORKERS, (counts, len(before))


# ================================================================ known problems


RESTART_DURING_RUN = """
import asyncio
h = fan.start(6)
while not os.path.exists(NAPS):
    await asyncio.sleep(0.01)
client.restart()
try:
    outcome = ("completed", await asyncio.wait_for(h, 3))
except asyncio.TimeoutError:
    outcome = ("still running 3 s after the restart",)
except Exception as exc:
    outcome = ("failed", type(exc).__name__)
"""


def test_a_client_restart_neither_hangs_a_run_nor_exposes_the_workers(tmp_path: Path) -> None:
    naps = tmp_path / "nap.txt"
    problems = []
    with dask_kernel(tmp_path) as dk:
        k = dk.k
        define(
            k,
            f"NAPS = {str(naps)!r}",
            activity_cell("nap", naps, "time.sleep(0.2)\nreturn i"),
            fan_cell("nap", "fan"),
        )
        # 1. Restart the workers while a run has calls on them: the run must end (its
        # calls failed, or run again), not wait forever.
        k.run(RESTART_DURING_RUN, timeout=CELL_TIMEOUT)
        outcome = k.eval("outcome")
        if outcome[0] not in ("completed", "failed"):
            problems.append(f"a run in progress during client.restart(): {outcome}")

        # 2. The restarted workers, like the first ones, survive the kernel's interrupt.
        restarted = worker_pids(k)
        assert len(restarted) == WORKERS
        idle = k.run_async("time.sleep(3)")
        time.sleep(0.5)
        k.interrupt()
        assert k.wait(idle, timeout=CELL_TIMEOUT).status == "error"
        time.sleep(1.0)  # a killed worker takes a moment to leave the scheduler
        left = k.eval("sorted(client.run(os.getpid).values())")
        if left != restarted:
            problems.append(f"worker pids {restarted} after client.restart(), {left} after SIGINT")
    assert not problems, "\n".join(problems)


def test_an_interrupt_starts_at_most_what_the_workers_had_queued(tmp_path: Path) -> None:
    started = tmp_path / "started.txt"
    slow = activity_cell("slow", started, "time.sleep(0.6)\nreturn i")

    with dask_kernel(tmp_path) as dk:
        k = dk.k
        define(k, slow, fan_cell("slow", "fan"))
        running = k.run_async("await fan(8)")
        wait_for_lines(k, running, started, WORKERS)
        time.sleep(0.2)
        k.interrupt()
        assert k.wait(running, timeout=CELL_TIMEOUT).status == "error"
        at_interrupt = set(read_indices(started))
        poll(
            lambda: k.eval("sum(len(keys) for keys in client.processing().values())") == 0,
            CELL_TIMEOUT,
            "the cluster to finish the calls it was running",
            pause=0.02,
        )
        # Calls already handed to a worker's queue count as running on the scheduler, so
        # at most one more per worker starts; every other waiting call was dropped.
        late = set(read_indices(started)) - at_interrupt
        assert len(late) <= WORKERS, (at_interrupt, read_indices(started))
        assert len(read_indices(started)) < 8


FAILING = """
%%activity --retries 1 --backoff 0.1
def failing(i):
    if i == 3:
        raise ValueError(f"bad input {i}")
    return i
"""


def test_failure_traceback_on_dask_points_at_the_activity_line(tmp_path: Path) -> None:
    with dask_kernel(tmp_path) as dk:
        k = dk.k
        define(k, FAILING, fan_cell("failing", "fan"))
        cell = k.execute("await fan(5)", timeout=CELL_TIMEOUT, allow_error=True)
        assert cell.error is not None and cell.error["ename"] == "ValueError", cell.describe()
        traceback = cell.traceback_text
        # As on threads (test_kernel_e2e): the orchestrator's line and the activity's.
        assert "results = yield ctx.task_all" in traceback, traceback
        assert 'raise ValueError(f"bad input {i}")' in traceback, traceback
        assert "distributed/" not in traceback and "dask/" not in traceback, traceback


def test_failure_traceback_on_processes_points_at_the_activity_line(tmp_path: Path) -> None:
    """The process pool formats the traceback in the worker, which has no file for a
    notebook cell: the cell's lines travel with the call."""
    k = KernelSession(cwd=tmp_path, store=tmp_path / "store")
    with k:
        define(
            k,
            "%load_ext durable_nb\nimport durable_nb\n"
            "durable_nb.configure(executor='processes', progress='none')",
            FAILING,
            fan_cell("failing", "fan"),
        )
        cell = k.execute("await fan(5)", timeout=CELL_TIMEOUT, allow_error=True)
        assert cell.error is not None and cell.error["ename"] == "ValueError", cell.describe()
        traceback = cell.traceback_text
        assert "results = yield ctx.task_all" in traceback, traceback
        assert 'raise ValueError(f"bad input {i}")' in traceback, traceback
        assert "<dynamic-code>" not in traceback, traceback


@contextmanager
def port_taken(port: int) -> Iterator[None]:
    """Hold ``port`` for the block (if something else holds it already, that does too)."""
    sock = socket.socket()
    try:
        try:
            sock.bind(("", port))
            sock.listen()
        except OSError:
            pass  # in use already
        yield
    finally:
        sock.close()


def test_local_cluster_keeps_the_cells_output_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ipykernel forwards what is written to its file descriptors (by the worker
    # processes too) to the cells, as in Jupyter, only when PYTEST_CURRENT_TEST is unset.
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    problems = []
    with port_taken(8787), dask_kernel(tmp_path) as dk:
        k = dk.k
        if "Port 8787" in dk.setup.stderr:
            problems.append(f"starting the cluster printed:\n{dk.setup.stderr}")
        define(k, FAILING, fan_cell("failing", "fan"))
        cell = k.execute("await fan(5)", timeout=CELL_TIMEOUT, allow_error=True)
        assert cell.error is not None and cell.error["ename"] == "ValueError", cell.describe()
        # The workers' output reaches the kernel a little later: give it a moment.
        settle = k.execute("time.sleep(1.0)", timeout=CELL_TIMEOUT)
        # The failure itself is the cell's error; nothing else is printed.
        printed = cell.stderr + settle.stderr
        if printed:
            problems.append(f"the failing activity printed:\n{printed}")
    assert not problems, "\n".join(problems)
