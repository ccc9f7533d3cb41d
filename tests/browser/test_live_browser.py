"""What a user sees while a run goes on, in JupyterLab (issue 13): a thread fan-out's
widget passes through partial states, a waiting run's clock moves, and a timeline
opens inline as an image.

The notebook is written here (not one of the examples): its timings are what the
checks need, a fan-out long enough for several throttled updates and a wait.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest

from browser.lab_driver import Lab, WidgetView, find_cell

pytestmark = pytest.mark.browser

CALLS, WORKERS = 40, 4

SETUP = f"""\
%load_ext durable_nb
import time
import durable_nb as dn

dn.configure(max_workers={WORKERS})

@dn.activity
def slow(i):
    time.sleep(0.04 + 0.01 * (i % 4))
    return i

@dn.orchestrator
def fan(ctx, n):
    return sum((yield ctx.task_all([ctx.call_activity(slow, i) for i in range(n)])))

@dn.orchestrator
def gate(ctx):
    return (yield ctx.wait_for_external_event("go"))
"""
FAN = f"total = await fan({CALLS})\ntotal"
WAIT = "w = gate.start()"
RELEASE = 'w.raise_event("go", 7)\nawait w'
TIMELINE = f"iid = fan.instance_id_for({CALLS})\n%durable timeline $iid"


@pytest.fixture
def live_notebook(lab: Lab, lab_server: Any) -> Path:
    path = Path(lab_server.root) / lab.folder / "live.ipynb"
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(s) for s in (SETUP, FAN, WAIT, RELEASE, TIMELINE)]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    path.write_text(nbformat.writes(notebook))
    return path


def _views_while_running(lab: Lab, cell: int, seconds: float) -> list[WidgetView]:
    """The cell's widget as often as the page can be read, until it settles."""
    seen: list[WidgetView] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        views = lab.widgets(cell)
        if views:
            seen.append(views[0])
            if Lab.settled(views[0]):
                break
        time.sleep(0.02)
    return seen


def test_a_thread_fan_out_shows_partial_states_and_a_waiting_run_a_moving_clock(
    lab: Lab, live_notebook: Path, tmp_path: Path
) -> None:
    lab.open(live_notebook.name)
    setup, fan, wait, release, chart = (
        find_cell(live_notebook, text) for text in ("import time", FAN, WAIT, RELEASE, TIMELINE)
    )
    lab.run_cell(setup)

    # The fan-out: 40 calls of 40-70 ms on 4 threads take about 0.6 s, throttled to ten
    # updates a second: the widget must pass through partial counts, not jump to the end.
    lab.select(fan)
    lab.page.keyboard.press("Shift+Enter")
    seen = _views_while_running(lab, fan, 30)
    assert seen and Lab.settled(seen[-1]) and seen[-1].done == CALLS, seen[-1:]
    partial = sorted({v.done for v in seen if v.status == "running" and 0 < v.done < CALLS})
    assert len(partial) >= 2, f"partial states seen: {partial}; headers: {[v.header for v in seen]}"
    assert all(v.status != "completed" or v.done == v.total for v in seen)  # never early

    # A run waiting for an event: nothing changes but the time, which must still move.
    lab.run_cell(wait)
    clock = re.compile(r"(\d+(?:\.\d+)?) s\b")
    shown = []
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        found = clock.findall(lab.output_text(wait))
        if found:
            shown.append(float(found[-1]))
        time.sleep(0.25)
    distinct = sorted(set(shown))
    assert len(distinct) >= 3 and distinct[-1] - distinct[0] >= 1.5, shown
    lab.run_cell(release)
    assert "7" in lab.output_text(release)

    # The timeline of the fan-out, inline: an image the browser decoded.
    lab.run_cell(chart)
    size = _image_size(lab, chart)
    assert size[0] > 400 and size[1] > 100, size
    shot = tmp_path / "timeline.png"
    lab.page.locator(".jp-OutputArea-output img").last.screenshot(path=str(shot))
    assert shot.stat().st_size > 1000


def _image_size(lab: Lab, cell: int, timeout: float = 30) -> tuple[int, int]:
    """The natural size of the last image in a cell's outputs, once it has loaded."""
    script = """([panel, index]) => {
        const cells = document.querySelectorAll(panel + ' .jp-Notebook .jp-Cell');
        const images = cells[index] ? cells[index].querySelectorAll('.jp-OutputArea img') : [];
        const image = images[images.length - 1];
        return image && image.complete ? [image.naturalWidth, image.naturalHeight] : null;
    }"""
    from browser.lab_driver import PANEL

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        size = lab.page.evaluate(script, [PANEL, cell])
        if size and size[0]:
            return (int(size[0]), int(size[1]))
        time.sleep(0.2)
    raise AssertionError(f"cell {cell}: no image shown: {json.dumps(lab.output_text(cell))}")
