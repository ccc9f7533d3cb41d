"""A live view that is honest while waiting (issue 13, point 3): held-back changes are
told when their interval ends, the clock moves once a second while nothing changes,
and the final notice never says `completed` while a row counts a call in flight.

The model is tested on a fake clock and a fake ``call_later``; real runs (threads, a
wait for an event) are tested on what their listeners were told, with timestamps."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import durable_nb as dn
from durable_nb import widgets
from durable_nb.progress import CLOCK_SECONDS, Progress
from durable_nb.runtime import Runtime
from durable_nb.widgets import make_widget

INTERVAL = 0.1  # Progress's default max_rate of 10 a second


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeHandle:
    at: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeLoop:
    """``call_later`` on the fake clock; ``advance`` fires what falls due, in order, and
    calls ``changed()`` every 0.2 s on the way as the execution's tick does."""

    clock: FakeClock
    handles: list[FakeHandle] = field(default_factory=list)

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeHandle:
        handle = FakeHandle(self.clock.now + delay, callback)
        self.handles.append(handle)
        return handle

    def advance(self, to: float, progress: Progress, tick: float = 0.2) -> None:
        next_tick = self.clock.now + tick
        while True:
            due = [h for h in self.handles if not h.cancelled and h.at <= to]
            when = min([h.at for h in due] + [next_tick])
            if when > to:
                self.clock.now = to
                return
            self.clock.now = when
            if due and min(h.at for h in due) == when:
                handle = min(due, key=lambda h: h.at)
                self.handles.remove(handle)
                handle.callback()
            else:
                next_tick += tick
                progress.changed()


@dataclass
class Told:
    """What a progress's listeners were told: (time, kind, status, done, in flight, total)."""

    clock: Callable[[], float]
    notices: list[tuple[float, str, str, int, int, int]] = field(default_factory=list)

    def listen(self, progress: Progress) -> None:
        progress.subscribe(lambda p: self._record(p, "change"))
        progress.subscribe_clock(lambda p: self._record(p, "clock"))

    def _record(self, p: Progress, kind: str) -> None:
        totals = p.totals()
        self.notices.append(
            (self.clock(), kind, p.status, totals.done, p.in_flight(), totals.total)
        )

    def of(self, kind: str) -> list[tuple[float, str, str, int, int, int]]:
        return [n for n in self.notices if n[1] == kind]


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


# ------------------------------------------------------------------ the model


def test_a_held_back_change_is_told_when_its_interval_ends_and_nothing_after_the_end() -> None:
    clock = FakeClock()
    loop = FakeLoop(clock)
    progress = Progress("orch", "orch-1", clock=clock)
    told = Told(clock)
    told.listen(progress)
    progress.begin(loop.call_later)
    assert told.notices == []  # begin alone tells nothing: the first step's calls come
    for _ in range(40):
        progress.scheduled("a")
        progress.attempt_started("a")
    progress.changed()
    assert told.notices == [(0.0, "change", "running", 0, 40, 40)]
    clock.now = 0.01
    for _ in range(5):
        progress.attempt_ended("a")
        progress.ran("a")
    progress.changed()  # held back: one timer, at the end of the interval
    progress.changed()
    assert len(told.notices) == 1 and len(loop.handles) == 1
    loop.advance(0.1, progress)
    assert told.notices[-1] == (0.1, "change", "running", 5, 35, 40)
    # Nothing changes for 2.5 s: the clock alone is told, once a second at most.
    loop.advance(2.6, progress)
    clocks = [n[0] for n in told.of("clock")]
    assert len(clocks) == 2 and min(gaps([0.1, *clocks])) >= CLOCK_SECONDS
    assert len(told.of("change")) == 2
    for _ in range(35):
        progress.attempt_ended("a")
        progress.ran("a")
    progress.changed()  # the last told was a clock notice: a change goes at once
    assert told.notices[-1][1:] == ("change", "running", 40, 0, 40)
    progress.scheduled("b")
    progress.changed()  # held back, then the run ends before its interval does
    (held,) = [h for h in loop.handles if not h.cancelled]
    progress.finish("completed")
    assert held.cancelled
    assert told.notices[-1][1:] == ("change", "completed", 40, 0, 41)
    count = len(told.notices)
    loop.advance(10.0, progress)  # ticks after the end
    progress.changed()
    assert len(told.notices) == count


def test_change_notices_keep_to_the_rate_and_show_every_interval_of_a_busy_run() -> None:
    clock = FakeClock()
    loop = FakeLoop(clock)
    progress = Progress("orch", "orch-1", clock=clock)
    told = Told(clock)
    told.listen(progress)
    progress.begin(loop.call_later)
    for _ in range(40):
        progress.scheduled("a")
    progress.changed()
    for i in range(40):  # one outcome every 12.5 ms, each followed by changed()
        loop.advance(0.0125 * (i + 1), progress)
        progress.ran("a")
        progress.changed()
    progress.finish("completed")
    changes = told.of("change")
    times = [n[0] for n in changes]
    assert min(gaps(times[:-1])) >= INTERVAL - 1e-9  # the final notice is never held
    partial = [n[3] for n in changes if 0 < n[3] < 40]
    assert len(partial) >= 4 and partial == sorted(partial), changes


