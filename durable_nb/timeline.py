"""A timeline chart of an instance's runs, read off its history (and its children's).

One lane per call when a run is small, one per activity otherwise; each call a bar
from scheduled (queued, light) through its attempts (ran: green, failed: red, retried:
orange, each followed by its backoff, hatched) to its end. Calls whose result came from
a checkpoint (cached) are grey outlines. A signal to a durable entity (one-way: it has
no duration) is a tick at the moment it was sent, in its entity's lane. Timers,
external-event waits and sub-orchestrations get lanes of their own, a
sub-orchestration's calls nested under it.
An activity with more calls than can be drawn one by one is drawn as how many of its
calls ran at each moment, with its failures marked.

The model (:func:`build`) is pure; drawing (:func:`figure`) needs matplotlib, the
``timeline`` extra, imported only then and never through pyplot (no global state, no
GUI backend). :class:`TimelineChart` shows itself in a notebook as a PNG image (kept in
the saved notebook, so any viewer shows it) and is written to .html, .svg or .png.
"""

from __future__ import annotations

import datetime as _dt
import html
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from durable_nb import history
from durable_nb.calls import CallRow, call_rows
from durable_nb.errors import ConfigurationError, InstanceNotFoundError

CALL_LANES_UP_TO = 40  # calls in all: one lane per call up to this many
BARS_PER_LANE_UP_TO = 400  # an activity's calls drawn one by one up to this many,
ROWS_PER_LANE_UP_TO = 16  # in as many rows as ran at once, up to this many
_COLORS = {
    "queued": "#d9d9d9",
    "completed": "#4caf50",
    "failed": "#e53935",
    "retried": "#fb8c00",
    "running": "#64b5f6",
    "backoff": "#ffe0b2",
    "timer": "#8e7cc3",
    "wait": "#80cbc4",
    "sub": "#90a4ae",
    "cached": "#ffffff",
    "sent": "#3949ab",
}
KINDS = tuple(_COLORS)


@dataclass(slots=True)
class Bar:
    lane: int
    start: float
    end: float
    kind: str  # one of KINDS
    row: int = 0  # within its lane, when calls that overlap are drawn one above another


@dataclass(slots=True)
class Lane:
    label: str
    depth: int = 0  # nesting: 1 for a sub-orchestration's calls
    rows: int = 1  # calls that ran at once, drawn one above another
    busy: list[tuple[float, int]] | None = None  # aggregated: (time, calls running) steps
    marks: list[float] = field(default_factory=list)  # aggregated: failure times
    note: str = ""


@dataclass
class Timeline:
    """What the chart shows, in seconds since ``origin`` (the first run's start)."""

    title: str
    origin: float
    end: float
    lanes: list[Lane] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    runs: list[float] = field(default_factory=list)  # each run's start
    calls: int = 0
    aggregated: bool = False

    def lane(self, label: str, depth: int = 0) -> int:
        self.lanes.append(Lane(label, depth))
        return len(self.lanes) - 1


def build(
    instance_id: str,
    events: Sequence[history.Event],
    children: Callable[[str], Sequence[history.Event]] | None = None,
    *,
    now: float | None = None,
    title: str | None = None,
) -> Timeline:
    """The timeline of one instance. ``children(instance_id)`` gives a
    sub-orchestration's history (its calls are nested under its lane); ``now`` ends the
    bars of what is still running (default: the last event's time)."""
    times = [e.timestamp for e in events]
    origin = min(times) if times else 0.0
    end = max([*times, now or 0.0]) if times else (now or 0.0)
    chart = Timeline(title or f"instance {instance_id}", origin, end)
    chart.runs = [e.timestamp for e in events if isinstance(e, history.ExecutionStarted)]
    rows = call_rows(events)
    chart.calls = len(rows)
    _add_calls(chart, rows, events, children, depth=0)
    _add_timers(chart, events)
    _add_waits(chart, events)
    for item in chart.bars:  # seconds since the start, as drawn
        item.start -= origin
        item.end -= origin
    chart.end -= origin
    for lane in chart.lanes:
        lane.marks = [t - origin for t in lane.marks]
        if lane.busy is not None:
            lane.busy = [(t - origin, n) for t, n in lane.busy]
    chart.runs = [t - origin for t in chart.runs]
    return chart


