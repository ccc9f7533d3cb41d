"""End-to-end tests of durable_nb in real Jupyter kernels.

Every test drives real ipykernel processes (see kernel_harness.py) with a real
diskcache store and real side-effect files in pytest's tmp_path. Activities
append one line (their input) to a side-effect file per execution, so counting
lines counts executions, across kernels and even across a SIGKILL.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

import pytest
from kernel_harness import (
    CELL_TIMEOUT,
    CellResult,
    KernelSession,
    define,
    fan_cell,
    read_indices,
    record_of,
    wait_for_lines,
)

pytestmark = pytest.mark.kernel

# ---------------------------------------------------------------------- cells


def setup_cell(progress: str = "none", explicit_store: bool = True) -> str:
    """Load the extension, point it at the test's store, define the side-effect helper.

    ``append_line`` is the only side effect of every activity: one short write in
    append mode, flushed and fsynced, so a line on disk means the call ran.
    """
    store = 'store=os.environ["DURABLE_NB_STORE"], ' if explicit_store else ""
    return f"""
%load_ext durable_nb
import asyncio, os, threading, time
import durable_nb
durable_nb.configure({store}progress={progress!r})

def append_line(path, value):
    with open(path, "a") as f:
        f.write(f"{{value}}\\n")
        f.flush()
        os.fsync(f.fileno())
"""


def recording_activity(
    name: str, path: str, factor: int = 2, options: str = "", sleep: float = 0.0
) -> str:
    """One template for the plain activities, so an edit shows as the one value it changes."""
    magic = f"%%activity {options}".rstrip()
    nap = f"\n    time.sleep({sleep})" if sleep else ""
    return f"""
{magic}
def {name}(i):{nap}
    append_line("{path}", i)
    return i * {factor}
"""


# ================================================================ a. kill

CONCURRENCY = 8
N_WORK = 200

WORK = recording_activity(
    "work", "work.txt", options=f"--retries 2 --concurrency {CONCURRENCY}", sleep=0.02
)


def test_sigkill_mid_fan_out_resumes_in_a_new_kernel(tmp_path: Path) -> None:
    store = tmp_path / "store"
    effects = tmp_path / "work.txt"
    expected = sum(2 * i for i in range(N_WORK))
    # The store comes from DURABLE_NB_STORE alone here (configure without store=).
    cells = (setup_cell(explicit_store=False), WORK, fan_cell("work"))

    with KernelSession(cwd=tmp_path, store=store) as k1:
        define(k1, *cells)
        assert k1.eval("durable_nb.get_runtime().store.location") == str(store.resolve())
        instance_id = k1.eval(f"fan.instance_id_for({N_WORK})")
        running = k1.run_async(f"total = await fan({N_WORK})")
        wait_for_lines(k1, running, effects, 60, pause=0.002)
        k1.kill()
        assert not k1.is_alive()
        assert not k1.peek(running).done, "the run finished before the kill"

    before = read_indices(effects)  # the kernel is dead: nothing more gets written
    assert 60 <= len(before) < N_WORK, len(before)
    assert len(set(before)) == len(before), "an activity ran twice in the first kernel"

    with KernelSession(cwd=tmp_path, store=store) as k2:
        define(k2, *cells)
        stale = record_of(k2, instance_id)
        assert stale["runs"] == 1 and stale["status"] != "completed", stale

        k2.run(f"total = await fan({N_WORK})", timeout=CELL_TIMEOUT)
        assert k2.eval("total") == expected
        record = record_of(k2, instance_id)

    after = read_indices(effects)
    times_run = collections.Counter(after)
    assert set(times_run) == set(range(N_WORK)), "some calls never ran"
    assert max(times_run.values()) <= 2, times_run.most_common(3)
    twice = sorted(i for i, n in times_run.items() if n == 2)
    # Re-executed: only calls whose line was written but whose result was not yet
    # checkpointed when the kernel died, i.e. at most the calls in flight.
    assert len(twice) <= CONCURRENCY, twice
    assert set(twice) <= set(before)
    # Calls that finished well before the kill (all but the last 2 x concurrency
    # lines written) had long been checkpointed: they ran exactly once.
    well_before = before[: len(before) - 2 * CONCURRENCY]
    assert [i for i in well_before if times_run[i] != 1] == []

    assert record["status"] == "completed"
    assert record["runs"] == 2
    assert record["output"] == expected
    counts = record["counts"]
    assert counts["calls"] == N_WORK
    assert counts["cached"] > 0 and counts["ran"] < N_WORK, counts
    assert counts["cached"] + counts["ran"] == N_WORK, counts
    assert counts["ran"] == len(after) - len(before), (counts, len(before), len(after))
    assert counts["cached"] >= len(before) - CONCURRENCY, (counts, len(before))
    assert counts["failed"] == 0 and counts["retried"] == 0, counts


# ================================================================ b. edit

ACT_A = recording_activity("act_a", "a.txt")
ACT_B = recording_activity("act_b", "b.txt")
ACT_B_EDITED = recording_activity("act_b", "b.txt", factor=3)

# Same logic as ACT_A (recording_activity's template): comments, blank lines,
# spacing, quotes, redundant parentheses and a docstring only.
ACT_A_COSMETIC = """
%%activity
def act_a( i ):
    '''Doubles i, and leaves a trace.'''
    # a comment does not change what the activity does


    append_line( 'a.txt' , i )  # nor does a trailing one
    return (i*2)
