"""Drive JupyterLab's own UI with Playwright, and read durable_nb's progress widget.

A test gets a :class:`Lab` from the ``lab`` fixture (tests/browser/conftest.py)::

    lab.open("01_quickstart.ipynb")          # by URL, as a user would; kernel idle
    lab.run_all()                             # Run > Run All Cells, waits for every cell
    view = lab.widget(cell=7)                 # the progress widget of a code cell
    view.status, view.done, view.total        # 'completed', 66, 66
    view.row("open_issues").ran               # one activity row of its table
    lab.wait_for_widget(7, Lab.settled)       # header, table and buttons all final
    lab.click_button(cell=7, label="Approve")
    lab.run_cell(9)                           # select the cell, Ctrl+Enter, wait
    lab.output_text(9)                        # the cell's outputs as text
    lab.save_artifacts(folder)                # screenshot, HTML, console (done on failure)

Cells are counted like the notebook's ``cells`` list, markdown included (index 0 is
the first cell), so a test can find its cell in the .ipynb it opened.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Only types: the test modules import this one, and they must collect (then skip,
    # or fail under CI) where playwright is not installed.
    from playwright.sync_api import ConsoleMessage, Page

# The notebook panel on show: JupyterLab keeps panels of other tabs in the DOM, hidden.
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"

# What ipywidgets' manager renders when a view cannot be made: a widget that failed.
WIDGET_ERROR_TEXTS = ("Error displaying widget", "Failed to load model class", "Model not found")

# Reads every code cell of the open notebook in one round trip: its prompt, its outputs'
# text, and each progress widget in it (a VBox of a header HTML, a table HTML, approvals).
_READ_CELLS_JS = """
(panel) => {
  const root = document.querySelector(panel);
  if (!root) return null;
  const indicator = root.querySelector('.jp-Notebook-ExecutionIndicator');
  const kernel = root.querySelector('.jp-Toolbar-kernelName');
  const cells = [...root.querySelectorAll('.jp-Notebook .jp-Cell')].map((cell) => {
    const prompt = cell.querySelector('.jp-InputPrompt');
    const widgets = [...cell.querySelectorAll('.jp-OutputArea .widget-vbox')].flatMap((box) => {
      // The header is the first HTML part, the table the one holding a <table>: other
      // parts (a clock, a timeline) may come between them.
      const parts = [...box.children].filter((c) => c.classList.contains('widget-html'));
      const table = parts.length >= 2 ? box.querySelector(':scope > .widget-html table') : null;
      if (!table || parts[0].contains(table)) return [];
      return [{
        header: parts[0].innerText.trim(),
        status: (parts[0].querySelector('span') || {innerText: ''}).innerText.trim(),
        rows: [...table.rows].slice(1).map((r) => [...r.cells].map((c) => c.innerText.trim())),
        buttons: [...box.querySelectorAll('button')].map(
          (b) => ({label: b.innerText.trim(), disabled: b.disabled})),
      }];
    });
    const output = cell.querySelector('.jp-OutputArea');
    return {
      kind: cell.classList.contains('jp-CodeCell') ? 'code' : 'other',
      prompt: prompt ? prompt.innerText.trim() : '',
      text: output ? output.innerText : '',
      widgets,
    };
  });
  return {
    status: indicator ? indicator.getAttribute('data-status') : null,
    kernel: kernel ? kernel.innerText.trim() : '',
    cells,
  };
}
"""


@dataclass(frozen=True)
class Row:
    """One activity row of the widget's table, as shown."""

    name: str
    done: int
    total: int
    cached: int
    ran: int
    running: int
    failed: int
    retried: int


@dataclass(frozen=True)
class WidgetView:
    """A progress widget as the browser shows it."""

    header: str
    status: str
    done: int
    total: int
    rows: list[Row]
    buttons: list[tuple[str, bool]] = field(default_factory=list)  # (label, disabled)

    def row(self, name: str) -> Row:
        for row in self.rows:
            if row.name == name:
                return row
        raise AssertionError(f"no row {name!r} in the widget; rows: {self.rows}")

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> WidgetView:
        calls = re.search(r"(\d+)/(\d+) calls", raw["header"])
        rows = []
        for cells in raw["rows"]:
            # A sub-orchestration group is one spanning cell; activity rows have eight.
            if len(cells) != 8:
                continue
            name, fraction, _bar, *numbers = cells
            done, total = (int(n) for n in fraction.split("/"))
            rows.append(Row(name, done, total, *(int(n) for n in numbers)))
        buttons = [(b["label"], bool(b["disabled"])) for b in raw["buttons"]]
        done, total = (int(calls[1]), int(calls[2])) if calls else (-1, -1)
        return cls(raw["header"], raw["status"], done, total, rows, buttons)


