"""End-to-end tests of durable_nb's orchestration patterns in real Jupyter kernels.

Durable timers across a kernel restart, external events raised from another process
(with and without a kernel running), one runner per instance across two kernels, the
progress widget's Approve button, terminate / suspend / resume, sub-orchestrations and
continue_as_new. Every test drives real ipykernel processes (kernel_harness.py) on a
real store in pytest's tmp_path; activities append one JSON line per execution to a
side-effect file, so counting lines counts executions, even across a SIGKILL.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import ipykernel
import pytest
from kernel_harness import (
    CELL_TIMEOUT,
    CellResult,
    KernelSession,
    click_button,
    complete_lines,
    define,
    durable_nb_cli,
    history_of,
    opened,
    poll,
    wait_for_lines,
    widget_models,
)

from durable_nb import history

pytestmark = pytest.mark.kernel

# ---------------------------------------------------------------------- helpers


def setup_cell(progress: str = "none") -> str:
    """Load the extension on the test's store; ``append_line`` writes one JSON line,
    flushed and fsynced, so a line on disk means the activity ran."""
    return f"""
%load_ext durable_nb
import json, os, time
import durable_nb
durable_nb.configure(store=os.environ["DURABLE_NB_STORE"], progress={progress!r})

def append_line(path, value):
    with open(path, "a") as f:
        f.write(json.dumps(value) + "\\n")
        f.flush()
        os.fsync(f.fileno())
"""


def read_lines(path: Path) -> list[Any]:
    """The JSON values written to a side-effect file, in order (complete lines only)."""
    return [json.loads(line) for line in complete_lines(path)]


def record_in(store: Path, instance_id: str) -> dict[str, Any]:
    with opened(store) as s:
        record = s.get_instance(instance_id)
    assert record is not None, f"no record of {instance_id}"
    return record.to_dict()


def completed_activities(store: Path, instance_id: str) -> list[str]:
    return [
        e.activity for e in history_of(store, instance_id) if isinstance(e, history.TaskCompleted)
    ]


def wait_until_checkpointed(
    k: KernelSession, msg_id: str, store: Path, instance_id: str, activity: str
) -> None:
    """Until ``activity``'s result is in the instance's history (read by this process)."""

    def checkpointed() -> bool:
        assert not k.peek(msg_id).done, k.peek(msg_id).describe()
        return activity in completed_activities(store, instance_id)

    poll(checkpointed, CELL_TIMEOUT, f"{activity}'s result in the history of {instance_id}")


def error_of(cell: CellResult) -> tuple[str, str]:
    error = cell.error
    assert error is not None, f"the cell did not fail\n{cell.describe()}"
    return error["ename"], error["evalue"]


# ================================================================ 1. timers

TIMER_SECONDS = 5.0
KILL_AFTER = 2.5  # seconds after `before` ran; well inside the timer

NAP = (
    """
%%activity
def before(tag):
    append_line("before.txt", time.time())
    return tag
""",
    """
%%activity
def after(tag):
    append_line("after.txt", time.time())
    return tag
""",
    """
%%orchestrator
def nap(ctx, seconds):
    a = yield ctx.call_activity(before, "b")
    yield ctx.create_timer(seconds)
    b = yield ctx.call_activity(after, "a")
    return [a, b]
""",
)


def test_timer_survives_a_kernel_restart_and_fires_at_the_original_time(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    before_file, after_file = tmp_path / "before.txt", tmp_path / "after.txt"

    with KernelSession(cwd=tmp_path, store=store) as k1:
        define(k1, setup_cell(), *NAP)
        instance_id = k1.eval(f"nap.instance_id_for({TIMER_SECONDS})")
        running = k1.run_async(f"await nap({TIMER_SECONDS})")
        wait_for_lines(k1, running, before_file, 1)
        before_time = read_lines(before_file)[0]
        time.sleep(max(0.0, before_time + KILL_AFTER - time.time()))
        assert not k1.peek(running).done
        k1.kill()
    assert read_lines(after_file) == [], "the timer fired before the kill"

    with KernelSession(cwd=tmp_path, store=store) as k2:
        define(k2, setup_cell(), *NAP)
        rerun_start = time.time()
        k2.run(f"result = await nap({TIMER_SECONDS})", timeout=CELL_TIMEOUT)
        rerun_took = time.time() - rerun_start
        assert k2.eval("result") == ["b", "a"]

    timers = [e for e in history_of(store, instance_id) if isinstance(e, history.TimerCreated)]
    befores, afters = read_lines(before_file), read_lines(after_file)
    assert len(befores) == 1, "`before` ran again after the restart"
    assert len(afters) == 1, afters
    original_fire = before_time + TIMER_SECONDS
    late_by = afters[0] - original_fire
    # It fired at the original time, not TIMER_SECONDS after the restart.
    assert -0.2 <= late_by < 2.5, (
        f"`after` ran {late_by:+.2f} s from the original fire time; the rerun started "
        f"{rerun_start - before_time:.2f} s after `before` and took {rerun_took:.2f} s"
    )
    # The rerun only waited for what was left of the timer.
    remaining = max(0.0, original_fire - rerun_start)
    assert rerun_took < remaining + 2.5, (rerun_took, remaining)
    # One timer, created in the first kernel, with the original fire time.
    assert [e.key for e in timers] == ["timer#0"], timers
    assert abs(timers[0].fire_at - original_fire) < 0.5, (timers[0].fire_at, original_fire)


# ================================================================ 2. events

GATE = (
    """