"""

BOTH = """
%%orchestrator
def both(ctx, n):
    a = yield ctx.task_all([ctx.call_activity(act_a, i) for i in range(n)])
    b = yield ctx.task_all([ctx.call_activity(act_b, i) for i in range(n)])
    return [sum(a), sum(b)]
"""


def test_editing_one_activity_reruns_only_that_activity(tmp_path: Path) -> None:
    store = tmp_path / "store"
    a_file, b_file = tmp_path / "a.txt", tmp_path / "b.txt"

    with KernelSession(cwd=tmp_path, store=store) as k1:
        define(k1, setup_cell(), ACT_A, ACT_B, BOTH)
        assert k1.eval("await both(10)") == [90, 90]
        instance_id = k1.eval("both.instance_id_for(10)")
    assert sorted(read_indices(a_file)) == list(range(10))
    assert sorted(read_indices(b_file)) == list(range(10))

    with KernelSession(cwd=tmp_path, store=store) as k2:
        define(k2, setup_cell(), ACT_A, ACT_B_EDITED, BOTH)
        assert k2.eval("await both(10)") == [90, 135]  # the new B's results
        assert len(read_indices(a_file)) == 10, "A was not edited but ran again"
        b_lines = read_indices(b_file)
        assert len(b_lines) == 20
        assert sorted(b_lines[10:]) == list(range(10))
        counts = record_of(k2, instance_id)["counts"]
        assert (counts["cached"], counts["ran"]) == (10, 10), counts

        # Comments, whitespace and a docstring are no code change: nothing reruns.
        define(k2, ACT_A_COSMETIC)
        assert k2.eval("await both(10)") == [90, 135]
        assert len(read_indices(a_file)) == 10
        assert len(read_indices(b_file)) == 20
        record = record_of(k2, instance_id)
        assert (record["counts"]["cached"], record["counts"]["ran"]) == (20, 0), record
        assert record["runs"] == 3


# ================================================================ c. same kernel

WORK_C = recording_activity("work_c", "c.txt")


def _widget_texts(cell: CellResult) -> list[str]:
    return [str(s["value"]) for s in cell.widget_states() if "value" in s]


def test_rerun_in_the_same_kernel_is_fully_cached(tmp_path: Path) -> None:
    effects = tmp_path / "c.txt"
    expected = sum(2 * i for i in range(20))

    with KernelSession(cwd=tmp_path) as k:
        define(k, setup_cell(progress="widget"), WORK_C, fan_cell("work_c"))
        instance_id = k.eval("fan.instance_id_for(20)")

        first = k.execute("total = await fan(20)\ntotal", timeout=CELL_TIMEOUT)
        assert {"text/plain": str(expected)} in first.displays
        widgets = [d for d in first.displays if "application/vnd.jupyter.widget-view+json" in d]
        # The live widget, then the final summary for saved notebooks (see widgets.py).
        assert len(widgets) == 2, first.outputs
        assert widgets[1]["text/plain"].endswith(
            "completed: 20/20 calls done (20 ran)\n  work_c: 20/20 (20 ran)"
        )
        assert widgets[0]["text/plain"].startswith("<durable_nb progress:"), widgets[0]
        assert instance_id in widgets[0]["text/plain"]
        # The widget was kept up to date: its last header shows the finished run.
        assert any("completed" in t and "20/20 calls" in t for t in _widget_texts(first)), (
            _widget_texts(first)
        )
        assert sorted(read_indices(effects)) == list(range(20))
        record = record_of(k, instance_id)
        assert (record["counts"]["ran"], record["counts"]["cached"]) == (20, 0), record

        # The same call again, then the blocking and the handle entry points.
        second = k.execute("total = await fan(20)\ntotal", timeout=CELL_TIMEOUT)
        assert {"text/plain": str(expected)} in second.displays
        assert len(read_indices(effects)) == 20, "a cached call ran again"
        record = record_of(k, instance_id)
        assert (record["counts"]["ran"], record["counts"]["cached"]) == (0, 20), record

        assert k.eval("fan.run(20)", timeout=CELL_TIMEOUT) == expected
        k.run("h = fan.start(20)", timeout=CELL_TIMEOUT)
        assert k.eval("await h", timeout=CELL_TIMEOUT) == expected
        assert k.eval("(h.done(), h.result(), h.status().status)") == (
            True,
            expected,
            "completed",
        )
        assert len(read_indices(effects)) == 20, "a cached call ran again"
        record = record_of(k, instance_id)
        assert record["runs"] == 4
        assert (record["counts"]["ran"], record["counts"]["cached"]) == (0, 20), record


# ================================================================ d. interrupt

SLOW = recording_activity("slow", "slow.txt", options="--concurrency 4", sleep=0.5)


def test_interrupt_stops_the_run_and_a_rerun_resumes(tmp_path: Path) -> None:
    effects = tmp_path / "slow.txt"
    in_flight = 4  # --concurrency

    with KernelSession(cwd=tmp_path) as k:
        define(k, setup_cell(), SLOW, fan_cell("slow"))
        instance_id = k.eval("fan.instance_id_for(40)")

        running = k.run_async("total = await fan(40)")
        # Three waves of 4 take ~1.5 s; interrupt in the middle of the fourth.
        wait_for_lines(k, running, effects, 12, pause=0.002)
        time.sleep(0.2)
        interrupted_at = time.monotonic()
        k.interrupt()
        cell = k.wait(running, timeout=CELL_TIMEOUT)
        latency = time.monotonic() - interrupted_at
        assert cell.status == "error", cell.describe()
        assert cell.error is not None
        assert cell.error["ename"] in ("KeyboardInterrupt", "CancelledError"), cell.describe()
        assert latency < 1.0, f"the interrupted cell replied {latency:.2f} s after the interrupt"
        completed_before = read_indices(effects)
        assert 12 <= len(completed_before) < 40

        # The kernel survived and answers at once.
        assert k.is_alive()
        assert k.eval("1 + 1", timeout=10) == 2
        record = record_of(k, instance_id)
        assert record["status"] == "interrupted", record
        assert record["runs"] == 1

        k.run("total = await fan(40)", timeout=CELL_TIMEOUT)
        assert k.eval("total") == sum(2 * i for i in range(40))
        record = record_of(k, instance_id)

    after = read_indices(effects)
    times_run = collections.Counter(after)
    assert set(times_run) == set(range(40))
    # Calls in flight at the interrupt finish in their threads; the rerun in the same
    # kernel adopts them instead of starting them again, so nothing ran twice.
    assert max(times_run.values()) == 1, times_run.most_common(3)
    assert len(after) == 40

    assert record["status"] == "completed"
    assert record["runs"] == 2
    counts = record["counts"]
    assert counts["cached"] + counts["ran"] == 40, counts
    assert counts["cached"] >= len(completed_before) - in_flight, (counts, completed_before)


# ================================================================ e. failure

CHECK = """
%%activity --retries 1 --backoff 0.1
def check_input(i):
    append_line("check.txt", i)
    if i in BAD:
        raise ValueError(f"bad input {i}")
    return i * 2