def _add_calls(
    chart: Timeline,
    rows: list[CallRow],
    events: Sequence[history.Event],
    children: Callable[[str], Sequence[history.Event]] | None,
    depth: int,
) -> None:
    activities: dict[str, list[CallRow]] = {}
    for row in rows:
        activities.setdefault(row.activity, []).append(row)
    per_call = len(rows) <= CALL_LANES_UP_TO
    for activity, calls in activities.items():
        if activity.startswith("sub:"):
            for call in calls:
                _add_child(chart, call, children, depth)
            continue
        if per_call:
            for call in calls:
                label = f"{activity}({call.arguments})" if call.arguments else activity
                _call_bars(chart, chart.lane(label, depth), call, chart.end)
        elif len(calls) > BARS_PER_LANE_UP_TO or not _packed(chart, activity, calls, depth):
            _aggregate(chart, activity, calls, depth)


def _packed(chart: Timeline, activity: str, calls: list[CallRow], depth: int) -> bool:
    """Draw each call in the first row of the lane free when it began to run (rows end
    up as many as ran at once; the time calls waited for a thread is left out, all of a
    fan-out's calls wait at once); False when that is more rows than can be read."""
    first = len(chart.bars)
    lane = chart.lane(_counted(activity, len(calls)), depth)
    row_ends: list[float] = []
    for call in sorted(calls, key=_begun):
        begun = _begun(call)
        row = next((i for i, end in enumerate(row_ends) if end <= begun), len(row_ends))
        if row == len(row_ends):
            if row == ROWS_PER_LANE_UP_TO:
                del chart.bars[first:], chart.lanes[lane]
                return False
            row_ends.append(begun)
        made = len(chart.bars)
        _call_bars(chart, lane, call, chart.end)
        if chart.bars[made:] and chart.bars[made].kind == "queued":
            del chart.bars[made]
        for item in chart.bars[made:]:
            item.row = row
        row_ends[row] = max([row_ends[row], *(item.end for item in chart.bars[made:])])
    chart.lanes[lane].rows = max(1, len(row_ends))
    return True


def _begun(call: CallRow) -> float:
    found = call.started if call.started is not None else call.scheduled
    return found if found is not None else call.finished or 0.0


def _counted(activity: str, calls: int) -> str:
    return f"{activity} ({calls} call{'s' if calls != 1 else ''})"


def _call_bars(chart: Timeline, lane: int, call: CallRow, now: float) -> None:
    bars = chart.bars
    if call.status == "sent":  # an instant, drawn as a tick (figure())
        if call.finished is not None:
            bars.append(Bar(lane, call.finished, call.finished, "sent"))
        return
    if call.cached:
        begun = call.started if call.started is not None else call.scheduled
        ended = call.finished if call.finished is not None else begun
        if begun is not None and ended is not None:
            bars.append(Bar(lane, begun, ended, "cached"))
        return
    cursor = call.scheduled
    for attempt in call.attempt_log:
        began = attempt.started if attempt.started is not None else cursor
        ended = attempt.ended if attempt.ended is not None else now
        if began is None:
            began = ended
        if cursor is not None and began > cursor:
            bars.append(Bar(lane, cursor, began, "queued"))
        bars.append(Bar(lane, began, ended, attempt.outcome))
        cursor = ended
        if attempt.backoff:
            bars.append(Bar(lane, ended, ended + attempt.backoff, "backoff"))
            cursor = ended + attempt.backoff
    if call.status in ("running", "retrying", "waiting") and cursor is not None:
        bars.append(Bar(lane, cursor, max(now, cursor), "running"))


def _aggregate(chart: Timeline, activity: str, calls: list[CallRow], depth: int) -> None:
    """Too many calls to draw one by one: how many ran at each moment, and where
    attempts failed."""
    chart.aggregated = True
    index = chart.lane(_counted(activity, len(calls)), depth)
    lane = chart.lanes[index]
    changes: list[tuple[float, int]] = []
    failed = cached = retries = sent = 0
    for call in calls:
        if call.status == "sent":  # no attempts: it adds nothing to what ran at once
            sent += 1
            continue
        if call.cached:
            cached += 1
            continue
        for attempt in call.attempt_log:
            began = attempt.started if attempt.started is not None else call.scheduled
            ended = attempt.ended if attempt.ended is not None else chart.end
            if began is None:
                continue
            changes += [(began, 1), (ended, -1)]
            if attempt.outcome in ("failed", "retried"):
                lane.marks.append(ended)
            retries += attempt.outcome == "retried"
        failed += call.status == "failed"
    changes.sort()
    running, steps = 0, []
    for moment, change in changes:
        running += change
        steps.append((moment, running))
    lane.busy = steps
    lane.note = (
        f"{len(calls) - cached - failed - sent} ran, {failed} failed, {retries} retries, "
        f"{cached} cached; peak {max((n for _, n in steps), default=0)} at once"
    ) + (f"; {sent} sent" if sent else "")