%%activity
def prepare(tag):
    append_line("prepare.txt", tag)
    return tag
""",
    """
%%activity
def consume(tag, value):
    append_line("consume.txt", {"tag": tag, "value": value, "t": time.time()})
    return {"tag": tag, "value": value}
""",
    """
%%orchestrator
def gate(ctx, tag):
    yield ctx.call_activity(prepare, tag)
    value = yield ctx.wait_for_external_event("go")
    return (yield ctx.call_activity(consume, tag, value))
""",
)


def test_event_raised_from_another_process_while_no_kernel_runs_is_delivered(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    prepared, consumed = tmp_path / "prepare.txt", tmp_path / "consume.txt"

    with KernelSession(cwd=tmp_path, store=store) as k1:
        define(k1, setup_cell(), *GATE)
        offline = k1.eval("gate.instance_id_for('offline')")
        running = k1.run_async("await gate('offline')")
        wait_until_checkpointed(k1, running, store, offline, "prepare")
        # What another process sees: running, `prepare` done, waiting for the event.
        shown = durable_nb_cli("show", "--store", str(store), offline)
        assert shown.returncode == 0, shown.stderr
        assert "status:        running" in shown.stdout, shown.stdout
        assert "prepare" in shown.stdout and "consume" not in shown.stdout, shown.stdout
        time.sleep(0.3)
        assert not k1.peek(running).done
        k1.kill()

    raised = durable_nb_cli("raise", "--store", str(store), offline, "go", '{"x": 7}')
    assert raised.returncode == 0, (raised.stdout, raised.stderr)
    assert "raised 'go'" in raised.stdout, raised.stdout
    assert read_lines(consumed) == []

    with KernelSession(cwd=tmp_path, store=store) as k2:
        define(k2, setup_cell(), *GATE)
        assert k2.eval("await gate('offline')", timeout=CELL_TIMEOUT) == {
            "tag": "offline",
            "value": {"x": 7},
        }
        assert read_lines(prepared) == ["offline"], "`prepare` ran again after the restart"
        assert [(c["tag"], c["value"]) for c in read_lines(consumed)] == [("offline", {"x": 7})]
        assert record_in(store, offline)["status"] == "completed"

        # While a kernel runs the orchestration, a raise from another process is seen
        # within about a second (the run polls the store every 0.5 s).
        live = k2.eval("gate.instance_id_for('live')")
        running = k2.run_async("await gate('live')")
        wait_until_checkpointed(k2, running, store, live, "prepare")
        time.sleep(0.2)
        raised = durable_nb_cli("raise", "--store", str(store), live, "go", "ready")
        raised_done = time.time()
        assert raised.returncode == 0, (raised.stdout, raised.stderr)
        cell = k2.wait(running, timeout=CELL_TIMEOUT, allow_error=False)
        assert {"text/plain": "{'tag': 'live', 'value': 'ready'}"} in cell.displays, cell.describe()

    line = read_lines(consumed)[-1]
    assert (line["tag"], line["value"]) == ("live", "ready")  # plain text, not JSON
    raised_at = [e for e in history_of(store, live) if isinstance(e, history.EventRaised)]
    assert len(raised_at) == 1, raised_at
    latency = line["t"] - raised_at[0].timestamp
    print(f"live raise seen {latency:.3f} s after it was stored")
    assert 0 <= latency < 1.2, f"the running instance saw the event after {latency:.2f} s"
    assert line["t"] - raised_done < 1.2

    listed = durable_nb_cli("list", "--store", str(store), "--status", "completed")
    assert listed.returncode == 0, listed.stderr
    assert offline in listed.stdout and live in listed.stdout, listed.stdout
    assert (
        "no instances" in durable_nb_cli("list", "--store", str(store), "--status", "failed").stdout
    )


WAITING = """
%%orchestrator
def waiting(ctx):
    ctx.set_custom_status({"stage": "waiting for go"})
    value = yield ctx.wait_for_external_event("go")
    ctx.set_custom_status({"stage": "done"})
    return value