def test_waits_and_custom_status_are_changes() -> None:
    clock = FakeClock()
    progress = Progress("orch", "orch-1", clock=clock)
    told = Told(clock)
    told.listen(progress)
    progress.begin()
    progress.changed()
    for change in (
        lambda: setattr(progress, "waiting_events", ["approval"]),
        lambda: progress.timer_armed("t#0", 100.0),
        lambda: progress.timer_ended("t#0"),
        lambda: setattr(progress, "custom_status", {"stage": 2}),
    ):
        clock.now += 1.0
        change()
        progress.changed()
        assert told.notices[-1][1] == "change", told.notices
    clock.now += 0.5
    progress.waiting_events = ["approval"]  # the same list again: no change
    progress.changed()
    assert len(told.notices) == 5


def test_the_final_notice_waits_for_the_calls_of_sub_orchestrations_in_flight() -> None:
    clock = FakeClock()
    parent = Progress("parent", "p-1", clock=clock)
    told = Told(clock)
    told.listen(parent)
    widget = make_widget(parent)
    header, _clock, table, _approvals = widget.children
    # What a frontend draws after each message: the header must never say completed
    # above rows that count a call in flight.
    drawn_in_flight = [0]

    def table_drawn(_change: Any) -> None:
        drawn_in_flight[0] = parent.in_flight()

    def header_drawn(change: Any) -> None:
        if ">completed<" in change["new"]:
            assert drawn_in_flight[0] == 0, table.value

    table.observe(table_drawn, "value")
    header.observe(header_drawn, "value")
    parent.begin()
    children = [parent.child("child", f"p-1:c{i}") for i in range(2)]
    for child in children:
        parent.scheduled("sub:child")
        child.begin()
        child.scheduled("work")
        child.attempt_started("work")
    clock.now = 1.0
    children[0].attempt_ended("work")
    children[0].ran("work")
    children[0].finish("completed")
    parent.ran("sub:child")
    parent.changed()
    # task_any: the parent completes with the first child, and stops the other, whose
    # call is released a loop turn later.
    parent.finish("completed")
    assert told.notices[-1][2] == "running" and parent.in_flight() == 1
    assert ">completed<" not in header.value
    children[1].changed()  # a child's changes after the end tell nothing
    assert told.notices[-1][2] == "running"
    children[1].attempt_ended("work")
    assert told.notices[-1][2:] == ("completed", 2, 0, 4)  # sub:child 1/2, work 1/2
    assert ">completed<" in header.value
    children[1].finish("interrupted")
    assert told.notices[-1][2:] == ("completed", 2, 0, 4) and len(told.of("change")) == 2


def test_retries_waiting_when_the_run_ends_do_not_hold_its_final_notice() -> None:
    progress = Progress("orch", "orch-1")
    told = Told(time.monotonic)
    told.listen(progress)
    progress.begin()
    progress.scheduled("a")
    progress.retried("a")  # its retry timer is cancelled with the run's work
    progress.finish("failed", "another call failed")
    assert told.notices[-1][2] == "failed" and progress.in_flight() == 0


def test_a_clock_tick_changes_only_the_widgets_clock() -> None:
    clock = FakeClock()
    loop = FakeLoop(clock)
    progress = Progress("orch", "orch-1", clock=clock)
    widget = make_widget(progress)
    header, clock_view, table, _approvals = widget.children
    sent: list[str] = []
    for name, view in (("header", header), ("clock", clock_view), ("table", table)):
        view.observe(lambda _c, name=name: sent.append(name), "value")
    progress.begin(loop.call_later)
    progress.timer_armed("t#0", time.time() + 60)
    progress.scheduled("a")
    progress.changed()
    assert set(sent) == {"header", "clock", "table"}
    sent.clear()
    loop.advance(5.05, progress)  # ticks every 0.2 s: the clock moves every 1 to 1.2 s
    assert sent == ["clock"] * len(sent) and 4 <= len(sent) <= 5, sent
    assert "next timer in" in clock_view.value


# ------------------------------------------------------------------ real runs


