"""Progress model throttling, text and widget views."""

from __future__ import annotations

import io

from durable_nb.progress import Progress
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
    progress.cached("save")
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
    progress.scheduled("fetch")
    progress.attempt_started("fetch")
    progress.changed()
    header, table = widget.children
    assert "fetch" not in table.value  # within 0.1 s of the last update: held back
    clock.now += 0.2
    progress.changed()
    assert "running" in header.value and "fetch" in table.value
    progress.attempt_ended("fetch")
    progress.failed("fetch")
    progress.finish("failed", "ValueError: boom")
    assert "failed" in header.value and "ValueError: boom" in header.value
    assert repr(widget) == "<durable_nb progress: orch [orch-1]>"