class Lab:
    """One browser page on the JupyterLab server, and what it logged."""

    def __init__(self, page: Page, base_url: str, token: str, folder: str) -> None:
        self.page = page
        self.base_url = base_url
        self.token = token
        self.folder = folder  # the test's own folder, relative to the server's root
        self.console: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.console.append(f"{message.type}: {message.text}")

    def widget_console_errors(self) -> list[str]:
        """Console errors that concern widgets (the manager logs a view it cannot make)."""
        pattern = re.compile(r"widget|jupyter-widgets|model", re.IGNORECASE)
        return [
            m for m in self.console if m.startswith(("error", "pageerror")) and pattern.search(m)
        ]

    # ------------------------------------------------------------------ notebook

    def open(self, name: str, timeout: float = 60) -> None:
        """Open ``name`` by its URL and wait until its kernel is idle."""
        # ?reset: a fresh workspace. JupyterLab would otherwise restore the tabs of the
        # test before (the workspace is kept by the server), and start their kernels.
        url = f"{self.base_url}/lab/tree/{self.folder}/{name}?reset&token={self.token}"
        self.page.goto(url)
        self.page.locator(f"{PANEL} .jp-Notebook .jp-Cell").first.wait_for(timeout=timeout * 1000)
        deadline = time.monotonic() + timeout
        while (state := self._read()) is None or not (
            state["status"] == "idle" and state["kernel"] not in ("", "No Kernel")
        ):
            # conftest sets autoStartDefaultKernel, so no dialog is expected; should
            # JupyterLab still ask, take the kernel it proposes (conftest's spec).
            dialog = self.page.locator(".jp-Dialog")
            if dialog.count() and "kernel" in dialog.inner_text().lower():
                dialog.locator("button.jp-mod-accept").click()
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}: kernel not idle after {timeout} s: {state}")
            time.sleep(0.2)

    def menu(self, *path: str) -> None:
        """Click through the main menu: ``menu("Run", "Run All Cells")``."""
        self.page.locator(".lm-MenuBar-item", has_text=re.compile(f"^{path[0]}$")).click()
        for label in path[1:]:
            item = self.page.locator(".lm-Menu:visible .lm-Menu-item", has_text=label).first
            item.click()

    def run_all(self, timeout: float = 120) -> None:
        """Run > Run All Cells, then wait until every code cell has run."""
        count = len(self._read_or_fail()["cells"])
        self.menu("Run", "Run All Cells")
        self.wait_until_ran(range(count), timeout)

    def run_all_above(self, cell: int, timeout: float = 60) -> None:
        """Select ``cell``, Run > Run All Above Selected Cell, and wait for those cells."""
        self.select(cell)
        self.menu("Run", "Run All Above Selected Cell")
        self.wait_until_ran(range(cell), timeout)

    def run_cell(self, cell: int, timeout: float = 60) -> None:
        """Select ``cell`` and run it alone (Ctrl+Enter), then wait until it has run."""
        before = self._read_or_fail()["cells"][cell]["prompt"]
        self.select(cell)
        self.page.keyboard.press("Control+Enter")
        self.wait_until_ran([cell], timeout, not_prompt=before)

    def select(self, cell: int) -> None:
        """Select a cell in command mode, by a click on its prompt."""
        target = self.page.locator(f"{PANEL} .jp-Notebook .jp-Cell").nth(cell)
        target.scroll_into_view_if_needed()
        target.locator(".jp-InputPrompt").click()

    def wait_until_ran(self, cells: Any, timeout: float, *, not_prompt: str | None = None) -> None:
        """Wait until the code cells among ``cells`` show an execution count and the
        kernel is idle. A run that stopped (an error stops Run All) fails at once, with
        the outputs, instead of at the timeout."""
        wanted = list(cells)
        if not wanted:
            raise AssertionError("no cells to wait for: is a notebook open?")
        deadline = time.monotonic() + timeout
        idle_since: float | None = None
        while True:
            state = self._read_or_fail()
            code = [(i, state["cells"][i]) for i in wanted if state["cells"][i]["kind"] == "code"]
            ran = all(
                re.fullmatch(r"\[\d+\]:", c["prompt"]) and c["prompt"] != not_prompt
                for _, c in code
            )
            if ran and state["status"] == "idle":
                return
            idle_since = (idle_since or time.monotonic()) if state["status"] == "idle" else None
            errors = [i for i, c in code if "Traceback" in c["text"] or "Error" in c["prompt"]]
            if (
                errors
                or time.monotonic() > deadline
                or (idle_since is not None and time.monotonic() - idle_since > 10)
            ):
                shown = {i: (c["prompt"], c["text"][-2000:]) for i, c in code}
                raise AssertionError(
                    f"cells {wanted} did not all run (errors in {errors}; kernel "
                    f"{state['status']}):\n{json.dumps(shown, indent=1)}"
                )
            time.sleep(0.2)

    # ------------------------------------------------------------------ reading

    def _read(self) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self.page.evaluate(_READ_CELLS_JS, PANEL)
        return result

    def _read_or_fail(self) -> dict[str, Any]:
        state = self._read()
        if state is None:
            raise AssertionError("no notebook is open")
        return state

    def output_text(self, cell: int) -> str:
        text: str = self._read_or_fail()["cells"][cell]["text"]
        return text

    def all_output_text(self) -> str:
        return "\n".join(c["text"] for c in self._read_or_fail()["cells"])

    def widgets(self, cell: int) -> list[WidgetView]:
        """The progress widgets of a cell, in output order."""
        return [WidgetView.parse(w) for w in self._read_or_fail()["cells"][cell]["widgets"]]

    def widget(self, cell: int) -> WidgetView:
        """The one progress widget of a cell."""
        views = self.widgets(cell)
        if len(views) != 1:
            raise AssertionError(f"cell {cell}: {len(views)} progress widgets: {views}")
        return views[0]

    def wait_for_widget(
        self, cell: int, predicate: Callable[[WidgetView], bool], timeout: float = 30
    ) -> WidgetView:
        """Poll a cell's one widget until ``predicate`` holds, and return that view."""
        views = self.wait_for_widgets(
            cell, lambda vs: len(vs) == 1 and predicate(vs[0]), timeout=timeout
        )
        return views[0]

    def wait_for_widgets(
        self, cell: int, predicate: Callable[[list[WidgetView]], bool], timeout: float = 30
    ) -> list[WidgetView]:
        """Poll a cell's widgets until ``predicate`` holds, and return those views.

        Wait for the whole state a test asserts, not one part of it: the header, the
        table and the buttons are separate widgets, changed by separate messages, so
        the DOM can show the header's "completed" while the table or the buttons are
        still those of a moment before."""
        deadline = time.monotonic() + timeout
        while True:
            views = self.widgets(cell)
            if predicate(views):
                return views
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"cell {cell}: widgets not as expected after {timeout} s: {views}"
                )
            time.sleep(0.1)

    @staticmethod
    def settled(view: WidgetView) -> bool:
        """The run is over and the table says so too: every row done."""
        return (
            view.status == "completed"
            and view.done == view.total
            and all(row.done == row.total for row in view.rows)
            and sum(row.total for row in view.rows) == view.total
            and not view.buttons
        )

    def click_button(self, cell: int, label: str) -> None:
        """Click the widget button labelled ``label`` in a cell's outputs."""
        cells = self.page.locator(f"{PANEL} .jp-Notebook .jp-Cell")
        button = cells.nth(cell).locator(".jp-OutputArea button", has_text=label)
        button.scroll_into_view_if_needed()
        button.click()

    # ------------------------------------------------------------------ failure

    def save_artifacts(self, folder: Path) -> list[Path]:
        """Screenshot, page HTML and console messages into ``folder``; best effort, since
        the page may be what broke."""
        from playwright.sync_api import Error

        folder.mkdir(parents=True, exist_ok=True)
        saved = []
        try:
            self.page.screenshot(path=str(folder / "page.png"), full_page=True)
            saved.append(folder / "page.png")
            (folder / "page.html").write_text(self.page.content())
            saved.append(folder / "page.html")
        except Error as error:
            (folder / "page-error.txt").write_text(f"could not capture the page: {error}\n")
        (folder / "console.txt").write_text("\n".join(self.console) + "\n")
        saved.append(folder / "console.txt")
        return saved


def find_cell(notebook: Path, text: str) -> int:
    """The index of the one code cell of ``notebook`` whose source contains ``text``:
    tests name their cells by what they run, not by a number an edit would shift.
    (Markdown cells are counted in the index but not searched: they quote code.)"""
    cells = json.loads(notebook.read_text())["cells"]
    found = [
        i
        for i, cell in enumerate(cells)
        if cell["cell_type"] == "code" and text in "".join(cell["source"])
    ]
    if len(found) != 1:
        raise AssertionError(f"{notebook.name}: {len(found)} code cells contain {text!r}")
    return found[0]


def cell_source(notebook: Path, cell: int) -> str:
    return "".join(json.loads(notebook.read_text())["cells"][cell]["source"])
