"""Execute a notebook headless in a real kernel of this Python (``durable-nb run``)."""

from __future__ import annotations

import asyncio
import keyword
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import nbformat

from durable_nb.errors import ConfigurationError
from durable_nb.widgets import FINAL_SUMMARY_KEY

_MAX_LINES = 12  # of one cell's output echoed to the terminal


def default_output(notebook: Path) -> Path:
    """Where ``durable-nb run`` writes the executed copy: ``NAME.out.ipynb`` beside it."""
    return notebook.with_name(f"{notebook.stem}.out.ipynb")


def strip_volatile(notebook: Any) -> None:
    """Drop what changes on every execution and nothing reads back: cell execution
    timestamps, the saved widget state (its model ids are new each run) and the
    kernel's exact Python version. Outputs and execution counts stay."""
    for cell in notebook.cells:
        cell.get("metadata", {}).pop("execution", None)
    notebook.metadata.pop("widgets", None)
    notebook.metadata.get("language_info", {}).pop("version", None)


PARAMETERS_TAG = "parameters"  # papermill's names, so notebooks made for it work here
INJECTED_TAG = "injected-parameters"


def check_parameters(parameters: Any) -> dict[str, Any]:
    """``parameters`` if it is a dict whose keys are Python names (not keywords), as the
    injected cell assigns them; otherwise ConfigurationError saying which are not."""
    if not isinstance(parameters, dict):
        raise ConfigurationError(
            f"parameters must be an object of names and values, got {parameters!r}",
            setting="parameters",
            value=parameters,
        )
    bad = [
        name
        for name in parameters
        if not (isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name))
    ]
    if bad:
        raise ConfigurationError(
            f"parameter names must be Python names: {', '.join(map(repr, bad))}",
            setting="parameters",
            value=bad,
        )
    return parameters


def inject_parameters(notebook: Any, parameters: dict[str, Any]) -> int:
    """Put a cell assigning ``parameters`` after the cell tagged ``parameters`` (at the
    top if there is none), as papermill does, replacing one injected before; returns
    the index of the injected cell. Values are written as Python literals."""
    cells = notebook.cells
    cells[:] = [c for c in cells if INJECTED_TAG not in c.get("metadata", {}).get("tags", [])]
    tagged = [
        i for i, c in enumerate(cells) if PARAMETERS_TAG in c.get("metadata", {}).get("tags", [])
    ]
    at = tagged[-1] + 1 if tagged else 0
    source = "# Parameters given to durable-nb run\n" + "".join(
        f"{name} = {value!r}\n" for name, value in parameters.items()
    )
    cell = nbformat.v4.new_code_cell(source)  # type: ignore[no-untyped-call, unused-ignore]
    cell.metadata["tags"] = [INJECTED_TAG]
    cells.insert(at, cell)
    return at


@dataclass
class RunOutcome:
    cells: int
    written: Path
    failed_cell: int | None = None
    error: str = ""
    stopped: bool = False  # ``stop`` was set: the kernel was interrupted, then shut down


def _kernel_manager(socket_dir: str) -> Any:
    """A kernel manager whose kernel is this interpreter, whatever specs are installed.

    It talks over Unix sockets in ``socket_dir``: nothing listens on TCP, and the
    kernel has no reason to warn about unencrypted traffic.
    """
    from jupyter_client.manager import KernelManager

    manager = KernelManager(
        kernel_name="python3", transport="ipc", ip=os.path.join(socket_dir, "kernel")
    )
    spec = manager.kernel_spec
    if spec is not None:
        spec.argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    return manager


def _first_line(source: str) -> str:
    for line in source.splitlines():
        if line.strip():
            return line.strip()[:70]
    return "(empty)"


class _Stopped(Exception):
    """Raised from the cell-start hook: the run was asked to stop, no cell starts."""


# After a stop, the running cell is interrupted every INTERRUPT_EVERY seconds (an
# interrupt that lands between cells is lost) and the kernel killed after STOP_GRACE.
INTERRUPT_EVERY = 0.5
STOP_GRACE = 5.0


class _Stopper:
    """Stops a run when ``stop`` is set, from another thread: SIGINT to the kernel, so
    the running cell gets a KeyboardInterrupt (a durable run in it records
    ``interrupted`` and resumes on the next run), then SIGKILL if it is still alive
    after STOP_GRACE. Signals rather than the kernel manager's methods: the manager
    belongs to nbclient's loop in the main thread."""

    def __init__(self, stop: threading.Event, manager: Any) -> None:
        self.stop = stop
        self.manager = manager
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="durable-nb-stop", daemon=True)
        self.thread.start()

    def _pid(self) -> int | None:
        provisioner = getattr(self.manager, "provisioner", None)
        pid = getattr(provisioner, "pid", None)
        return pid if isinstance(pid, int) else None

    def _watch(self) -> None:
        while not self.stop.wait(0.2):
            if self.done.is_set():
                return
        deadline = time.monotonic() + STOP_GRACE
        while not self.done.wait(INTERRUPT_EVERY):
            pid = self._pid()
            if pid is None:
                continue  # not started yet: the cell-start hook refuses to go on
            try:
                os.kill(pid, signal.SIGKILL if time.monotonic() > deadline else signal.SIGINT)
            except ProcessLookupError:
                return

    def close(self) -> None:
        self.done.set()
        self.thread.join()