"""


def test_custom_status_is_visible_while_waiting_for_an_event(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with KernelSession(cwd=tmp_path, store=store) as k:
        define(k, setup_cell(), WAITING)
        k.run("h = waiting.start()")
        instance_id = k.eval("h.instance_id")
        time.sleep(1.5)  # several ticks and polls of the waiting run
        seen_here = k.eval("h.status().custom_status")
        listed = durable_nb_cli("list", "--store", str(store), "--status", "running")
        k.run("h.raise_event('go', 1)")
        assert k.eval("await h", timeout=CELL_TIMEOUT) == 1
        assert k.eval("h.status().custom_status") == {"stage": "done"}
    assert listed.returncode == 0, listed.stderr
    assert instance_id in listed.stdout, listed.stdout
    assert seen_here == {"stage": "waiting for go"}, seen_here
    assert "waiting for go" in listed.stdout, listed.stdout


# ================================================================ 3. leases

SHARED = (
    """
%%activity
def mark(tag):
    append_line("mark.txt", [tag, os.getpid()])
    return tag
""",
    """
%%orchestrator
def shared(ctx):
    first = yield ctx.call_activity(mark, "first")
    go = yield ctx.wait_for_external_event("go")
    last = yield ctx.call_activity(mark, "last")
    return [first, go, last]
""",
)


def test_second_kernel_is_refused_until_the_first_dies(tmp_path: Path) -> None:
    store = tmp_path / "store"
    marks = tmp_path / "mark.txt"

    with (
        KernelSession(cwd=tmp_path, store=store) as first,
        KernelSession(cwd=tmp_path, store=store) as second,
    ):
        define(first, setup_cell(), *SHARED)
        define(second, setup_cell(), *SHARED)
        instance_id = first.eval("shared.instance_id_for()")
        assert second.eval("shared.instance_id_for()") == instance_id
        running = first.run_async("await shared()")
        wait_until_checkpointed(first, running, store, instance_id, "mark")

        refused = second.execute("await shared()", timeout=CELL_TIMEOUT, allow_error=True)
        ename, evalue = error_of(refused)
        assert ename == "InstanceBusyError", refused.describe()
        assert f"pid {first.pid}" in evalue, evalue
        assert f"host {socket.gethostname()}" in evalue, evalue
        assert "since" in evalue, evalue
        # The refusal touched nothing: the first kernel still runs it, and owns it.
        assert second.eval("1 + 1") == 2  # the refused kernel is fine
        assert not first.peek(running).done
        record = record_in(store, instance_id)
        assert (record["status"], record["runs"]) == ("running", 1), record
        with opened(store) as s:
            lease = s.get_lease(instance_id)
        assert lease is not None and lease["pid"] == first.pid, lease

        first.kill()
        # The dead owner's lease is taken over at once (no TTL wait).
        second.run(f"%durable raise {instance_id} go 7", timeout=CELL_TIMEOUT)
        started = time.monotonic()
        result = second.eval("await shared()", timeout=CELL_TIMEOUT)
        took = time.monotonic() - started
        assert result == ["first", 7, "last"]
        assert took < 5.0, f"the takeover took {took:.2f} s"
        record = record_in(store, instance_id)
        assert (record["status"], record["runs"]) == ("completed", 2), record
        with opened(store) as s:
            assert s.get_lease(instance_id) is None, "the lease was not released"

    assert read_lines(marks) == [["first", first.pid], ["last", second.pid]]


# ================================================================ 4. approval button

RELEASE = (
    """
%%activity
def stage1(tag):
    append_line("stages.txt", ["stage1", tag])
    return tag
""",
    """
%%activity
def stage2(tag):
    append_line("stages.txt", ["stage2", tag])
    return "shipped " + tag
""",
    """
%%orchestrator
def release(ctx, tag):
    yield ctx.call_activity(stage1, tag)
    approved = yield ctx.wait_for_external_event("approval")
    if approved:
        return (yield ctx.call_activity(stage2, tag))
    return "rejected " + tag
