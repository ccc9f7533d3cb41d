"""See a run: the calls table (h.calls(), `show --calls`) and the timeline chart
(h.timeline(), %durable timeline, `durable-nb timeline -o`), from histories built by
hand and from real runs on a real store."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from builders import T0
from IPython.core.interactiveshell import InteractiveShell

import durable_nb as dn
from durable_nb import history
from durable_nb.calls import call_rows, calls_frame, select
from durable_nb.cli import main
from durable_nb.errors import ConfigurationError, InstanceNotFoundError
from durable_nb.runtime import Runtime
from durable_nb.timeline import (
    BARS_PER_LANE_UP_TO,
    CALL_LANES_UP_TO,
    TimelineChart,
    build,
    chart_of,
)

K1, K2, K3 = "work/c0de/aaaa#0", "work/c0de/bbbb#0", "check/c0de/cccc#0"


def story() -> list[history.Event]:
    """Run 1: work(1) retried once then completed, check failed; run 2: work(2) ran,
    work(1) replayed (cached); a timer; an event waited for; a child."""
    return [
        history.ExecutionStarted(T0, "orch", 1, 2),
        history.TaskScheduled(T0, K1, "work", "1"),
        history.TaskScheduled(T0, K3, "check", "'x'"),
        history.TaskRetried(T0 + 2, K1, "work", 1, "ValueError", "flaky", 1.0, T0 + 1),
        history.TaskFailed(T0 + 3, K3, "check", "KeyError", "'gone'", 1, T0 + 0.5),
        history.TaskCompleted(T0 + 5, K1, "work", 10, 2, T0 + 3.5),
        history.ExecutionFinished(T0 + 6, "failed", "KeyError"),
        history.ExecutionStarted(T0 + 100, "orch", 2, 2),
        history.TaskScheduled(T0 + 100, K2, "work", "2"),
        history.TimerCreated(T0 + 101, "timer#0", T0 + 103),
        history.TaskCompleted(T0 + 102, K2, "work", 20, 1, T0 + 100.5),
        history.TimerFired(T0 + 103, "timer#0"),
        history.EventRaised(T0 + 110, "approve", True),
        history.SubOrchestrationCompleted(T0 + 120, "sub:child/c0de/dddd#0", "orch:child-1", 5),
    ]


def test_each_call_is_one_row_with_its_attempts_timing_and_outcome() -> None:
    rows = {r.key: r for r in call_rows(story())}
    work1, work2, check = rows[K1], rows[K2], rows[K3]
    assert (work1.status, work1.attempts, work1.arguments) == ("completed", 2, "1")
    assert work1.started == T0 + 1 and work1.finished == T0 + 5 and work1.duration == 4
    assert [a.outcome for a in work1.attempt_log] == ["retried", "completed"]
    assert work1.attempt_log[0].backoff == 1.0 and "flaky" in work1.attempt_log[0].error
    assert work1.cached and not work2.cached  # run 2 replayed work(1) and ran work(2)
    assert (check.status, check.error, check.cached) == ("failed", "KeyError: 'gone'", False)
    child = rows["sub:child/c0de/dddd#0"]
    assert (child.activity, child.arguments, child.status) == (
        "sub:child",
        "orch:child-1",
        "completed",
    )
    assert [r.key for r in call_rows(story())][:3] == [K1, K3, K2]  # in scheduling order


def test_calls_still_under_way_and_rows_of_an_older_store() -> None:
    rows = call_rows(
        [
            history.TaskScheduled(T0, K1, "work"),  # format 2: no preview
            history.TaskRetried(T0 + 1, K1, "work", 1, "ValueError", "x", 5.0),
            history.TaskScheduled(T0, K2, "work"),
        ]
    )
    assert [(r.status, r.attempts, r.arguments, r.started) for r in rows] == [
        ("retrying", 1, "", None),
        ("running", 1, "", None),
    ]
    assert rows[0].duration is None


def test_calls_filter_by_status_and_activity_and_refuse_an_unknown_status() -> None:
    rows = call_rows(story())
    assert [r.key for r in select(rows, status="failed")] == [K3]
    assert [r.key for r in select(rows, activity="work")] == [K1, K2]
    assert [r.key for r in select(rows, status=["completed"], activity=["work"])] == [K1, K2]
    with pytest.raises(ConfigurationError, match="unknown call status 'done'"):
        select(rows, status="done")


def test_the_calls_frame_has_the_columns_and_utc_times() -> None:
    frame = calls_frame(call_rows(story()))
    assert isinstance(frame, pd.DataFrame) and len(frame) == 4
    assert list(frame.columns[:9]) == [
        "activity",
        "key",
        "arguments",
        "status",
        "attempts",
        "started",
        "duration",
        "error",
        "cached",
    ]
    first = frame.iloc[0]
    assert first["started"] == pd.Timestamp(T0 + 1, unit="s", tz="UTC")
    assert first["duration"] == 4.0 and bool(first["cached"])


def test_a_small_run_gets_a_lane_per_call_and_its_timers_waits_and_children() -> None:
    child = [
        history.ExecutionStarted(T0 + 110, "child", 1, 2),
        history.TaskScheduled(T0 + 110, "leaf/c0de/eeee#0", "leaf", "5"),
        history.TaskCompleted(T0 + 119, "leaf/c0de/eeee#0", "leaf", 5, 1, T0 + 111),
    ]
    chart = build("i", story(), {"orch:child-1": child}.get)  # type: ignore[arg-type]
    labels = [(lane.label, lane.depth) for lane in chart.lanes]
    assert ("work(1)", 0) in labels and ("work(2)", 0) in labels and ("check('x')", 0) in labels
    assert ("sub:child orch:child-1", 0) in labels and ("leaf(5)", 1) in labels
    assert any(label.startswith("timer until") for label, _ in labels)
    assert ("event 'approve'", 0) in labels
    kinds = {(chart.lanes[b.lane].label, b.kind) for b in chart.bars}
    assert ("work(1)", "cached") in kinds and ("work(2)", "completed") in kinds
    assert ("check('x')", "failed") in kinds and ("check('x')", "queued") in kinds
    wait = next(b for b in chart.bars if chart.lanes[b.lane].label == "event 'approve'")
    assert (wait.start, wait.end) == (103, 110)  # from the last event before the raise
    assert chart.runs == [0, 100] and chart.end == 120


def test_a_live_call_is_drawn_up_to_now_with_its_backoff() -> None:
    events = [
        history.ExecutionStarted(T0, "orch", 1, 2),
        history.TaskScheduled(T0, K1, "work", "1"),
        history.TaskRetried(T0 + 2, K1, "work", 1, "ValueError", "x", 3.0, T0 + 1),
    ]
    chart = build("i", events, now=T0 + 10)
    spans = [(b.kind, b.start, b.end) for b in chart.bars]
    assert spans == [
        ("queued", 0, 1),
        ("retried", 1, 2),
        ("backoff", 2, 5),
        ("running", 5, 10),
    ]


def fan_history(calls: int, threads: int = 4) -> list[history.Event]:
    events: list[history.Event] = [history.ExecutionStarted(T0, "fan", 1, 2)]
    events += [history.TaskScheduled(T0, f"w/c/{i:06x}#0", "w", str(i)) for i in range(calls)]
    for i in range(calls):
        start = T0 + (i // threads) * 0.01
        events.append(history.TaskCompleted(start + 0.01, f"w/c/{i:06x}#0", "w", i, 1, start))
    return events


def test_a_bigger_run_packs_each_activity_in_rows_of_what_ran_at_once() -> None:
    chart = build("i", fan_history(CALL_LANES_UP_TO + 10, threads=4))
    (lane,) = chart.lanes
    assert lane.label == f"w ({CALL_LANES_UP_TO + 10} calls)" and lane.rows == 4
    assert not chart.aggregated and {b.kind for b in chart.bars} == {"completed"}


def test_too_many_calls_to_draw_are_drawn_as_how_many_ran_at_once() -> None:
    chart = build("i", fan_history(BARS_PER_LANE_UP_TO + 1, threads=8))
    (lane,) = chart.lanes
    assert chart.aggregated and lane.busy is not None and not chart.bars
    assert max(n for _, n in lane.busy) == 8 and lane.busy[-1][1] == 0
    assert f"{BARS_PER_LANE_UP_TO + 1} ran, 0 failed" in lane.note


def test_a_chart_is_written_as_png_svg_or_html_and_shown_as_an_image(tmp_path: Path) -> None:
    chart = TimelineChart(build("demo", story()))
    assert chart.save(tmp_path / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in chart.save(tmp_path / "run.svg").read_bytes()[:500]
    page = chart.save(tmp_path / "run.html").read_text()
    assert page.startswith("<!doctype html>") and "<svg" in page and "demo" in page
    assert chart._repr_png_()[:4] == b"\x89PNG"
    with pytest.raises(ConfigurationError, match=r"use a name ending in \.html, \.svg or \.png"):
        chart.save(tmp_path / "run.pdf")


def test_ten_thousand_calls_render(tmp_path: Path) -> None:
    """The figure a benchmark times (benchmarks/bench_timeline.py); here: it draws."""
    chart = TimelineChart(build("big", fan_history(10_000, threads=16)))
    assert chart.save(tmp_path / "big.png").stat().st_size > 1000
    assert chart.chart.aggregated and len(chart.chart.lanes) == 1


# ------------------------------------------------------------------ real runs


def make_orchestrator(tmp_path: Path) -> dn.Orchestrator:
    marker = tmp_path / "fail-once"
    marker.write_text("")

    @dn.activity(retries=1, backoff=0.05)
    def step(i: int) -> int:
        if i == 2 and marker.exists():
            marker.unlink()
            raise ValueError("first try of 2 fails")
        time.sleep(0.02)
        return i * 10

    @dn.activity
    def broken(_: int) -> int:
        raise KeyError("never works")

    @dn.orchestrator
    def work(ctx, n):  # type: ignore[no-untyped-def]
        values = yield ctx.task_all([ctx.call_activity(step, i) for i in range(n)])
        try:
            yield ctx.call_activity(broken, 0)
        except KeyError:
            pass
        return sum(values)

    return work


def test_a_handle_gives_its_calls_and_timeline(rt: Runtime, tmp_path: Path) -> None:
    work = make_orchestrator(tmp_path)

    async def go() -> Any:
        handle = work.start(4)
        assert await handle == 60
        return handle

    handle = asyncio.run(go())
    frame = handle.calls()
    assert len(frame) == 5 and set(frame["status"]) == {"completed", "failed"}
    retried = frame[frame["arguments"] == "2"].iloc[0]
    assert retried["attempts"] == 2 and retried["status"] == "completed"
    assert list(handle.calls(status="failed")["activity"]) == ["broken"]
    assert len(handle.calls(activity="step")) == 4
    assert not frame["cached"].any()
    chart = handle.timeline()
    assert isinstance(chart, TimelineChart) and chart.chart.calls == 5
    kinds = {b.kind for b in chart.chart.bars}
    assert {"completed", "failed", "retried", "backoff"} <= kinds


def test_show_calls_and_timeline_from_the_command_line(rt: Runtime, tmp_path: Path) -> None:
    work = make_orchestrator(tmp_path)
    assert work.run(3) == 30
    iid, store = work.instance_id_for(3), str(rt.store.location)

    def cli(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        try:
            code = main([*argv, "--store", store], out=out)
        except SystemExit as exc:
            code = int(exc.code or 0)
        return code, out.getvalue()

    code, text = cli("show", iid, "--calls")
    lines = text.splitlines()
    assert code == 0 and lines[0].split()[:4] == ["activity", "call", "arguments", "status"]
    assert len(lines) == 2 + 4 and sum("failed" in line for line in lines) == 1
    code, text = cli("show", iid, "--calls", "--status", "failed")
    assert code == 0 and "KeyError" in text and "step" not in text
    code, text = cli("timeline", iid, "-o", str(tmp_path / "run.svg"))
    assert code == 0 and "wrote the timeline" in text
    assert (tmp_path / "run.svg").read_bytes().lstrip().startswith(b"<?xml")
    code, _ = cli("timeline", iid)
    assert code == 2  # where to write it must be said
    code, _ = cli("show", iid, "--status", "failed")
    assert code == 2  # a call filter without --calls
    with pytest.raises(InstanceNotFoundError, match="no instance 'ghost'"):
        chart_of(rt.store, "ghost")


def test_the_durable_magic_shows_the_timeline_inline(rt: Runtime, tmp_path: Path) -> None:
    work = make_orchestrator(tmp_path)
    assert work.run(2) == 10
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "durable_nb")
    shown: list[Any] = []
    try:
        original = shell.display_pub.publish
        shell.display_pub.publish = lambda data, **kw: shown.append(data)  # type: ignore[method-assign]
        shell.run_line_magic("durable", f"timeline {work.instance_id_for(2)}")
    finally:
        shell.display_pub.publish = original  # type: ignore[method-assign]
        shell.run_line_magic("unload_ext", "durable_nb")
    assert len(shown) == 1 and "image/png" in shown[0]


# ------------------------------------------------------------------ durable entities

KS, KC, KU = "@counter/operation/eeee#0", "@counter/ffff#0", "@Account/unlock/gggg#0"


def entity_story() -> list[history.Event]:
    """A signal to @counter@c1, a call of it, a lock's release; then a second run that
    sends one more signal (the first one is the earlier run's)."""
    return [
        history.ExecutionStarted(T0, "orch", 1, 2),
        history.EntitySignaled(T0 + 1, KS, "@counter@c1", "add", "operation", "'add', 3"),
        history.TaskScheduled(T0 + 2, KC, "@counter", "'c1', 'get', None"),
        history.TaskCompleted(T0 + 2.5, KC, "@counter", 3, 1, T0 + 2.1),
        history.EntitySignaled(T0 + 3, KU, "@Account@a", None, "unlock", "None, None"),
        history.ExecutionStarted(T0 + 10, "orch", 2, 2),
        history.EntitySignaled(
            T0 + 11, "@counter/operation/hhhh#0", "@counter@c2", "add", "operation", "'add', 'x'"
        ),
    ]


def test_a_signal_is_a_sent_row_of_its_entity_with_no_attempts_and_no_duration() -> None:
    rows = {r.key: r for r in call_rows(entity_story())}
    assert len(rows) == 4
    signal, call, unlock = rows[KS], rows[KC], rows[KU]
    assert (signal.activity, signal.status, signal.attempts) == ("@counter", "sent", 0)
    assert signal.arguments == "'c1', 'add', 3"
    assert (signal.scheduled, signal.started, signal.finished) == (T0 + 1,) * 3
    assert signal.duration == 0.0 and signal.cached  # sent by the run before the latest
    assert (call.activity, call.status, call.attempts) == ("@counter", "completed", 1)
    assert (unlock.activity, unlock.arguments, unlock.status) == (
        "@Account",
        "'a', (unlock)",
        "sent",
    )
    latest = rows["@counter/operation/hhhh#0"]
    assert latest.arguments == "'c2', 'add', 'x'" and not latest.cached
    assert [r.key for r in select(rows.values(), status="sent", activity="@counter")] == [
        KS,
        "@counter/operation/hhhh#0",
    ]


def test_a_signal_is_drawn_as_a_tick_and_counted_apart_when_aggregated() -> None:
    chart = build("orch-1", entity_story())
    sent = [b for b in chart.bars if b.kind == "sent"]
    assert len(sent) == 3 and all(b.start == b.end for b in sent)
    assert sorted(b.start for b in sent) == [1.0, 3.0, 11.0]
    assert chart.lanes[sent[0].lane].label == "@counter('c1', 'add', 3)"
    # Too many to draw one by one: the signals add nothing to what ran at once.
    many: list[history.Event] = [history.ExecutionStarted(T0, "orch", 1, 2)]
    for i in range(BARS_PER_LANE_UP_TO + 1):
        key = f"@counter/operation/{i:04x}#0"
        many.append(history.EntitySignaled(T0 + i, key, "@counter@c1", "add", "operation", "1"))
    many.append(history.TaskScheduled(T0, KC, "@counter", "'c1', 'get', None"))
    many.append(history.TaskCompleted(T0 + 1, KC, "@counter", 3, 1, T0))
    chart = build("orch-1", many)
    (lane,) = chart.lanes
    assert chart.aggregated and lane.label == f"@counter ({BARS_PER_LANE_UP_TO + 2} calls)"
    assert lane.note.startswith("1 ran, 0 failed") and lane.note.endswith(
        f"; {BARS_PER_LANE_UP_TO + 1} sent"
    )
    assert max(n for _, n in lane.busy or []) == 1


def test_a_run_with_entities_shows_its_signals_calls_and_locks(rt: Runtime, tmp_path: Path) -> None:
    applied: list[str] = []

    @dn.entity(name="counter")
    def counter(ctx: dn.EntityContext) -> None:
        applied.append(ctx.operation_name)
        value = ctx.get_state(lambda: 0)
        if ctx.operation_name == "add":
            ctx.set_state(value + ctx.get_input())
        else:
            ctx.set_result(value)

    c1, c2 = dn.EntityId("counter", "c1"), dn.EntityId("counter", "c2")

    @dn.orchestrator
    def tally(ctx, n):  # type: ignore[no-untyped-def]
        for i in range(n):
            ctx.signal_entity(c1, "add", i)
        with (yield ctx.lock_entities(c1, c2)):
            total = yield ctx.call_entity(c1, "get")
            ctx.signal_entity(c2, "add", total)
        return total

    assert tally.run(4) == 6
    # The last signal is applied on the worker's thread, maybe after the run returned:
    # reading the entity applies what still waits.
    assert dn.read_entity_state(c2).entity_state == 6
    assert applied == ["add"] * 4 + ["get", "add"]
    [record] = rt.store.list_instances()
    rows = call_rows(rt.store.read_history(record.instance_id))
    summary = [(r.activity, r.arguments, r.status, r.attempts) for r in rows]
    assert summary == [
        *[("@counter", f"'c1', 'add', {i}", "sent", 0) for i in range(4)],
        ("@@lock", "'@counter@c1', '@counter@c2'", "completed", 1),
        ("@counter", "'c1', 'get', None", "completed", 1),
        ("@counter", "'c2', 'add', 6", "sent", 0),
        ("@counter", "'c1', (unlock)", "sent", 0),
        ("@counter", "'c2', (unlock)", "sent", 0),
    ]
    out = io.StringIO()
    assert (
        main(
            [
                "show",
                record.instance_id,
                "--calls",
                "--status",
                "sent",
                "--store",
                str(rt.store.location),
            ],
            out=out,
        )
        == 0
    )
    sent_lines = out.getvalue().splitlines()[2:]
    assert len(sent_lines) == 7 and all(
        " sent " in ln and ln.split()[0] == "@counter" for ln in sent_lines
    )
    chart = chart_of(rt.store, record.instance_id)
    assert sum(b.kind == "sent" for b in chart.chart.bars) == 7
    png = chart.image("png")  # the ticks are drawn (matplotlib accepts them)
    assert png.startswith(b"\x89PNG")
