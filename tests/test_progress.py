"""Progress model throttling, text and widget views."""

from __future__ import annotations

import dataclasses
import io
import random

import pytest

from durable_nb.progress import ActivityRow, Progress
from durable_nb.widgets import TextView, make_widget


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_notifications_are_throttled_to_ten_a_second_and_the_last_always_comes() -> None:
    clock = FakeClock()
    progress = Progress("orch", "orch-1", clock=clock)
    told: list[int] = []
    progress.subscribe(lambda p: told.append(p.totals().done))
    progress.begin()
    for i in range(1000):  # 1000 completions within 0.5 s
        clock.now = i * 0.0005
        progress.scheduled("a")
        progress.ran("a")
        progress.changed()
    assert len(told) <= 1 + 6
    progress.finish("completed")
    assert told[-1] == 1000


def test_text_view_prints_a_summary_per_activity() -> None:
    out = io.StringIO()
    progress = Progress("orch", "orch-1")
    TextView(progress, out)
    progress.begin()
    for _ in range(3):
        progress.scheduled("fetch")
        progress.ran("fetch")
    progress.cached_calls(["save"])
    progress.retried("fetch")
    progress.finish("completed")
    text = out.getvalue()
    assert "orch [orch-1] completed" in text and "4/4 calls done" in text
    assert "fetch: 3/3 (3 ran, 1 retried)" in text and "save: 1/1 (1 cached)" in text


def test_widget_repr_is_fixed_and_its_html_follows_progress() -> None:
    clock = FakeClock()
    progress = Progress("orch", "orch-1", clock=clock)
    widget = make_widget(progress)
    bundle = widget._repr_mimebundle_()
    assert bundle["text/plain"] == "<durable_nb progress: orch [orch-1]>"
    assert "application/vnd.jupyter.widget-view+json" in bundle
    progress.begin()
    progress.changed()  # the first notice comes at once
    progress.scheduled("fetch")
    progress.attempt_started("fetch")
    progress.changed()
    header, _clock, table, approvals = widget.children
    assert "fetch" not in table.value  # within 0.1 s of the last update: held back
    clock.now += 0.2
    progress.changed()
    assert "running" in header.value and "fetch" in table.value
    progress.attempt_ended("fetch")
    progress.failed("fetch")
    progress.finish("failed", "ValueError: boom")
    assert "failed" in header.value and "ValueError: boom" in header.value
    assert repr(widget) == "<durable_nb progress: orch [orch-1]>"
    assert approvals.children == ()


def test_waiting_events_get_approve_and_reject_buttons_that_raise_the_event() -> None:
    clock = FakeClock()
    progress = Progress("orch", "orch-1", clock=clock)
    raised: list[tuple[str, object]] = []
    progress.on_approval = lambda name, value: raised.append((name, value))
    widget = make_widget(progress)
    progress.begin()
    progress.waiting_events = ["approval"]
    progress.timer_armed("timer#0", 4_000_000_000.0)
    progress.scheduled("a")
    clock.now += 1
    progress.changed()
    header, clock_view, _table, approvals = widget.children
    assert "waiting for event <code>approval</code>" in header.value
    assert "timer fires at" in header.value
    assert "next timer in" in clock_view.value  # the countdown moves with the clock
    (row,) = approvals.children
    _label, approve, reject = row.children
    assert (approve.description, reject.description) == ("Approve", "Reject")
    approve.click()
    assert raised == [("approval", True)] and approve.disabled and reject.disabled
    progress.waiting_events = []
    clock.now += 1
    progress.scheduled("a")
    progress.changed()
    assert approvals.children == ()


def test_sub_orchestration_rows_are_grouped_under_their_orchestrator() -> None:
    progress = Progress("parent", "p-1")
    progress.scheduled("fetch")
    for i in range(3):
        child = progress.child("child", f"p-1:child-{i}")
        child.scheduled("work")
        child.ran("work")
    groups = progress.grouped_rows()
    assert [g for g, _ in groups] == ["parent", "child"]
    (work,) = groups[1][1]
    assert (work.name, work.total, work.ran) == ("work", 3, 3)
    assert progress.totals().total == 4