def _add_child(
    chart: Timeline,
    call: CallRow,
    children: Callable[[str], Sequence[history.Event]] | None,
    depth: int,
) -> None:
    child_id = call.arguments
    child = list(children(child_id)) if children is not None and child_id else []
    began = min((e.timestamp for e in child), default=call.finished)
    lane = chart.lane(f"{call.activity} {child_id}".rstrip(), depth)
    if began is not None:
        kind = "cached" if call.cached else "sub" if call.status != "failed" else "failed"
        chart.bars.append(Bar(lane, began, call.finished or chart.end, kind))
    if child and depth < 2:
        _add_calls(chart, call_rows(child), child, children, depth + 1)


def _add_timers(chart: Timeline, events: Sequence[history.Event]) -> None:
    fired = {e.key: e.timestamp for e in events if isinstance(e, history.TimerFired)}
    for event in events:
        if isinstance(event, history.TimerCreated):
            lane = chart.lane(f"timer until {_clock(event.fire_at)}")
            ended = fired.get(event.key, max(event.fire_at, chart.end))
            chart.bars.append(Bar(lane, event.timestamp, ended, "timer"))


def _add_waits(chart: Timeline, events: Sequence[history.Event]) -> None:
    """An external event's wait, from the step that began it (history keeps no event for
    a wait: the last event before the raise that is not itself a raise) to the raise."""
    last = None
    for event in events:
        if isinstance(event, history.EventRaised):
            if last is not None:
                lane = chart.lane(f"event {event.name!r}")
                chart.bars.append(Bar(lane, last, event.timestamp, "wait"))
        elif not isinstance(event, history.ControlRequested):
            last = event.timestamp


def _clock(timestamp: float) -> str:
    return _dt.datetime.fromtimestamp(timestamp).strftime("%H:%M:%S")


def chart_of(store: Any, instance_id: str, *, live: bool = False) -> TimelineChart:
    """The timeline of an instance in ``store`` (a CheckpointStore), its children's
    calls nested; ``live``: what still runs is drawn up to now."""
    record = store.get_instance(instance_id)
    events = store.read_history(instance_id)
    if record is None and not events:
        raise InstanceNotFoundError(
            f"no instance {instance_id!r} in {store.location}", instance_id=instance_id
        )
    running = live or (record is not None and record.status == "running")
    title = f"{record.orchestrator} {instance_id}" if record is not None else instance_id
    built = build(
        instance_id,
        events,
        store.read_history,
        now=time.time() if running else None,
        title=title,
    )
    return TimelineChart(built)


# ---------------------------------------------------------------------- drawing


