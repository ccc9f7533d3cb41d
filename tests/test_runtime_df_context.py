"""Durable Functions' context API through the runtime, on a real store with real
threads: per-call retry of activities and sub-orchestrations (counted in files the
activities and children write), registration under another name, get_input, a
sample of the Python SDK ported as it is written there, and a kernel killed during a
child's backoff."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import durable_nb as dn
from durable_nb import history
from durable_nb.definitions import find_orchestrator, resolve_activity
from durable_nb.runtime import Runtime
from durable_nb.store import DiskCacheStore


def _runs(folder: Path) -> int:
    return len(list(folder.iterdir())) if folder.exists() else 0


def _mark(folder: Path) -> int:
    """Record one execution (a file); the number of executions so far."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, _ = __import__("tempfile").mkstemp(dir=folder)
    os.close(fd)
    return _runs(folder)


# ------------------------------------------------------------------ activities


def test_call_activity_with_retry_runs_exactly_the_attempts_it_allows(
    rt: Runtime, tmp_path: Path
) -> None:
    ran = tmp_path / "flaky"

    @dn.activity
    def flaky(fail_until: int) -> str:
        n = _mark(ran)
        if n < fail_until:
            raise OSError(f"attempt {n} failed")
        return f"ok on attempt {n}"

    @dn.orchestrator
    def patient(ctx, fail_until):  # type: ignore[no-untyped-def]
        options = dn.RetryOptions(first_retry_interval_in_milliseconds=20, max_number_of_attempts=3)
        return (yield ctx.call_activity_with_retry(flaky, options, fail_until))

    assert patient.run(3) == "ok on attempt 3"
    assert _runs(ran) == 3
    retried = [
        e
        for e in rt.store.read_history(patient.instance_id_for(3))
        if isinstance(e, history.TaskRetried)
    ]
    assert [(e.attempt, e.delay) for e in retried] == [(1, 0.02), (2, 0.02)]

    for f in ran.iterdir():
        f.unlink()
    with pytest.raises(OSError, match="attempt 3 failed"):
        patient.run(4)
    assert _runs(ran) == 3  # not one more than max_number_of_attempts


def test_the_per_call_policy_overrides_the_activitys_own(rt: Runtime, tmp_path: Path) -> None:
    ran = tmp_path / "stubborn"

    @dn.activity(retries=5, backoff=0.01)
    def stubborn() -> None:
        _mark(ran)
        raise ValueError("never")

    @dn.orchestrator
    def once_more(ctx):  # type: ignore[no-untyped-def]
        yield ctx.call_activity_with_retry(stubborn, dn.RetryOptions(10, 2))

    @dn.orchestrator
    def own_policy(ctx):  # type: ignore[no-untyped-def]
        yield ctx.call_activity(stubborn)

    with pytest.raises(ValueError):
        once_more.run()
    assert _runs(ran) == 2  # the call's 2 attempts, not the activity's 6
    with pytest.raises(ValueError):
        own_policy.run()
    assert _runs(ran) == 2 + 6


def test_a_checkpoint_is_replayed_whatever_the_retry_policy(rt: Runtime, tmp_path: Path) -> None:
    ran = tmp_path / "work"

    @dn.activity
    def work(x: int) -> int:
        _mark(ran)
        return x + 1

    @dn.orchestrator(name="pipeline")
    def before(ctx):  # type: ignore[no-untyped-def]
        return (yield ctx.call_activity(work, 1))

    assert before.run(instance_id="p1") == 2

    @dn.orchestrator(name="pipeline")
    def after(ctx):  # type: ignore[no-untyped-def]
        return (yield ctx.call_activity_with_retry(work, dn.RetryOptions(10, 4), 1))

    assert after.run(instance_id="p1") == 2  # the edited orchestrator runs over its history
    assert _runs(ran) == 1  # the result was replayed, not computed again


# ------------------------------------------------------------------ registration


def test_two_functions_named_main_registered_under_other_names_do_not_collide(
    rt: Runtime,
) -> None:
    @dn.activity(name="SayHello")
    def main(name: str) -> str:
        return f"Hello {name}!"

    hello = main

    @dn.activity(name="SayBye")  # type: ignore[no-redef]
    def main(name: str) -> str:
        return f"Bye {name}!"

    assert hello.name == "SayHello" and main.name == "SayBye"

    @dn.orchestrator(name="Greeter")
    def orchestrator_function(ctx):  # type: ignore[no-untyped-def]
        a = yield ctx.call_activity("SayHello", "Tokyo")
        b = yield ctx.call_activity("SayBye", "Tokyo")
        return [a, b]

    assert orchestrator_function.name == "Greeter"
    assert dn.orchestrator is not None and orchestrator_function.run() == [
        "Hello Tokyo!",
        "Bye Tokyo!",
    ]
    iid = orchestrator_function.instance_id_for()
    assert iid.startswith("Greeter-")
    scheduled = [e for e in rt.store.read_history(iid) if isinstance(e, history.TaskScheduled)]
    assert [e.activity for e in scheduled] == ["SayHello", "SayBye"]
    assert [e.key.split("/", 1)[0] for e in scheduled] == ["SayHello", "SayBye"]
    record = rt.status(iid)
    assert record is not None and record.orchestrator == "Greeter"