"""

CHECK_WITHOUT_RAISE = """
%%activity --retries 1 --backoff 0.1
def check_input(i):
    append_line("check.txt", i)
    return i * 2
"""


def test_activity_failure_surfaces_readably_and_a_fix_reruns_only_it(tmp_path: Path) -> None:
    effects = tmp_path / "check.txt"

    with KernelSession(cwd=tmp_path) as k:
        define(k, setup_cell() + "\nBAD = {7}\n", CHECK, fan_cell("check_input"))
        instance_id = k.eval("fan.instance_id_for(10)")

        cell = k.execute("total = await fan(10)", timeout=CELL_TIMEOUT, allow_error=True)
        assert cell.status == "error"
        error = cell.error
        assert error is not None
        assert error["ename"] == "ValueError", cell.describe()
        assert "bad input 7" in error["evalue"]
        traceback = cell.traceback_text
        assert len(traceback.splitlines()) < 40, traceback
        assert "check_input" in traceback
        assert 'raise ValueError(f"bad input {i}")' in traceback
        assert "durable_nb/execution.py" not in traceback, traceback
        assert "asyncio" not in traceback, traceback
        first = read_indices(effects)
        assert sorted(first) == sorted([*range(10), 7]), first  # 7: first try and retry
        record = record_of(k, instance_id)
        assert record["status"] == "failed"
        assert "bad input 7" in record["error"]

        # Fix the data the activity depends on (its code is unchanged): only the
        # failed call runs again; the nine successes come from the checkpoints.
        k.run("BAD = set()")
        assert k.eval("await fan(10)", timeout=CELL_TIMEOUT) == 90
        assert read_indices(effects)[len(first) :] == [7]
        counts = record_of(k, instance_id)["counts"]
        assert (counts["cached"], counts["ran"]) == (9, 1), counts

        # Fixing the *code* instead (redefining the activity without the raise) is
        # a real edit of the activity body, which by design invalidates every cached
        # result of that activity: all ten calls run again, not only the failed one.
        k.run("BAD = {3}")
        code_fix = "await fan(10, instance_id='code-fix')"
        cell = k.execute(code_fix, timeout=CELL_TIMEOUT, allow_error=True)
        assert cell.error is not None and "bad input 3" in cell.error["evalue"]
        mark = len(read_indices(effects))
        define(k, CHECK_WITHOUT_RAISE)
        assert k.eval(code_fix, timeout=CELL_TIMEOUT) == 90
        assert sorted(read_indices(effects)[mark:]) == list(range(10))


# ======================================================= concurrency after interrupt

HOLD = """
LOCK, LIVE, PEAK = threading.Lock(), [0], [0]

@durable_nb.activity(concurrency=1)
def hold(i):
    with LOCK:
        LIVE[0] += 1
        PEAK[0] = max(PEAK[0], LIVE[0])
    append_line("hold.txt", i)
    try:
        time.sleep(1.5)
    finally:
        with LOCK:
            LIVE[0] -= 1
    return i
"""


def test_concurrency_limit_holds_across_interrupt_and_rerun(tmp_path: Path) -> None:
    with KernelSession(cwd=tmp_path) as k:
        define(k, setup_cell(), HOLD, fan_cell("hold"))
        running = k.run_async("await fan(1)")
        wait_for_lines(k, running, tmp_path / "hold.txt", 1, pause=0.002)
        k.interrupt()
        assert k.wait(running, timeout=CELL_TIMEOUT).status == "error"
        # Rerun at once, while the interrupted run's call is still in its thread.
        assert k.eval("await fan(1)", timeout=CELL_TIMEOUT) == 0
        assert k.eval("PEAK[0]") == 1, "two calls of a concurrency=1 activity ran at once"
        # The rerun adopted the call still running in its thread instead of redoing it.
        assert read_indices(tmp_path / "hold.txt") == [0]
