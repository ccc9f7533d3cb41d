"""Every mistake a user can make meets a clear message: what happened, where, what to do.

Each case runs through the public API, on a real store, and asserts the message.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

import durable_nb as dn
from durable_nb.runtime import Runtime


def run_one(body: Any, *args: Any) -> Any:
    """Run an orchestrator that calls ``body(ctx)`` once."""

    @dn.orchestrator
    def orch(ctx):  # type: ignore[no-untyped-def]
        return (yield from body(ctx))

    return orch.run(*args)


def test_unpicklable_result_names_activity_instance_type_and_remedy(rt: Runtime) -> None:
    @dn.activity
    def opens_a_lock() -> Any:
        return threading.Lock()

    with pytest.raises(dn.ResultNotStorableError) as info:
        run_one(lambda ctx: (yield ctx.call_activity(opens_a_lock)))
    message = str(info.value)
    for part in ("'opens_a_lock'", "instance orch-", "lock", "return plain data"):
        assert part in message, message


@pytest.mark.parametrize(
    ("value", "kind"),
    [(threading.Lock(), "lock"), ((x for x in ()), "generator"), (lambda: 1, "function")],
)
def test_argument_that_cannot_be_fingerprinted(rt: Runtime, value: Any, kind: str) -> None:
    @dn.activity
    def takes(x: Any, *, flag: Any = None) -> None:
        return None

    with pytest.raises(dn.FingerprintError) as info:
        run_one(lambda ctx: (yield ctx.call_activity(takes, 1, flag=value)))
    message = str(info.value)
    assert "'takes'" in message and "keyword argument 'flag'" in message
    assert kind in message and "Pass plain data" in message


def test_plain_function_as_orchestrator() -> None:
    with pytest.raises(dn.DefinitionError, match=r"generator function .* or an async def"):

        @dn.orchestrator
        def plain(ctx):  # type: ignore[no-untyped-def]
            return 1


def test_orchestrator_without_ctx() -> None:
    with pytest.raises(dn.DefinitionError, match=r"def nothing\(ctx, \.\.\.\)"):

        @dn.orchestrator
        def nothing():  # type: ignore[no-untyped-def]
            yield


def test_yielding_something_that_is_not_a_task(rt: Runtime) -> None:
    def body(ctx):  # type: ignore[no-untyped-def]
        yield 42

    with pytest.raises(dn.OrchestratorError, match="waited on 42, which is not a durable task"):
        run_one(body)


def test_calling_an_orchestrator_inside_another_points_at_call_sub_orchestrator(
    rt: Runtime,
) -> None:
    @dn.orchestrator
    def child(ctx, x):  # type: ignore[no-untyped-def]
        return x
        yield  # a generator: an orchestrator

    def body(ctx):  # type: ignore[no-untyped-def]
        return (yield child(1))

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine was never awaited" on top
        with pytest.raises(dn.OrchestratorError) as info:
            run_one(body)
    assert "ctx.call_sub_orchestrator(child, ...)" in str(info.value), info.value


@pytest.mark.parametrize(
    ("args", "kwargs", "why"),
    [
        ((1, 2), {}, "too many positional arguments"),
        ((), {}, "missing a required argument: 'x'"),
        ((1,), {"y": 2}, "unexpected keyword argument 'y'"),
    ],
)
def test_arguments_the_activity_cannot_take(
    rt: Runtime, tmp_path: Path, args: tuple[Any, ...], kwargs: dict[str, Any], why: str
) -> None:
    @dn.activity(retries=3, backoff=0.01)
    def one(x: int) -> int:
        return x

    with pytest.raises(dn.ActivityArgumentsError) as info:
        run_one(lambda ctx: (yield ctx.call_activity(one, *args, **kwargs)))
    message = str(info.value)
    for part in ("'one'", "instance orch-", "call one/", why, "ctx.call_activity(...)"):
        assert part in message, message
    assert info.value.durable_attempts == 1  # type: ignore[attr-defined]  # never retried


def test_a_type_error_inside_the_activity_stays_the_activitys_own(rt: Runtime) -> None:
    @dn.activity(retries=1, backoff=0.01)
    def broken(x: int) -> int:
        return len(x)  # type: ignore[arg-type]

    with pytest.raises(TypeError, match="has no len") as info:
        run_one(lambda ctx: (yield ctx.call_activity(broken, 1)))
    assert not isinstance(info.value, dn.ActivityArgumentsError)
    assert info.value.durable_attempts == 2  # type: ignore[attr-defined]  # retried as usual


def test_asyncio_sleep_and_foreign_awaitables_are_refused(rt: Runtime) -> None:
    @dn.orchestrator
    async def sleeper(ctx):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.01)

    @dn.orchestrator
    async def foreign(ctx):  # type: ignore[no-untyped-def]
        await asyncio.get_running_loop().create_future()

    for orch in (sleeper, foreign):
        with pytest.raises(dn.OrchestratorError, match=r"not a durable task"):
            orch.run()


async def _helper_that_sleeps() -> None:
    await asyncio.sleep(5)


async def _plain_coroutine() -> int:
    return 1


_TIMER_HINT = "to pause, wait on ctx.create_timer(seconds) instead"
_WAIT_HINT = "ctx.create_timer(seconds) to pause, and activities (ctx.call_activity) for I/O"


@pytest.mark.parametrize(
    ("awaits", "what", "hint"),
    [
        (lambda: asyncio.sleep(5), "waited on asyncio.sleep(...),", _TIMER_HINT),
        (lambda: asyncio.sleep(0), "waited on asyncio.sleep(...),", _TIMER_HINT),
        (
            _helper_that_sleeps,
            "waited on asyncio.sleep(...) inside _helper_that_sleeps(),",
            _TIMER_HINT,
        ),
        (
            lambda: asyncio.get_running_loop().create_future(),
            "waited on an asyncio future (from loop.create_future, loop.run_in_executor",
            _WAIT_HINT,
        ),
        (
            lambda: asyncio.ensure_future(_plain_coroutine()),
            "waited on an asyncio task of _plain_coroutine(),",
            _WAIT_HINT,
        ),
    ],
    ids=["sleep", "sleep-0", "sleep-in-helper", "future", "task"],
)
def test_awaiting_asyncio_names_what_was_awaited_and_the_ctx_way(
    rt: Runtime, awaits: Any, what: str, hint: str
) -> None:
    @dn.orchestrator
    async def waits(ctx):  # type: ignore[no-untyped-def]
        await awaits()

    with pytest.raises(dn.OrchestratorError) as info:
        waits.run()
    message = str(info.value)
    for part in ("orchestrator 'waits' (instance waits-", what, "not a durable task", hint):
        assert part in message, message
    assert "<Future" not in message and "activities" in message


def test_yielding_a_coroutine_names_it(rt: Runtime) -> None:
    def body(ctx):  # type: ignore[no-untyped-def]
        yield _plain_coroutine()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine was never awaited" on top
        with pytest.raises(dn.OrchestratorError) as info:
            run_one(body)  # orch(ctx) does `yield from body(ctx)`
    message = str(info.value)
    assert "waited on the coroutine _plain_coroutine() inside " in message, message
    assert ".<locals>.body()," in message, message
    assert "ctx.create_timer(seconds) to pause" in message, message


def test_awaiting_an_orchestrator_directly_points_at_call_sub_orchestrator(rt: Runtime) -> None:
    @dn.orchestrator
    def child(ctx, x):  # type: ignore[no-untyped-def]
        return x
        yield

    @dn.orchestrator
    async def parent(ctx):  # type: ignore[no-untyped-def]
        return await child(1)

    with pytest.raises(dn.OrchestratorError) as info:
        parent.run()
    message = str(info.value)
    assert "waited on child(...), a direct call of orchestrator 'child'," in message, message
    assert "ctx.call_sub_orchestrator(child, ...)" in message, message


def test_run_with_input_the_orchestrator_does_not_take(rt: Runtime) -> None:
    @dn.orchestrator
    def no_input(ctx):  # type: ignore[no-untyped-def]
        yield ctx.create_timer(0)

    with pytest.raises(dn.OrchestratorInputError) as info:
        no_input.run(5)
    assert isinstance(info.value, TypeError)  # what Python raises for such a call
    assert str(info.value) == (
        "orchestrator 'no_input' takes (ctx) and no input: too many positional arguments "
        "in the call that runs it. Pass the input as its parameters after ctx take it; "
        'the options of a run are keywords: instance_id="...", fresh=True'
    )

    @dn.orchestrator
    def stepper(ctx, n: int, step: int = 1):  # type: ignore[no-untyped-def]
        yield ctx.create_timer(0)

    with pytest.raises(TypeError, match=r"takes \(ctx, n, step=1\): missing a required"):
        stepper.run()


def test_continue_as_new_with_input_the_orchestrator_does_not_take_fails_the_run(
    rt: Runtime,
) -> None:
    @dn.orchestrator
    def eternal(ctx):  # type: ignore[no-untyped-def]
        yield ctx.create_timer(0)
        ctx.continue_as_new(2)

    expected = (
        "orchestrator 'eternal' takes (ctx) and no input: too many positional arguments in "
        "ctx.continue_as_new(...). ctx.continue_as_new(...) takes the new input as the "
        "parameters after ctx take it"
    )

    async def start_and_wait() -> tuple[Any, BaseException]:
        h = eternal.start()
        with pytest.raises(dn.OrchestratorInputError) as info:
            await h
        return h, info.value

    h, error = asyncio.run(start_and_wait())
    assert str(error) == expected
    record = h.status()
    assert record.status == "failed" and record.generation == 0
    assert expected in (record.error or ""), record.error
    with pytest.raises(TypeError, match=r"ctx\.continue_as_new"):
        eternal.run()  # a rerun behaves as for any failed instance: it runs again
    again = rt.store.get_instance(h.instance_id)
    assert again is not None and again.status == "failed"


def test_call_sub_orchestrator_with_instance_id_as_a_positional(rt: Runtime) -> None:
    @dn.orchestrator
    def child(ctx, n):  # type: ignore[no-untyped-def]
        return n
        yield

    def body(ctx):  # type: ignore[no-untyped-def]
        return (yield ctx.call_sub_orchestrator(child, 1, "child-1"))

    with pytest.raises(dn.OrchestratorInputError) as info:
        run_one(body)
    assert str(info.value) == (
        "orchestrator 'child' takes (ctx, n): too many positional arguments in "
        "ctx.call_sub_orchestrator(...). Pass the child's input as its parameters after ctx "
        "take it; instance_id is a keyword: ctx.call_sub_orchestrator(child, ..., "
        'instance_id="...")'
    )


def test_time_sleep_in_an_orchestrator_warns_and_does_not_hang(rt: Runtime) -> None:
    def body(ctx):  # type: ignore[no-untyped-def]
        time.sleep(1.2)
        yield ctx.create_timer(0)
        return "done"

    with pytest.warns(dn.SlowOrchestratorWarning, match="held the event loop for 1.2 s"):
        assert run_one(body) == "done"


def test_slow_step_allows_time_per_call_it_schedules() -> None:
    from durable_nb import orchestrator_warnings as ow

    two_seconds_ago = time.monotonic() - 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 100,000-call fan-out's first step: no warning
        ow.warn_if_slow("fan", "i-1", "its start", two_seconds_ago, calls=100_000)
    with pytest.warns(dn.SlowOrchestratorWarning, match="held the event loop for 2.0 s"):
        ow.warn_if_slow("fan", "i-1", "its start", two_seconds_ago, calls=10)


def test_a_big_fan_out_whose_first_step_is_slow_does_not_warn(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from durable_nb import orchestrator_warnings as ow

    # A 1.2 s first step scheduling 20 calls, at 0.1 s allowed per call (stands for a
    # fan-out of ~100,000 calls at the real allowance).
    monkeypatch.setattr(ow, "SLOW_STEP_SECONDS_PER_CALL", 0.1)

    @dn.activity
    def one(i: int) -> int:
        return i

    def body(ctx):  # type: ignore[no-untyped-def]
        time.sleep(1.2)
        results = yield ctx.task_all([ctx.call_activity(one, i) for i in range(20)])
        return sum(results)

    with warnings.catch_warnings():
        warnings.simplefilter("error", dn.SlowOrchestratorWarning)
        assert run_one(body) == sum(range(20))


@pytest.mark.parametrize("signal_type", [KeyboardInterrupt, SystemExit])
def test_activity_raising_a_control_exception_is_a_failure(
    rt: Runtime, signal_type: type[BaseException]
) -> None:
    @dn.activity(retries=3, backoff=0.01)
    def rude() -> None:
        raise signal_type

    with pytest.raises(dn.DurableNbError, match=f"raised {signal_type.__name__}") as info:
        run_one(lambda ctx: (yield ctx.call_activity(rude)))
    assert info.value.durable_attempts == 1  # type: ignore[attr-defined]  # never retried


def test_unknown_activity_name(rt: Runtime) -> None:
    with pytest.raises(dn.ActivityNotFoundError, match="no activity is registered under"):
        run_one(lambda ctx: (yield ctx.call_activity("not_defined_anywhere")))


def test_store_folder_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    dn.runtime._reset_for_tests(lambda: Runtime(store=blocker / "store", progress="none"))

    @dn.orchestrator
    def orch(ctx):  # type: ignore[no-untyped-def]
        yield ctx.create_timer(0)

    with pytest.raises(dn.StoreError) as info:
        orch.run()
    assert str(blocker) in str(info.value) and "DURABLE_NB_STORE" in str(info.value)
    dn.runtime._reset_for_tests()


def test_strict_mode_non_determinism_through_the_runtime(rt: Runtime) -> None:
    @dn.activity
    def a() -> int:
        return 1

    @dn.activity
    def b() -> int:
        return 2

    @dn.orchestrator(strict=True)
    def first(ctx):  # type: ignore[no-untyped-def]
        yield ctx.call_activity(a)
        yield ctx.call_activity(a)

    first.run(instance_id="strict-1")

    @dn.orchestrator(strict=True)
    def first(ctx):  # type: ignore[no-redef, no-untyped-def]  # edited: a then b
        yield ctx.call_activity(a)
        yield ctx.call_activity(b)

    with pytest.raises(dn.NonDeterminismError) as info:
        first.run(instance_id="strict-1")
    message = str(info.value)
    assert "position 1" in message and "'b'" in message and "'a'" in message


def test_bad_runtime_settings(rt: Runtime) -> None:
    with pytest.raises(ValueError, match="progress must be one of"):
        dn.configure(progress="loud")
    with pytest.raises(ValueError, match="max_in_flight must be >= 1"):
        dn.configure(max_in_flight=0)
    with pytest.raises(dn.DurableNbError, match="unknown executor 'gpu'"):
        dn.configure(executor="gpu")

    @dn.orchestrator
    def any_orch(ctx):  # type: ignore[no-untyped-def]
        yield ctx.create_timer(0)

    with pytest.raises(ValueError, match="instance_id must be a non-empty string"):
        any_orch.run(instance_id="")


def test_busy_instance_waits_when_asked(rt: Runtime) -> None:
    @dn.orchestrator
    def single(ctx):  # type: ignore[no-untyped-def]
        yield ctx.create_timer(0)
        return "ran"

    iid = single.instance_id_for()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])
    now = time.time()
    host = socket.gethostname()
    lease = {"owner": "other", "pid": holder.pid, "host": host, "since": now, "heartbeat": now}
    assert rt.store.swap_lease(iid, None, lease)
    try:
        with pytest.raises(dn.InstanceBusyError, match=f"pid {holder.pid}"):
            single.run()
        dn.configure(busy_timeout=10)
        started = time.monotonic()
        assert single.run() == "ran"  # waited for the holder's process to end
        assert time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.wait()