def test_max_attempts_in_the_activity_decorator(rt: Runtime, tmp_path: Path) -> None:
    ran = tmp_path / "thrice"

    @dn.activity(max_attempts=3, backoff=0.01)
    def thrice() -> None:
        _mark(ran)
        raise OSError("down")

    assert thrice.options.retries == 2

    @dn.orchestrator
    def calls_it(ctx):  # type: ignore[no-untyped-def]
        yield ctx.call_activity(thrice)

    with pytest.raises(OSError):
        calls_it.run()
    assert _runs(ran) == 3

    with pytest.raises(dn.DefinitionError, match="give one of them"):
        dn.activity(retries=1, max_attempts=3)
    with pytest.raises(dn.DefinitionError, match=r"max_attempts=0.*whole number >= 1"):
        dn.activity(max_attempts=0)(lambda: None)
    with pytest.raises(dn.DefinitionError, match="whole number >= 1"):
        dn.activity(max_attempts=2.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "a/b", "sub:x", 3])
def test_a_name_that_cannot_be_a_key_is_refused(bad: Any) -> None:
    with pytest.raises(dn.DefinitionError, match="cannot be used"):
        dn.activity(name=bad)(lambda: None)
    with pytest.raises(dn.DefinitionError, match="cannot be used"):

        def orch(ctx):  # type: ignore[no-untyped-def]
            yield ctx.task_all([])

        dn.orchestrator(name=bad)(orch)


# ------------------------------------------------------------------ sub-orchestrations


def test_call_sub_orchestrator_with_retry_reruns_the_child_as_allowed(
    rt: Runtime, tmp_path: Path
) -> None:
    ran, parts = tmp_path / "child-runs", tmp_path / "parts"

    @dn.activity
    def part(i: int) -> int:
        _mark(parts / str(i))
        return i

    @dn.activity
    def step(fail_until: int) -> int:  # its failure is not replayed: once per child run
        n = _mark(ran)
        if n < fail_until:
            raise RuntimeError(f"child run {n} failed")
        return n

    @dn.orchestrator
    def shaky_child(ctx, fail_until):  # type: ignore[no-untyped-def]
        first = yield ctx.call_activity(part, 1)
        n = yield ctx.call_activity(step, fail_until)
        return first + n

    @dn.orchestrator
    def mom(ctx, fail_until):  # type: ignore[no-untyped-def]
        options = dn.RetryOptions(20, 3, backoff_coefficient=2)
        return (yield ctx.call_sub_orchestrator_with_retry(shaky_child, options, fail_until))

    assert mom.run(3) == 1 + 3
    assert _runs(ran) == 3  # the child ran three times
    assert _runs(parts / "1") == 1  # each rerun replayed what had succeeded
    iid = mom.instance_id_for(3)
    record = rt.store.get_instance(iid)
    assert record is not None
    # The child is one call, retried twice and completed, not three calls of which two
    # failed; the failures left are those of `step` inside the child's two failed runs.
    counts = record.counts
    assert (counts["failed"], counts["retried"]) == (2, 2), counts
    assert counts["calls"] == counts["ran"] + counts["cached"] + counts["failed"], counts
    timers = [e for e in rt.store.read_history(iid) if isinstance(e, history.TimerCreated)]
    assert [e.key.rsplit("#", 1)[1] for e in timers] == ["1", "2"]
    waits = [round(e.fire_at - e.timestamp, 3) for e in timers]
    assert waits[0] <= 0.02 + 0.01 and waits[1] >= 0.03  # 20 ms, then 40 ms (from the failure)

    for f in ran.iterdir():
        f.unlink()
    with pytest.raises(RuntimeError, match="child run 3 failed"):
        mom.run(4)
    assert _runs(ran) == 3  # not one more than max_number_of_attempts


def test_parent_instance_id_and_get_input_of_a_child(rt: Runtime) -> None:
    @dn.orchestrator
    def reports(ctx, value):  # type: ignore[no-untyped-def]
        yield ctx.task_all([])
        return [ctx.parent_instance_id, ctx.get_input()]

    @dn.orchestrator
    def top(ctx):  # type: ignore[no-untyped-def]
        mine = ctx.parent_instance_id
        child = yield ctx.call_sub_orchestrator(reports, "v")
        return [mine, child]

    assert top.run() == [None, [top.instance_id_for(), "v"]]


# ------------------------------------------------------------------ a Durable Functions sample


class df:
    DurableOrchestrationContext = dn.OrchestrationContext
    RetryOptions = dn.RetryOptions