""",
)


def _button(k: KernelSession, msg_id: str, description: str) -> str:
    """The comm id of the button the running cell's widget shows, once it shows."""
    found: list[str] = []

    def shown() -> bool:
        cell = k.peek(msg_id)
        assert not cell.done, cell.describe()
        found[:] = [comm_id for comm_id, _ in widget_models(cell, description=description)]
        return bool(found)

    poll(shown, CELL_TIMEOUT, f"the {description} button")
    assert len(found) == 1, found
    return found[0]


@pytest.mark.skipif(
    tuple(int(part) for part in ipykernel.__version__.split(".")[:2]) < (7, 4),
    reason="ipykernel < 7.4 (all that Python 3.10 gets) handles widget messages only "
    "between cells, so a click cannot reach a run awaited in the same cell",
)
@pytest.mark.parametrize(
    ("button", "tag", "expected", "stages"),
    [
        ("Approve", "v1", "shipped v1", [["stage1", "v1"], ["stage2", "v1"]]),
        ("Reject", "v2", "rejected v2", [["stage1", "v2"]]),
    ],
)
def test_approval_click_reaches_an_awaited_run(
    tmp_path: Path, button: str, tag: str, expected: str, stages: list[list[str]]
) -> None:
    with KernelSession(cwd=tmp_path) as k:
        define(k, setup_cell(progress="widget"), *RELEASE)
        running = k.run_async(f"outcome = await release({tag!r})\noutcome")
        comm_id = _button(k, running, button)
        assert read_lines(tmp_path / "stages.txt") == [["stage1", tag]]
        # Both buttons sit in one row with the event's name (the second button's model
        # may reach the client a moment after the first's).
        other = "Reject" if button == "Approve" else "Approve"
        _button(k, running, other)
        cell = k.peek(running)
        assert len(widget_models(cell, description="Approve")) == 1
        assert len(widget_models(cell, description="Reject")) == 1
        labels: list[str] = []

        def names_the_event() -> bool:  # the label's update may trail the buttons' models
            models = widget_models(k.peek(running), _model_name="HTMLModel")
            labels[:] = [str(state["value"]) for _, state in models]
            return any("approval" in v and "event" in v for v in labels)

        poll(names_the_event, CELL_TIMEOUT, "a label naming the awaited event")

        clicked = time.monotonic()
        click_button(k, comm_id)
        cell = k.wait(running, timeout=CELL_TIMEOUT, allow_error=False)
        took = time.monotonic() - clicked
        assert {"text/plain": repr(expected)} in cell.displays, cell.describe()
        assert took < 5.0, took
        status = f"durable_nb.get_runtime().status(release.instance_id_for({tag!r})).status"
        assert k.eval(status) == "completed"
    assert read_lines(tmp_path / "stages.txt") == stages


# ================================================================ 5. management

CHAIN = (
    """
%%activity
def step(i):
    time.sleep(0.4)
    append_line("steps.txt", i)
    return i
""",
    """
%%orchestrator
def chain(ctx, n):
    total = 0
    for i in range(n):
        total += yield ctx.call_activity(step, i)
    return total

def stuck(ctx, tag):
    yield ctx.call_activity(step, 100)
    yield ctx.wait_for_external_event("never")
    yield ctx.call_activity(step, 101)
    return "unreachable"
""",
)


def test_suspend_resume_and_terminate_from_the_same_kernel(tmp_path: Path) -> None:
    steps = tmp_path / "steps.txt"
    with KernelSession(cwd=tmp_path) as k:
        define(k, setup_cell(), *CHAIN)
        k.run("h = chain.start(6)")
        poll(lambda: len(read_lines(steps)) >= 2, CELL_TIMEOUT, "two steps")

        assert "asked the running" in k.run("print(h.suspend('pause'))")
        poll(lambda: k.eval("h.status().status") == "suspended", 5, "status suspended")
        at_suspend = len(read_lines(steps))
        # The step in flight (at most one: the chain is sequential) finishes, and
        # nothing new starts while suspended.
        poll(
            lambda: k.eval("h.status().counts.get('running', 0)") == 0,
            10,
            "the step in flight to finish",
        )
        settled = len(read_lines(steps))
        assert at_suspend <= settled <= at_suspend + 1, (at_suspend, settled)
        time.sleep(1.2)
        assert len(read_lines(steps)) == settled, "a step started while suspended"
        assert settled < 6
        assert k.eval("(h.done(), h.status().status)") == (False, "suspended")

        assert "asked the running" in k.run("print(h.resume())")
        assert k.eval("await h", timeout=CELL_TIMEOUT) == sum(range(6))
        assert read_lines(steps) == list(range(6)), "a step ran twice or out of order"
        assert k.eval("h.status().status") == "completed"

        # Terminate an instance that waits for an event that never comes.
        k.run("h2 = stuck.start('t')")
        poll(lambda: 100 in read_lines(steps), CELL_TIMEOUT, "step 100")
        assert "asked the running" in k.run("print(h2.terminate('enough'))")
        cell = k.execute(
            "try:\n"
            "    await h2\n"
            "except durable_nb.InstanceTerminatedError as exc:\n"
            "    print('terminated:', exc)\n",
            timeout=CELL_TIMEOUT,
        )
        assert "terminated:" in cell.stdout and "enough" in cell.stdout, cell.describe()
        # Awaiting it again raises the same error (and nothing else ran).
        again = k.execute("await h2", timeout=CELL_TIMEOUT, allow_error=True)
        assert error_of(again)[0] == "InstanceTerminatedError", again.describe()
        record = k.eval("h2.status().to_dict()")
        assert record["status"] == "terminated", record
        assert "enough" in (record["error"] or ""), record
        assert k.eval("h2.done()") is True
    assert 101 not in read_lines(steps)
    assert read_lines(steps) == [*range(6), 100]


