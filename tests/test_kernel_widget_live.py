"""The live widget in a real kernel, as a frontend receives it (issue 13, point 3): a
fan-out of threads shows partial states at the throttled rate, and while a run waits
for an event only the small clock widget is sent, about once a second."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from kernel_harness import CELL_TIMEOUT, CellResult, KernelSession, define

pytestmark = pytest.mark.kernel

SETUP = """
%load_ext durable_nb
import asyncio, time
import durable_nb
durable_nb.configure(progress="widget")
"""

NAP = """
%%activity
def nap(i):
    time.sleep(0.01 * i)  # ends spread over 0.4 s: about four intervals of the rate
    return i
"""

NAPS = """
%%orchestrator
def naps(ctx, n):
    values = yield ctx.task_all([ctx.call_activity(nap, i) for i in range(n)])
    return sum(values)
"""

APPROVAL = """
%%orchestrator
def approval(ctx):
    answer = yield ctx.wait_for_external_event("go")
    return answer
"""

WAIT = 3.3  # seconds the run waits for its event


def sent_values(cell: CellResult) -> list[tuple[float, str, str]]:
    """(time sent, which view, value) of each value the cell's widgets sent: the views
    are told apart by what they first showed (header, clock or table)."""
    kinds: dict[str, str] = {}
    sent = []
    for (msg_type, content), (at, _arrived) in zip(cell.outputs, cell.times, strict=True):
        if msg_type not in ("comm_open", "comm_msg"):
            continue
        value = content.get("data", {}).get("state", {}).get("value")
        if not isinstance(value, str):
            continue
        if msg_type == "comm_open":
            kinds[content["comm_id"]] = (
                "table"
                if value.startswith("<table>")
                else "clock"
                if value.startswith("<span")
                else "header"
            )
        elif content["comm_id"] in kinds:
            sent.append((at, kinds[content["comm_id"]], value))
    return sent


def counts(header: str) -> tuple[str, int, int]:
    found = re.search(r">(\w+)</span> &middot; (\d+)/(\d+) calls", header)
    assert found is not None, header
    return found[1], int(found[2]), int(found[3])


def test_the_widget_shows_a_fan_out_as_it_goes_and_ticks_while_a_run_waits(
    tmp_path: Path,
) -> None:
    with KernelSession(cwd=tmp_path) as k:
        define(k, SETUP, NAP, NAPS, APPROVAL)

        fan = k.execute("await naps(40)", timeout=CELL_TIMEOUT)
        headers = [(at, counts(v)) for at, kind, v in sent_values(fan) if kind == "header"]
        states = [state for _, state in headers]
        assert states[0] == ("running", 0, 40), states
        assert states[-1] == ("completed", 40, 40), states
        partial = [done for _, done, _ in states if 0 < done < 40]
        assert len(partial) >= 2 and partial == sorted(partial), states
        times = [at for at, _ in headers]
        gaps = [b - a for a, b in itertools.pairwise(times[:-1])]  # the final is never held
        assert min(gaps) >= 0.09, times

        waiting = k.execute(
            f"h = approval.start()\nawait asyncio.sleep({WAIT})", timeout=CELL_TIMEOUT
        )
        values = sent_values(waiting)
        first = values[0][0]
        after_start = [(at - first, kind) for at, kind, _ in values if at - first > 0.5]
        # Nothing but the clock while the run waits: about one small message a second.
        assert {kind for _, kind in after_start} == {"clock"}, values
        ticks = [at for at, _ in after_start]
        assert len(ticks) >= 2 and min(b - a for a, b in itertools.pairwise(ticks)) >= 0.95
        assert len(ticks) / WAIT <= 1.0, ticks
        assert k.eval("(h.raise_event('go', 7), await h)[1]", timeout=CELL_TIMEOUT) == 7
