"""Views of a run's :class:`~durable_nb.progress.Progress`: a live ipywidget in a
kernel, plain text elsewhere (terminal IPython, scripts).

The widget's plain-text form is fixed when it is displayed (its ``repr``), with no
durations in it, so notebooks that show it compare stably under nbval.

A widget is only state: a notebook saved after a headless run (papermill, nbconvert,
``durable-nb run``) and viewed without a widget manager (GitHub, nbviewer, VS Code
without widgets, ``nbconvert --to html``) would show nothing but that ``repr``. So when
the run ends, in the cell that displayed the widget, a second output follows it: the
final summary as text/plain and text/html (activity table, counts, status; no
durations, so nbval compares it stably), bundled with an invisible widget so that
frontends that render widgets show only the live one. It is a new display, not an
``update_display`` of the widget's own output: nbval ignores update_display_data, so
a saved notebook whose widget output had been updated would no longer compare with a
fresh run.
"""

from __future__ import annotations

import datetime
import html
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from durable_nb.progress import ActivityRow, Progress

TEXT_INTERVAL = 5.0  # seconds between progress lines in text mode

_COLUMNS = ("cached", "ran", "running", "failed", "retried")


def attach_view(progress: Progress, mode: str) -> None:
    """Subscribe the view that ``mode`` (auto, widget, text, none) asks for."""
    if mode == "auto":
        mode = "widget" if _in_kernel() else "text"
    if mode == "widget":
        try:
            widget = make_widget(progress)
        except ImportError:
            mode = "text"
        else:
            from IPython.display import display

            display(widget)  # type: ignore[no-untyped-call, unused-ignore]
            progress.subscribe(_FinalDisplay())
            return
    if mode == "text":
        TextView(progress)


def _in_kernel() -> bool:
    """True inside a Jupyter kernel, where widgets can be shown."""
    if "IPython" not in sys.modules:
        # A kernel imports IPython before it runs any cell. Importing it only to ask
        # would cost a script's first run a third of a second.
        return False
    try:
        from IPython.core.getipython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()  # type: ignore[no-untyped-call, unused-ignore]
    return shell is not None and getattr(shell, "kernel", None) is not None


# --------------------------------------------------------------------- text


def summary_line(progress: Progress, *, timing: bool = True) -> str:
    """One line: instance, status, time (unless ``timing`` is false) and counts."""
    totals = progress.totals()
    counts = ", ".join(f"{getattr(totals, c)} {c}" for c in _COLUMNS if getattr(totals, c))
    after = f" after {progress.elapsed:.2f} s" if timing else ""
    return (
        f"{progress.orchestrator} [{progress.instance_id}] {progress.status}{after}: "
        f"{totals.done}/{totals.total} calls done" + (f" ({counts})" if counts else "")
    )


def row_line(row: ActivityRow) -> str:
    counts = ", ".join(f"{getattr(row, c)} {c}" for c in _COLUMNS if getattr(row, c))
    return f"  {row.name}: {row.done}/{row.total}" + (f" ({counts})" if counts else "")


def text_summary(progress: Progress, *, timing: bool = True) -> str:
    """The summary line, one line per activity, and the failure if any."""
    lines = [summary_line(progress, timing=timing)]
    lines += [row_line(r) for r in progress.rows.values()]
    if progress.message:
        lines.append(f"  {progress.message}")
    return "\n".join(lines)


