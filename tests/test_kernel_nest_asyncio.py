"""The original nest-asyncio (1.6) in a real kernel: ``orch.run()`` must not lose the
cells queued behind it (issue 11).

With the original package's patch on ipykernel 7's loop, a nested
``loop.run_until_complete`` completes, but the cells queued behind it never run. So
``orch.run()`` refuses with a clear error when that patch is on the running loop,
whether ``nest_asyncio.apply()`` ran before or after ``%load_ext durable_nb``;
``await orch(...)`` needs no nesting and keeps working. Every test queues cells
behind the run without waiting, and checks that they run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kernel_harness import CELL_TIMEOUT, CellResult, KernelSession, define

pytest.importorskip("nest_asyncio")

pytestmark = pytest.mark.kernel

QUEUED_TIMEOUT = 30.0  # the queued cells take milliseconds; lost ones never finish

APPLY = "import nest_asyncio\nnest_asyncio.apply()"

SETUP = """
%load_ext durable_nb
import os
import durable_nb
durable_nb.configure(store=os.environ["DURABLE_NB_STORE"], progress="none")
"""

DEFINITIONS = (
    """
%%activity
def double(x):
    return 2 * x
""",
    """
%%orchestrator
def total(ctx, n):
    parts = yield ctx.task_all([ctx.call_activity(double, i) for i in range(n)])
    return sum(parts)
""",
)


def run_with_two_queued(
    k: KernelSession, code: str, stop_on_error: bool = True
) -> tuple[CellResult, CellResult, CellResult]:
    """Send ``code`` and, without waiting for it, two more cells; all three as they end."""
    first = k.run_async(code, stop_on_error=stop_on_error)
    second = k.run_async("print('second ran')")
    third = k.run_async("print('third ran', 1 + 1)")
    return (
        k.wait(first, CELL_TIMEOUT),
        k.wait(second, QUEUED_TIMEOUT),
        k.wait(third, QUEUED_TIMEOUT),
    )


def assert_queued_cells_ran(second: CellResult, third: CellResult) -> None:
    assert second.status == "ok" and "second ran" in second.stdout, second.describe()
    assert third.status == "ok" and "third ran 2" in third.stdout, third.describe()


@pytest.mark.parametrize("order", ["apply_before_load_ext", "apply_after_load_ext"])
def test_run_under_the_original_nest_asyncio_refuses_and_queued_cells_run(
    tmp_path: Path, order: str
) -> None:
    with KernelSession(cwd=tmp_path, store=tmp_path / "store") as k:
        if order == "apply_before_load_ext":
            define(k, APPLY, SETUP, *DEFINITIONS)
        else:
            define(k, SETUP, *DEFINITIONS, APPLY)
        # A cell whose error does not stop the queue: the cells behind it run.
        run, second, third = run_with_two_queued(k, "result = total.run(5)", stop_on_error=False)
        assert_queued_cells_ran(second, third)
        error = run.error
        assert error is not None, run.describe()
        assert error["ename"] == "EventLoopError", run.describe()
        message = error["evalue"]
        assert "nest_asyncio" in message and "await total(...)" in message, message
        assert "nest_asyncio2.apply()" in message, message
        assert k.eval("durable_nb.get_runtime().status(total.instance_id_for(5)) is None")
        # As in "Run All": the error stops the queue, whose cells are answered (aborted,
        # as after any failing cell, or run if they reached the kernel after the abort
        # window), not lost; the kernel goes on.
        run, second, third = run_with_two_queued(k, "result = total.run(5)")
        assert run.error is not None and run.error["ename"] == "EventLoopError"
        assert {second.status, third.status} <= {"aborted", "ok"}, (second, third)
        # Nothing was started, and the awaited form works.
        assert k.eval("await total(5)", timeout=CELL_TIMEOUT) == 20
        assert k.eval("1 + 1") == 2


def test_await_under_the_original_nest_asyncio_works_and_queued_cells_run(
    tmp_path: Path,
) -> None:
    with KernelSession(cwd=tmp_path, store=tmp_path / "store") as k:
        define(k, APPLY, SETUP, *DEFINITIONS)
        run, second, third = run_with_two_queued(k, "result = await total(5)\nprint(result)")
        assert run.status == "ok" and "20" in run.stdout, run.describe()
        assert_queued_cells_ran(second, third)
        assert k.eval("result") == 20


def test_run_works_when_nest_asyncio2_patched_the_loop_first(tmp_path: Path) -> None:
    """After an ``orch.run()``, the original's ``apply()`` leaves the loop as
    nest-asyncio2 patched it: running goes on working, queued cells too."""
    with KernelSession(cwd=tmp_path, store=tmp_path / "store") as k:
        define(k, SETUP, *DEFINITIONS)
        assert k.eval("total.run(3)", timeout=CELL_TIMEOUT) == 6
        define(k, APPLY)
        run, second, third = run_with_two_queued(k, "result = total.run(5)\nprint(result)")
        assert run.status == "ok" and "20" in run.stdout, run.describe()
        assert_queued_cells_ran(second, third)