# ================================================================ 6. sub-orchestrations

FAMILY = (
    """
%%activity
def piece(c, i):
    append_line("pieces.txt", [c, i])
    return 10 * c + i

def tick(n):
    append_line("ticks.txt", n)
    return n
""",
    """
%%orchestrator
def child(ctx, c):
    parts = yield ctx.task_all([ctx.call_activity(piece, c, i) for i in range(5)])
    return sum(parts)

def parent(ctx):
    totals = yield ctx.task_all([ctx.call_sub_orchestrator(child, c) for c in range(3)])
    return sum(totals)

def monitor(ctx, n):
    ctx.set_custom_status({"n": n})
    yield ctx.create_timer(0.2)
    yield ctx.call_activity(tick, n)
    if n < 3:
        ctx.continue_as_new(n + 1)
    return f"done at {n}"
""",
)


def test_sub_orchestrations_and_continue_as_new(tmp_path: Path) -> None:
    store = tmp_path / "store"
    pieces, ticks = tmp_path / "pieces.txt", tmp_path / "ticks.txt"
    expected = sum(10 * c + i for c in range(3) for i in range(5))  # 180

    with KernelSession(cwd=tmp_path, store=store) as k:
        define(k, setup_cell(), *FAMILY)
        parent_id = k.eval("parent.instance_id_for()")
        assert k.eval("await parent()", timeout=CELL_TIMEOUT) == expected
        assert sorted(map(tuple, read_lines(pieces))) == [
            (c, i) for c in range(3) for i in range(5)
        ]
        children = k.eval(
            "[(r.instance_id, r.status, r.output) for r in "
            "durable_nb.get_runtime().store.list_instances() "
            f"if r.parent == {parent_id!r}]"
        )
        assert sorted((status, output) for _, status, output in children) == [
            ("completed", 50 * c + 10) for c in range(3)
        ], children
        assert all(child_id.startswith(parent_id + ":child-") for child_id, _, _ in children)
        # Again: the children's outputs are replayed, no piece runs twice.
        assert k.eval("await parent()", timeout=CELL_TIMEOUT) == expected
        assert len(read_lines(pieces)) == 15

        monitor_id = k.eval("monitor.instance_id_for(0)")
        started = time.monotonic()
        assert k.eval("await monitor(0)", timeout=CELL_TIMEOUT) == "done at 3"
        took = time.monotonic() - started
        assert read_lines(ticks) == [0, 1, 2, 3]
        kinds = k.eval(
            f"[type(e).__name__ for e in durable_nb.get_runtime().store.read_history("
            f"{monitor_id!r})]"
        )
        assert kinds.count("ExecutionStarted") == 1, kinds  # only the last generation's
        assert kinds.count("TaskCompleted") == 1 and kinds.count("TimerFired") == 1, kinds
        record = k.eval(f"durable_nb.get_runtime().store.get_instance({monitor_id!r}).to_dict()")
        assert record["status"] == "completed", record
        assert record["output"] == "done at 3"
        assert record["custom_status"] == {"n": 3}, record
        assert record["generation"] == 3, record
        assert record["input"] == {"n": 3}, record
        assert took < 10, took  # four 0.2 s timers

        # Rerunning the eternal instance resumes its last generation: nothing runs.
        assert k.eval("await monitor(0)", timeout=CELL_TIMEOUT) == "done at 3"
        assert read_lines(ticks) == [0, 1, 2, 3]