def test_the_simple_sub_orchestration_sample_ported_as_written(rt: Runtime, tmp_path: Path) -> None:
    """samples/simple_sub_orchestration of Azure/azure-functions-durable-python, function
    bodies as written there: Hello (``main``), DurableSubOrchestrator (``get_input``),
    DurableOrchestrator; plus the error-handling docs' ``call_activity_with_retry``."""
    ran = tmp_path / "hello"
    failures = {"left": 1}

    # Hello/__init__.py
    def main(name: str) -> str:
        _mark(ran)
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("flaky network")
        return f"Hello {name}!"

    dn.activity(name="Hello")(main)

    # DurableSubOrchestrator/__init__.py (with the docs' retry options)
    def orchestrator_function(context: df.DurableOrchestrationContext):  # type: ignore[no-untyped-def]
        input_ = context.get_input()
        retry_options = df.RetryOptions(
            first_retry_interval_in_milliseconds=50, max_number_of_attempts=3
        )
        result1 = yield context.call_activity_with_retry("Hello", retry_options, input_)
        return result1

    dn.orchestrator(name="DurableSubOrchestrator")(orchestrator_function)

    # DurableOrchestrator/__init__.py
    def orchestrator_function(context: df.DurableOrchestrationContext):  # type: ignore[no-redef,no-untyped-def]
        result = yield context.call_sub_orchestrator("DurableSubOrchestrator", "Seattle")
        return result

    durable_orchestrator = dn.orchestrator(name="DurableOrchestrator")(orchestrator_function)

    assert durable_orchestrator.run() == "Hello Seattle!"
    assert _runs(ran) == 2  # failed once, retried once
    # The plain function means the activity it was registered as.
    assert resolve_activity(main).name == "Hello"
    # The sub-orchestrator started by a client with its one input, as start_new does.
    found = find_orchestrator("DurableSubOrchestrator")
    assert found is not None and asyncio.run(_await(found("Tokyo"))) == "Hello Tokyo!"
    assert _runs(ran) == 3
    with pytest.raises(dn.OrchestratorInputError):
        found.run("Tokyo", "Kyoto")  # one input only


async def _await(coroutine: Any) -> Any:
    return await coroutine


# ------------------------------------------------------------------ a kernel killed


_KILLED_SCRIPT = textwrap.dedent(
    """
    import os, sys, tempfile
    import durable_nb as dn
    from durable_nb.runtime import Runtime, _reset_for_tests
    from durable_nb.store import DiskCacheStore

    store, runs = sys.argv[1], sys.argv[2]
    _reset_for_tests(lambda: Runtime(store=DiskCacheStore(store), progress="none"))

    @dn.activity
    def broken():  # runs once per run of the child: its failure is not replayed
        fd, _ = tempfile.mkstemp(dir=runs)
        os.close(fd)
        raise RuntimeError(f"child run {len(os.listdir(runs))} failed")

    @dn.orchestrator
    def always_fails(ctx):
        return (yield ctx.call_activity(broken))

    @dn.orchestrator
    def parent(ctx):
        options = dn.RetryOptions(first_retry_interval_in_milliseconds=%d, max_number_of_attempts=2)
        return (yield ctx.call_sub_orchestrator_with_retry(always_fails, options))

    try:
        parent.run(instance_id="killed")
    except RuntimeError as exc:
        print("FAILED:", exc)
    """
)


def _script(tmp_path: Path, interval_ms: int) -> Path:
    path = tmp_path / f"parent_{interval_ms}.py"
    path.write_text(_KILLED_SCRIPT % interval_ms)
    return path


def test_a_kernel_killed_during_the_childs_backoff_does_not_lose_the_count(
    tmp_path: Path,
) -> None:
    store, runs = tmp_path / "store", tmp_path / "runs"
    runs.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    script = str(_script(tmp_path, 5_000))
    # Kernel 1: the child fails once, then the parent waits 5 s to retry: killed then.
    first = subprocess.Popen([sys.executable, script, str(store), str(runs)], env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if _retry_timer_recorded(store):
                break
            assert first.poll() is None, "kernel 1 ended before its backoff"
            time.sleep(0.1)
        else:
            pytest.fail("kernel 1 never recorded its retry timer")
    finally:
        first.kill()
        first.wait()
    assert _runs(runs) == 1
    history_1 = DiskCacheStore(store).read_history("killed")
    assert not any(isinstance(e, history.ExecutionFinished) for e in history_1)  # killed
    # Kernel 2 goes on where kernel 1 was: what is left of the wait, then the second and
    # last attempt. Had the count been lost, the child would run twice more (3 in all).
    second = subprocess.run(
        [sys.executable, script, str(store), str(runs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "FAILED: child run 2 failed" in second.stdout, second.stdout + second.stderr
    assert _runs(runs) == 2  # one retry in all, as max_number_of_attempts=2 allows
    events = DiskCacheStore(store).read_history("killed")
    fired = [e for e in events if isinstance(e, history.TimerFired)]
    assert len(fired) == 1 and fired[0].key == _retry_timer_key(store)


def _retry_timer_key(store: Path) -> str:
    for event in DiskCacheStore(store).read_history("killed"):
        if isinstance(event, history.TimerCreated) and event.key.startswith("retry:"):
            return event.key
    return ""


def _retry_timer_recorded(store: Path) -> bool:
    if not (store / "cache.db").exists():
        return False
    try:
        return bool(_retry_timer_key(store))
    except Exception:  # the store is being set up by kernel 1
        return False
