"""The progress widget in JupyterLab: the example notebooks run from the UI (issue 13).

The expected rows and counts come from the notebooks themselves: the activities their
orchestrators call, the number of repositories the quickstart's API serves and the
counts its cells print (read from the store by ``get_runtime().status``), so the
widget is checked against the run, not against numbers copied here.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

from browser.lab_driver import WIDGET_ERROR_TEXTS, Lab, cell_source, find_cell

pytestmark = pytest.mark.browser

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
QUICKSTART = NOTEBOOKS / "01_quickstart.ipynb"
APPROVAL = NOTEBOOKS / "02_human_approval.ipynb"


def _activities_called(source: str) -> list[str]:
    """The activities an orchestrator cell calls, in the order it calls them."""
    return list(dict.fromkeys(re.findall(r"call_activity\((\w+)", source)))


def _first_time_failures(repos: int) -> int:
    """How many repositories the quickstart's API answers 503 the first time: each is
    one retry of open_issues. Asked of demo_api itself, which the notebook builds with
    its defaults but for ``repos``."""
    sys.path.insert(0, str(NOTEBOOKS))  # demo_api imports local_server, beside it
    try:
        demo_api = importlib.import_module("demo_api")
    finally:
        sys.path.remove(str(NOTEBOOKS))
    return len(demo_api.DemoApi(repos=repos).flaky)


def _assert_no_widget_errors(lab: Lab) -> None:
    text = lab.all_output_text()
    shown = [error for error in WIDGET_ERROR_TEXTS if error in text]
    assert not shown, f"widget errors on the page: {shown}"
    assert not lab.widget_console_errors(), lab.widget_console_errors()


def test_quickstart_run_all(lab: Lab) -> None:
    lab.open(QUICKSTART.name)
    lab.run_all()

    repos = int(
        re.search(r"(\d+) repositories", lab.output_text(find_cell(QUICKSTART, "DemoApi(")))[1]
    )
    names = _activities_called(cell_source(QUICKSTART, find_cell(QUICKSTART, "def issue_report")))
    # One list_repos, one open_issues per repository (its task_all), one save_report.
    expected = {name: repos if name == "open_issues" else 1 for name in names}

    # Run All has returned: the run is over, but the widget's messages may still be on
    # their way (header, table and buttons are separate widgets): wait for all of them.
    first = lab.wait_for_widget(find_cell(QUICKSTART, 'total = await issue_report("'), Lab.settled)
    assert first.status == "completed", first
    assert [row.name for row in first.rows] == names
    assert (first.done, first.total) == (sum(expected.values()),) * 2, first.header
    for row in first.rows:
        # A fresh store: every call ran, none failed for good (the 503s were retried).
        assert (row.done, row.total, row.ran) == (expected[row.name],) * 3, row
        assert (row.cached, row.running, row.failed) == (0, 0, 0), row
    assert first.row("open_issues").retried == _first_time_failures(repos) > 0, first

    # The rerun cell prints the store's counts of the same instance: all cached.
    rerun = find_cell(QUICKSTART, "again = await issue_report")
    printed = re.search(r"calls: (\d+), cached: (\d+), ran: (\d+)", lab.output_text(rerun))
    assert printed, lab.output_text(rerun)
    calls, cached, ran = (int(n) for n in printed.groups())
    again = lab.wait_for_widget(rerun, Lab.settled)
    assert (again.status, again.done, again.total) == ("completed", calls, calls), again
    assert (calls, cached, ran) == (first.total, first.total, 0)
    assert [(r.name, r.total, r.cached, r.ran) for r in again.rows] == [
        (name, count, count, 0) for name, count in expected.items()
    ]

    # Two sweeps, two widgets, each as its printed store counts say.
    loop = find_cell(QUICKSTART, "for n in (100, 200)")
    sweeps = re.findall(r"sweep\((\d+)\): (\d+) ran, (\d+) cached", lab.output_text(loop))
    assert len(sweeps) == 2, lab.output_text(loop)
    views = lab.wait_for_widgets(loop, lambda vs: len(vs) == 2 and all(map(Lab.settled, vs)))
    for view, (n, ran_, cached_) in zip(views, sweeps, strict=True):
        assert (view.status, view.done, view.total) == ("completed", int(n), int(n)), view
        (score,) = view.rows
        assert (score.name, score.total, score.ran, score.cached) == (
            "score",
            int(n),
            int(ran_),
            int(cached_),
        )
    _assert_no_widget_errors(lab)


def test_approve_button_finishes_the_run(lab: Lab) -> None:
    lab.open(APPROVAL.name)
    # Everything before the cell that approves in code, so the button has to do it.
    approve_in_code = find_cell(APPROVAL, 'h.raise_event("approval", True)')
    lab.run_all_above(approve_in_code)

    start = find_cell(APPROVAL, 'h = deploy_with_approval.start("web"')
    waiting = lab.wait_for_widget(start, lambda v: ("Approve", False) in v.buttons)
    assert waiting.status == "running", waiting
    assert "waiting for event approval" in waiting.header, waiting.header

    lab.click_button(start, "Approve")
    # The approved branch: every activity the orchestrator calls but notify_rejected.
    names = _activities_called(cell_source(APPROVAL, find_cell(APPROVAL, "def deploy_with")))
    approved = [name for name in names if name != "notify_rejected"]
    done = lab.wait_for_widget(start, lambda v: Lab.settled(v) and len(v.rows) == len(approved))
    assert [(r.name, r.done, r.total) for r in done.rows] == [(n, 1, 1) for n in approved]
    assert (done.done, done.total) == (len(approved), len(approved)), done.header
    assert not done.buttons, f"the buttons outlive the wait: {done.buttons}"

    # The notebook's own next cell sees the run finished, deployed.
    awaited = find_cell(APPROVAL, "result = await h")
    lab.run_cell(awaited)
    assert "'deployed': True" in lab.output_text(awaited), lab.output_text(awaited)
    _assert_no_widget_errors(lab)