def test_a_change_deep_in_the_children_is_told_by_the_root_and_then_clean() -> None:
    clock = FakeClock()
    root = Progress("parent", "p-1", clock=clock)
    told: list[int] = []
    root.subscribe(lambda p: told.append(p.totals().ran))
    root.begin()
    root.changed()
    child = root.child("child", "p-1:c")
    grandchild = child.child("leaf", "p-1:c:l")
    assert root.child("child", "p-1:c") is child  # a child run again keeps its rows
    assert root.children == [child]
    clock.now += 1
    root.changed()
    assert not root.dirty and not child.dirty and not grandchild.dirty
    grandchild.scheduled("work")
    grandchild.ran("work")
    assert root.dirty and child.dirty
    clock.now += 1
    grandchild.changed()  # a child's change is told by the root
    assert told[-1] == 1 and not root.dirty and not grandchild.dirty
    grandchild.timer_armed("timer#0", 4_000_000_000.0)
    assert root.dirty  # a timer's countdown shows: arming it is a change
    clock.now += 1
    root.changed()
    grandchild.timer_ended("timer#0")
    assert root.dirty and grandchild.timers == {}
    clock.now += 1
    root.changed()
    grandchild.timer_ended("timer#0")  # fired already: nothing changed
    grandchild.timers_stopped()
    assert not root.dirty


def test_a_change_of_one_child_among_thousands_is_told_without_visiting_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fan-out of sub-orchestrations tells each child's change through the root: it
    must not ask, or clear, every child each time (that made a fan-out of 3,000 children
    take 2.5 ms a child instead of 1.1)."""
    clock = FakeClock()
    root = Progress("parent", "p-1", clock=clock)
    root.subscribe(lambda p: None)
    root.begin()
    children = [root.child("child", f"p-1:{i}") for i in range(2000)]
    for child in children:
        child.scheduled("work")
    clock.now += 1
    root.changed()
    visited: list[Progress] = []
    clear = Progress._clear_dirty

    def counted(progress: Progress) -> None:
        visited.append(progress)
        clear(progress)

    monkeypatch.setattr(Progress, "_clear_dirty", counted)
    for step in range(1, 51):
        clock.now += 1
        children[step].ran("work")
        children[step].changed()
    assert len(visited) == 2 * 50  # the root and the one child that changed, each time
    assert root.totals().ran == 50


def _counts_of(row: ActivityRow) -> tuple[int, ...]:
    return dataclasses.astuple(row)[1:]  # every field but the name


def _merged_from_scratch(progress: Progress) -> list[tuple[str, dict[str, tuple[int, ...]]]]:
    """grouped_rows as a full pass over every child computes it: the reference."""
    groups: dict[str, dict[str, tuple[int, ...]]] = {}
    for child in progress.children:
        merged = groups.setdefault(child.orchestrator, {})
        for row in child.all_rows():
            before = merged.get(row.name, (0,) * 7)
            merged[row.name] = tuple(a + b for a, b in zip(before, _counts_of(row), strict=True))
    own = {r.name: _counts_of(r) for r in progress.rows.values()}
    return [(progress.orchestrator, own), *groups.items()]


def _as_counts(
    groups: list[tuple[str, list[ActivityRow]]],
) -> list[tuple[str, dict[str, tuple[int, ...]]]]:
    return [(name, {r.name: _counts_of(r) for r in rows}) for name, rows in groups]


CHANGES = ("scheduled", "attempt_started", "attempt_ended", "ran", "failed", "retried")
CHANGES += ("retry_started",)


def test_grouped_rows_merge_again_only_the_children_that_changed_and_stay_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A view is told ten times a second; with thousands of children, merging every
    child's rows each time took 31 ms a notice at 10,000 children. Random changes in
    nested children, some read between notices, must give what a full pass gives."""
    rng = random.Random(7)
    root = Progress("parent", "p")
    root.scheduled("own")
    kids = [root.child(rng.choice(["a", "b"]), f"p:{i}") for i in range(300)]
    nested = [kid.child("leaf", f"{kid.instance_id}:l") for kid in kids[:50]]
    everyone = kids + nested
    for step in range(2000):
        who = rng.choice(everyone)
        name = rng.choice(["fetch", "save"])
        getattr(who, rng.choice(CHANGES))(name)
        if step % 97 == 0:
            who.finish("completed")
        if step % 13 == 0:
            assert _as_counts(root.grouped_rows()) == _merged_from_scratch(root)
            total = root.totals()
            assert total.total == sum(r.total for r in root.all_rows())
            assert root.in_flight() == sum(r.running + r.backing_off for r in root.all_rows())
    merged: list[Progress] = []
    all_rows = Progress.all_rows

    def counted(progress: Progress) -> list[ActivityRow]:
        merged.append(progress)
        return all_rows(progress)

    monkeypatch.setattr(Progress, "all_rows", counted)
    root.grouped_rows()
    kids[5].ran("fetch")
    nested[7].ran("save")  # in its parent's share: kids[7] is merged again
    merged.clear()
    after = root.grouped_rows()
    assert {p.instance_id for p in merged if p._parent is root} == {"p:5", "p:7"}
    assert _as_counts(after) == _merged_from_scratch(root)