class _Echo:
    """Prints each cell's start, end and text output as the notebook runs."""

    def __init__(
        self, client: Any, out: TextIO, total: int, quiet: bool, stop: threading.Event | None
    ) -> None:
        self.client = client
        self.out = out
        self.total = total
        self.quiet = quiet
        self.stop = stop
        self.number = 0
        self.started = 0.0

    def start(self, cell: Any, cell_index: int) -> None:
        if self.stop is not None and self.stop.is_set():
            raise _Stopped
        if cell.cell_type != "code":
            return
        self.number += 1
        self.started = time.monotonic()
        if not self.quiet:
            width = len(str(self.total))
            print(
                f"[{self.number:>{width}}/{self.total}] {_first_line(cell.source)}",
                file=self.out,
                flush=True,
            )

    def executed(self, cell: Any, cell_index: int, execute_reply: Any) -> None:
        if self.quiet or cell.cell_type != "code":
            return
        status = execute_reply.get("content", {}).get("status", "ok") if execute_reply else "ok"
        lines = self._output_lines(cell)
        for line in lines[:_MAX_LINES]:
            print(f"      {line}", file=self.out)
        if len(lines) > _MAX_LINES:
            print(f"      ... ({len(lines) - _MAX_LINES} more lines)", file=self.out)
        elapsed = time.monotonic() - self.started
        print(f"      {status} in {elapsed:.1f} s", file=self.out, flush=True)

    def _output_lines(self, cell: Any) -> list[str]:
        lines: list[str] = []
        for output in cell.get("outputs", []):
            kind = output.get("output_type")
            if kind == "stream":
                lines += output.get("text", "").splitlines()
            elif kind in ("execute_result", "display_data"):
                if output.get("metadata", {}).get(FINAL_SUMMARY_KEY):
                    continue  # the widget's own summary (with durations) is echoed
                data = output.get("data", {})
                widget = data.get("application/vnd.jupyter.widget-view+json")
                summary = self._widget_summary(widget) if widget else None
                if summary is not None:
                    lines += summary.splitlines()
                elif "text/plain" in data:
                    lines += str(data["text/plain"]).splitlines()
            elif kind == "error":
                lines.append(f"{output.get('ename')}: {output.get('evalue')}")
        return lines

    def _widget_summary(self, view: dict[str, Any]) -> str | None:
        """The final text of a durable_nb progress widget, from the synced widget state."""
        state = getattr(self.client, "widget_state", {}).get(view.get("model_id"), {})
        summary = state.get("summary")
        return summary if isinstance(summary, str) and summary else None


def run_notebook(
    path: Path,
    *,
    output: Path,
    timeout: float | None,
    env: dict[str, str],
    out: TextIO,
    quiet: bool = False,
    strip: bool = False,
    parameters: dict[str, Any] | None = None,
    stop: threading.Event | None = None,
) -> RunOutcome:
    """Execute ``path`` in a fresh kernel started in the notebook's folder and write the
    executed notebook to ``output``; ``strip`` drops volatile metadata first (for a
    notebook written over its tracked source); ``parameters`` are injected after the
    cell tagged ``parameters`` (see :func:`inject_parameters`). Setting ``stop`` (from
    another thread) ends the run early: see :class:`_Stopper`."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    notebook = nbformat.read(str(path), as_version=4)  # type: ignore[no-untyped-call, unused-ignore]
    if parameters:
        inject_parameters(notebook, parameters)
    code_cells = sum(1 for c in notebook.cells if c.cell_type == "code")
    folder = path.resolve().parent
    sockets = tempfile.TemporaryDirectory(prefix="durable-nb-")
    manager = _kernel_manager(sockets.name)
    client = NotebookClient(
        notebook,
        km=manager,
        timeout=timeout if timeout is not None else -1,
        resources={"metadata": {"path": str(folder)}},
    )
    echo = _Echo(client, out, code_cells, quiet, stop)
    client.on_cell_start = echo.start
    client.on_cell_executed = echo.executed
    if not quiet:
        print(f"durable-nb: running {path} in a kernel of {sys.executable}", file=out, flush=True)
    outcome = RunOutcome(cells=code_cells, written=output)
    stopper = _Stopper(stop, manager) if stop is not None else None
    try:
        client.execute(env=env, cwd=str(folder))
    except CellExecutionError as exc:
        outcome.failed_cell = echo.number
        outcome.error = _one_line(exc)
    except (DeadKernelError, asyncio.TimeoutError, TimeoutError) as exc:
        outcome.failed_cell = echo.number
        outcome.error = f"{type(exc).__name__}: {exc}"
    except _Stopped:
        outcome.failed_cell = echo.number
        outcome.error = "stopped before the next cell"
    finally:
        if stopper is not None:
            stopper.close()
            outcome.stopped = stop is not None and stop.is_set()
        if strip:
            strip_volatile(notebook)
        nbformat.write(notebook, str(output))  # type: ignore[no-untyped-call, unused-ignore]
        if manager.has_kernel:  # nbclient shuts down only kernels it made itself
            manager.shutdown_kernel(now=outcome.stopped)
        sockets.cleanup()
    return outcome


def _one_line(exc: Exception) -> str:
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = getattr(exc, "evalue", str(exc))
    return f"{ename}: {evalue}".strip()