def figure(chart: Timeline) -> Any:
    """The chart as a matplotlib Figure (Agg canvas, no pyplot)."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        raise ConfigurationError(
            "the timeline needs matplotlib: pip install 'durable_nb[timeline]' "
            "(or pip install matplotlib)",
            setting="timeline",
        ) from None
    lanes = chart.lanes or [Lane("(no calls)")]
    # A lane of overlapping calls is taller: half a lane more per row, up to 4 lanes.
    sizes = [1.0 + min(lane.rows - 1, 6) * 0.5 for lane in lanes]
    tops = [sum(sizes[:i]) for i in range(len(lanes))]
    total = sum(sizes)
    height = min(2.0 + 0.32 * total, 40.0)
    fig = Figure(figsize=(11, height), layout="constrained")
    ax = fig.add_subplot()
    by_kind: dict[str, dict[tuple[int, int], list[tuple[float, float]]]] = {}
    for item in chart.bars:
        spans = by_kind.setdefault(item.kind, {}).setdefault((item.lane, item.row), [])
        spans.append((item.start, max(item.end - item.start, chart.end * 0.002)))
    for kind, per_row in by_kind.items():
        style: dict[str, Any] = {"facecolors": _COLORS[kind], "edgecolors": "none"}
        if kind == "cached":
            style = {"facecolors": "#f5f5f5", "edgecolors": "#757575", "linewidths": 0.8}
        elif kind == "backoff":
            style = {"facecolors": _COLORS[kind], "edgecolors": "#fb8c00", "hatch": "///"}
        for (at, row), spans in per_row.items():
            step = sizes[at] / lanes[at].rows
            if kind == "sent":
                middle = tops[at] + (row + 0.5) * step
                xs = [start for start, _ in spans]
                ax.plot(xs, [middle] * len(xs), "|", color=_COLORS[kind], markersize=10)
                continue
            ax.broken_barh(spans, (tops[at] + row * step + 0.1 * step, 0.8 * step), **style)
    for index, lane in enumerate(lanes):
        top, size = tops[index], sizes[index]
        if lane.busy:
            peak = max(n for _, n in lane.busy) or 1
            xs = [t for t, _ in lane.busy]
            ys = [top + size * (0.9 - 0.8 * n / peak) for _, n in lane.busy]
            ax.fill_between(xs, top + 0.9 * size, ys, step="post", color=_COLORS["completed"])
            ax.text(xs[0], top + 0.12 * size, lane.note, fontsize=7, va="top", color="#424242")
        if lane.marks:
            ys = [top + 0.5 * size] * len(lane.marks)
            ax.plot(lane.marks, ys, "|", color=_COLORS["failed"], markersize=9)
    for run, started in enumerate(chart.runs[1:], 2):
        ax.axvline(started, color="#9e9e9e", linestyle="--", linewidth=0.8)
        ax.text(started, -0.05, f" run {run}", fontsize=7, color="#616161", va="bottom")
    labels = [("↳ " * min(lane.depth, 1)) + "  " * lane.depth + lane.label for lane in lanes]
    ax.set_yticks([t + z / 2 for t, z in zip(tops, sizes, strict=True)], labels)
    ax.set_ylim(total, -0.3)
    ax.set_xlim(0, max(chart.end, 1e-3) * 1.01)
    ax.set_xlabel(f"seconds since {_clock(chart.origin)}")
    ax.grid(axis="x", alpha=0.3)
    shown = [
        kind for kind in KINDS if kind in by_kind or (kind == "completed" and chart.aggregated)
    ]
    fig.legend(
        handles=[Patch(facecolor=_COLORS[k], edgecolor="#757575", label=k) for k in shown],
        loc="outside lower center",
        fontsize=7,
        ncols=max(len(shown), 1),
        frameon=False,
    )
    ax.set_title(f"{chart.title}: {chart.calls} calls", fontsize=10, loc="left")
    return fig


class TimelineChart:
    """A timeline ready to show (in a notebook: an image) or to write to a file."""

    def __init__(self, chart: Timeline) -> None:
        self.chart = chart
        self._figure: Any = None

    def figure(self) -> Any:
        if self._figure is None:
            self._figure = figure(self.chart)
        return self._figure

    def image(self, fmt: str) -> bytes:
        out = io.BytesIO()
        self.figure().savefig(out, format=fmt, dpi=100)
        return out.getvalue()

    def save(self, path: str | Path) -> Path:
        """Write the chart to ``path``: .png, .svg, or .html (the SVG in a page)."""
        target = Path(path)
        suffix = target.suffix.lower()
        if suffix in (".png", ".svg"):
            target.write_bytes(self.image(suffix[1:]))
        elif suffix in (".html", ".htm"):
            svg = self.image("svg").decode()
            title = html.escape(self.chart.title)
            target.write_text(
                f"<!doctype html><meta charset='utf-8'><title>{title}</title>"
                f"<body style='font-family:sans-serif'>{svg}</body>\n",
                encoding="utf-8",
            )
        else:
            raise ConfigurationError(
                f"cannot write a timeline to {target.name!r}: use a name ending in .html, "
                ".svg or .png",
                setting="output",
                value=str(path),
            )
        return target

    def _repr_png_(self) -> bytes:
        return self.image("png")

    def __repr__(self) -> str:
        chart = self.chart
        return (
            f"<timeline of {chart.title}: {chart.calls} calls, {len(chart.lanes)} lanes, "
            f"{chart.end:.1f} s>"
        )