@pytest.fixture
def told(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> Iterator[Told]:
    """What the views of runs started from now on are told."""
    recorder = Told(time.monotonic)
    attach = widgets.attach_view

    def attach_and_record(progress: Progress, mode: str) -> None:
        recorder.listen(progress)
        attach(progress, mode)

    monkeypatch.setattr(widgets, "attach_view", attach_and_record)
    yield recorder


def test_a_fan_out_of_threads_shows_its_partial_states_at_the_throttled_rate(
    told: Told, tmp_path: Path
) -> None:
    @dn.activity
    def nap(i: int) -> int:
        time.sleep(0.01 * i)  # ends spread over 0.4 s: about four intervals
        return i

    @dn.orchestrator
    def naps(ctx, n):  # type: ignore[no-untyped-def]
        values = yield ctx.task_all([ctx.call_activity(nap, i) for i in range(n)])
        return sum(values)

    assert naps.run(40) == sum(range(40))
    changes = told.of("change")
    counts = [(n[2], n[3], n[4], n[5]) for n in changes]
    assert counts[0] == ("running", 0, 40, 40), counts  # the calls, not an empty run
    assert counts[-1] == ("completed", 40, 0, 40), counts
    partial = [done for _, done, _, _ in counts if 0 < done < 40]
    assert len(partial) >= 2 and partial == sorted(partial), counts
    times = [n[0] for n in changes]
    assert min(gaps(times[:-1])) >= INTERVAL - 0.005, times  # the final one is never held


def test_the_clock_moves_while_a_run_waits_and_stops_with_it(told: Told) -> None:
    @dn.orchestrator
    def approval(ctx):  # type: ignore[no-untyped-def]
        answer = yield ctx.wait_for_external_event("go")
        return answer

    async def main() -> Any:
        handle = approval.start()
        await asyncio.sleep(2.6)
        assert [n[1:] for n in told.notices] == [
            ("change", "running", 0, 0, 0),
            ("clock", "running", 0, 0, 0),
            ("clock", "running", 0, 0, 0),
        ], told.notices
        handle.raise_event("go", 7)
        return await handle

    assert asyncio.run(main()) == 7
    ticks = [n[0] for n in told.notices[:3]]
    assert min(gaps(ticks)) >= CLOCK_SECONDS, ticks
    assert told.notices[-1][1:3] == ("change", "completed")


def test_a_parent_that_ends_first_says_completed_only_once_its_children_settled(
    told: Told,
) -> None:
    @dn.activity
    def slow(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @dn.orchestrator
    def child(ctx, seconds):  # type: ignore[no-untyped-def]
        value = yield ctx.call_activity(slow, seconds)
        return value

    @dn.orchestrator
    def first_of(ctx, n):  # type: ignore[no-untyped-def]
        yield ctx.task_any([ctx.call_sub_orchestrator(child, 0.3 * i) for i in range(n)])
        return "done"

    assert first_of.run(3) == "done"
    # The other two children were stopped with a call each in flight; the final
    # notice came once their rows had let go of those calls.
    final = told.notices[-1]
    assert final[1:3] == ("change", "completed") and final[4] == 0, told.notices
    assert [n for n in told.notices if n[2] == "completed"] == [final]


def _entity_run(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> tuple[list[Progress], Any]:
    """An orchestrator that signals @counter three times and calls it once, failing
    after its work on its first run; the progress of each of its runs."""
    seen: list[Progress] = []
    attach = widgets.attach_view

    def attach_and_keep(progress: Progress, mode: str) -> None:
        seen.append(progress)
        attach(progress, mode)

    monkeypatch.setattr(widgets, "attach_view", attach_and_keep)

    @dn.entity(name="counter")
    def counter(ctx: dn.EntityContext) -> None:
        value = ctx.get_state(lambda: 0)
        if ctx.operation_name == "add":
            ctx.set_state(value + ctx.get_input())
        else:
            ctx.set_result(value)

    @dn.activity
    def double(n: int) -> int:
        return 2 * n

    c1 = dn.EntityId("counter", "w1")
    attempts = iter(range(2))

    @dn.orchestrator
    def tally(ctx, n):  # type: ignore[no-untyped-def]
        for i in range(n):
            ctx.signal_entity(c1, "add", (yield ctx.call_activity(double, i)))
        total = yield ctx.call_entity(c1, "get")
        if next(attempts) == 0:
            raise KeyError("first run fails after its work")
        return total

    with pytest.raises(KeyError):
        tally.run(3)
    return seen, tally


def test_a_run_with_entities_shows_a_row_per_entity_with_its_signals_and_calls(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen, tally = _entity_run(rt, monkeypatch)
    first = seen[-1]
    rows = {row.name: row for row in first.rows.values()}
    assert (rows["@counter"].total, rows["@counter"].done, rows["@counter"].ran) == (4, 4, 4)
    assert (rows["double"].total, rows["double"].done) == (3, 3)
    html = widgets.table_html(first)
    assert "<code>@counter</code></td><td style='padding:0 8px'>4/4</td>" in html
    assert tally.run(3) == 6  # the rerun replays: nothing sent or called again
    assert seen[-1] is not first
    assert dn.read_entity_state("@counter@w1").entity_state == 6  # 0 + 2 + 4, applied once


def test_a_rerun_counts_the_replayed_signals_as_cached(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen, tally = _entity_run(rt, monkeypatch)
    assert tally.run(3) == 6
    rows = {row.name: row for row in seen[-1].rows.values()}
    # As the first run's 4/4: three signals and the call, all from checkpoints now.
    assert (rows["@counter"].total, rows["@counter"].cached, rows["@counter"].ran) == (4, 4, 0)