class TextView:
    """Progress lines on a stream: one every few seconds, and a summary at the end."""

    def __init__(self, progress: Progress, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._last = time.monotonic()
        progress.subscribe(self._update)

    def _update(self, progress: Progress) -> None:
        stream = self._stream or sys.stderr
        if progress.finished is not None:
            print(text_summary(progress), file=stream, flush=True)
        elif progress.status == "running" and time.monotonic() - self._last >= TEXT_INTERVAL:
            self._last = time.monotonic()
            print(summary_line(progress), file=stream, flush=True)


# --------------------------------------------------------------------- widget

_STATUS_COLOURS = {
    "starting": "#666",
    "running": "#1f6feb",
    "completed": "#1a7f37",
    "failed": "#cf222e",
    "interrupted": "#9a6700",
    "suspended": "#9a6700",
    "terminated": "#cf222e",
}


def _waits_html(progress: Progress, *, countdown: bool = True) -> str:
    """Timers and events the run is waiting for, and its custom status. Without
    ``countdown`` a timer shows only when it fires: the live widget's clock counts down."""
    parts = []
    now = time.time()
    backing_off = progress.totals().backing_off
    if backing_off:
        parts.append(f"{backing_off} call(s) waiting to retry")
    for fire_at in sorted(progress.timers.values()):
        when = datetime.datetime.fromtimestamp(fire_at).strftime("%H:%M:%S")
        left = f" (in {max(0.0, fire_at - now):.0f} s)" if countdown else ""
        parts.append(f"timer fires at {when}{left}")
    for name in progress.waiting_events:
        parts.append(f"waiting for event <code>{html.escape(name)}</code>")
    if progress.custom_status is not None:
        parts.append(f"status: <code>{html.escape(repr(progress.custom_status)[:120])}</code>")
    return "<br>" + " &middot; ".join(parts) if parts else ""


def header_html(progress: Progress, *, timing: bool = True) -> str:
    """Status, counts and what the run waits for; with ``timing``, the elapsed time and
    timers' countdowns too (the live widget shows those in :func:`clock_html`)."""
    totals = progress.totals()
    colour = _STATUS_COLOURS.get(progress.status, "#666")
    return (
        f"<b>{html.escape(progress.orchestrator)}</b> "
        f"<code>{html.escape(progress.instance_id)}</code> "
        f"<span style='color:{colour};font-weight:bold'>{progress.status}</span> "
        f"&middot; {totals.done}/{totals.total} calls"
        + (f" &middot; {progress.elapsed:.1f} s" if timing else "")
        + (_waits_html(progress, countdown=timing) if progress.finished is None else "")
        + (
            f"<br><span style='color:#cf222e'>{html.escape(progress.message)}</span>"
            if progress.message and progress.status in ("failed", "terminated")
            else ""
        )
    )


def clock_html(progress: Progress) -> str:
    """What moves with time alone: the elapsed time and the next timer's countdown. Its
    own widget, so that a tick while nothing else changes is one small message."""
    text = f"{progress.elapsed:.1f} s"
    if progress.finished is None and progress.timers:
        left = max(0.0, min(progress.timers.values()) - time.time())
        text += f" &middot; next timer in {left:.0f} s"
    return f"<span style='color:#666'>{text}</span>"


def table_html(progress: Progress) -> str:
    head = "".join(
        f"<th style='padding:0 8px'>{c}</th>" for c in ("activity", "done", "", *_COLUMNS)
    )
    rows = []
    for index, (group, group_rows) in enumerate(progress.grouped_rows()):
        if index:
            rows.append(
                f"<tr><td colspan='{3 + len(_COLUMNS)}' style='padding:4px 8px 0'>"
                f"&#8627; sub-orchestrations <b>{html.escape(group)}</b></td></tr>"
            )
        rows += [_row_html(row) for row in group_rows]
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _row_html(row: ActivityRow) -> str:
    cells = [
        f"<td style='padding:0 8px'><code>{html.escape(row.name)}</code></td>",
        f"<td style='padding:0 8px'>{row.done}/{row.total}</td>",
        f"<td><progress value='{row.done}' max='{max(row.total, 1)}'></progress></td>",
    ]
    cells += [
        f"<td style='padding:0 8px;text-align:right'>{getattr(row, c)}</td>" for c in _COLUMNS
    ]
    return "<tr>" + "".join(cells) + "</tr>"


# Marks the final-summary output, so ``durable-nb run`` does not echo the run twice.
FINAL_SUMMARY_KEY = "durable_nb_final_summary"


def final_summary_bundle(progress: Progress) -> dict[str, str]:
    """The run's final state for saved notebooks: text/plain and text/html, no durations."""
    return {
        "text/plain": text_summary(progress, timing=False),
        "text/html": f"<div>{header_html(progress, timing=False)}{table_html(progress)}</div>",
    }


class _FinalDisplay:
    """Displays :func:`final_summary_bundle` once each time the run ends.

    The bundle carries the view of an invisible widget too: a frontend that renders
    widgets prefers that view (so it shows only the live widget above), one that does
    not falls back to the html or the text.
    """

    def __init__(self) -> None:
        self._shown_for: float | None = None

    def __call__(self, progress: Progress) -> None:
        if progress.finished is None or progress.finished == self._shown_for:
            return
        self._shown_for = progress.finished
        if progress.summary_deferred:
            # Started in the background: the cell that showed the widget is over, and a
            # display from the run would go to it and be dropped. ``await h`` shows it.
            progress.summary_pending = True
            return
        show_final_summary(progress)


def show_final_summary(progress: Progress) -> None:
    """Display :func:`final_summary_bundle` in the current cell, with an invisible widget
    view so that frontends that render widgets show only the live widget."""
    import ipywidgets
    from IPython.display import display

    progress.summary_pending = False
    hidden = ipywidgets.Box(layout=ipywidgets.Layout(display="none"))
    data: dict[str, Any] = dict(hidden._repr_mimebundle_())
    data.update(final_summary_bundle(progress))
    display(data, raw=True, metadata={FINAL_SUMMARY_KEY: True})  # type: ignore[no-untyped-call, unused-ignore]


def make_widget(progress: Progress) -> Any:
    """A VBox of header, clock and table that follows ``progress``; raises ImportError
    without ipywidgets."""
    import ipywidgets
    import traitlets

    class ProgressWidget(ipywidgets.VBox):  # type: ignore[misc, unused-ignore]
        # Plain-text summary set when the run ends; synced so headless runners
        # (durable-nb run) can print it from the widget state.
        summary = traitlets.Unicode("").tag(sync=True)

        def __repr__(self) -> str:
            # What nbval compares: fixed at display time, no durations.
            return f"<durable_nb progress: {progress.orchestrator} [{progress.instance_id}]>"

    header = ipywidgets.HTML(value=header_html(progress, timing=False))
    clock = ipywidgets.HTML(value=clock_html(progress))
    table = ipywidgets.HTML(value=table_html(progress))
    approvals = ipywidgets.VBox(children=[])
    widget = ProgressWidget(children=[header, clock, table, approvals])
    shown: list[str] = []

    def approval_row(name: str) -> Any:
        """Approve / Reject raise the event with True / False: the human-approval pattern."""
        approve = ipywidgets.Button(description="Approve", button_style="success")
        reject = ipywidgets.Button(description="Reject", button_style="danger")

        def click(value: bool) -> Callable[[Any], None]:
            def handler(_button: Any) -> None:
                approve.disabled = reject.disabled = True
                if progress.on_approval is not None:
                    progress.on_approval(name, value)

            return handler

        approve.on_click(click(True))
        reject.on_click(click(False))
        label = ipywidgets.HTML(value=f"event <code>{html.escape(name)}</code>:")
        return ipywidgets.HBox(children=[label, approve, reject])

    def update(p: Progress) -> None:
        # Rows first, status last: each value is a message of its own, and a frontend
        # may draw between them; a header saying `completed` above rows still in flight
        # would be a lie, while rows a moment ahead of their header are not.
        table.value = table_html(p)
        clock.value = clock_html(p)
        waiting = p.waiting_events if p.finished is None else []
        if waiting != shown:
            shown[:] = waiting
            approvals.children = [approval_row(name) for name in waiting]
        header.value = header_html(p, timing=False)
        if p.finished is not None:
            widget.summary = text_summary(p)

    def tick(p: Progress) -> None:
        clock.value = clock_html(p)  # only time moved: one small message, no table

    progress.subscribe(update)
    progress.subscribe_clock(tick)
    return widget
