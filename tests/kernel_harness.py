"""A small driver for real Jupyter kernels, for end-to-end tests.

    with KernelSession(cwd=tmp_path, store=tmp_path / "store") as k:
        out = k.run("print(1 + 1)")              # stdout text; AssertionError on error
        cell = k.execute("1/0", allow_error=True)  # full CellResult (outputs, error)
        msg_id = k.run_async("await fan(200)")   # send without waiting
        cell = k.wait(msg_id, timeout=30)
        k.interrupt()                            # SIGINT, as the Interrupt button
        k.kill()                                 # SIGKILL, as a crash

The kernel is ipykernel's own ``python3`` spec, whose ``python`` argv entry
jupyter_client replaces with ``sys.executable``; the first cell of every session
checks that the kernel really runs this interpreter. Kernels are always shut down
on leaving the ``with`` block, even when the test fails.

The end of the file holds the helpers the real-kernel test files share: defining
cells, reading side-effect files, waiting, the store and the ``durable-nb`` CLI as
another process sees them.
"""

from __future__ import annotations

import ast
import os
import queue
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client.manager import KernelManager

from durable_nb import history
from durable_nb.store import DiskCacheStore

STORE_ENV = "DURABLE_NB_STORE"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_VALUE_MARK = "@@kernel_harness_value@@"


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


@dataclass
class CellResult:
    """Everything a cell produced: its execute_reply and its iopub outputs."""

    msg_id: str
    code: str
    reply: dict[str, Any] | None = None
    outputs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # For each output: when the kernel made it and when it arrived here (epoch seconds).
    times: list[tuple[float, float]] = field(default_factory=list)
    idle: bool = False

    @property
    def done(self) -> bool:
        return self.idle and self.reply is not None

    @property
    def status(self) -> str:
        return self.reply["status"] if self.reply is not None else "pending"

    @property
    def stdout(self) -> str:
        return "".join(
            c["text"] for t, c in self.outputs if t == "stream" and c["name"] == "stdout"
        )

    @property
    def stderr(self) -> str:
        return "".join(
            c["text"] for t, c in self.outputs if t == "stream" and c["name"] == "stderr"
        )

    @property
    def error(self) -> dict[str, Any] | None:
        """The ``error`` iopub content (ename, evalue, traceback), if the cell raised."""
        for msg_type, content in self.outputs:
            if msg_type == "error":
                return content
        if self.reply is not None and self.reply.get("status") == "error":
            return self.reply
        return None

    @property
    def traceback_text(self) -> str:
        error = self.error
        return strip_ansi("\n".join(error.get("traceback", []))) if error else ""

    @property
    def displays(self) -> list[dict[str, Any]]:
        """The ``data`` bundles of display_data and execute_result outputs."""
        return [c["data"] for t, c in self.outputs if t in ("display_data", "execute_result")]

    def widget_states(self) -> list[dict[str, Any]]:
        """The widget model states the cell sent (comm_open, then comm_msg updates)."""
        states = []
        for msg_type, content in self.outputs:
            if msg_type in ("comm_open", "comm_msg"):
                state = content.get("data", {}).get("state")
                if state:
                    states.append(state)
        return states

    def describe(self) -> str:
        parts = [f"cell:\n{self.code.strip()}", f"status: {self.status}"]
        error = self.error
        if error:
            parts.append(f"error: {error.get('ename')}: {error.get('evalue')}")
            parts.append("traceback:\n" + self.traceback_text)
        if self.stdout:
            parts.append("stdout:\n" + self.stdout)
        if self.stderr:
            parts.append("stderr:\n" + self.stderr)
        return "\n".join(parts)


class KernelDied(AssertionError):
    pass


class KernelSession:
    """One real ipykernel process, started in ``cwd`` with ``DURABLE_NB_STORE=store``."""

    def __init__(
        self,
        cwd: str | os.PathLike[str],
        store: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self.cwd = Path(cwd)
        self.store = Path(store) if store is not None else self.cwd / "store"
        self._extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.km: KernelManager | None = None
        self.kc: Any = None
        self.pid: int | None = None
        self._process: Any = None
        self._cells: dict[str, CellResult] = {}
        self._killed = False

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> KernelSession:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        env = os.environ.copy()
        env.update(self._extra_env)
        env[STORE_ENV] = str(self.store)
        env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        env.setdefault("JUPYTER_PLATFORM_DIRS", "1")
        env.pop("MPLBACKEND", None)
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(cwd=str(self.cwd), env=env)
        self._process = self.km.provisioner.process  # type: ignore[union-attr]
        self.pid = self._process.pid
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=self.startup_timeout)
        # Smoke cell: the kernel is this interpreter, in cwd, with the store variable.
        executable, cwd, pid, store = self.eval(
            "(__import__('sys').executable, __import__('os').getcwd(), "
            f"__import__('os').getpid(), __import__('os').environ.get({STORE_ENV!r}))",
            timeout=self.startup_timeout,
        )
        assert executable == sys.executable, (
            f"the kernel runs {executable}, not the test interpreter {sys.executable}"
        )
        assert Path(cwd).resolve() == self.cwd.resolve(), f"kernel cwd is {cwd}"
        assert pid == self.pid, f"kernel pid {pid} is not the launched process {self.pid}"
        assert store == str(self.store)

    def close(self) -> None:
        """Stop channels and the kernel process, whatever state they are in."""
        if self.kc is not None:
            try:
                self.kc.stop_channels()
            except Exception:
                pass
            self.kc = None
        km, self.km = self.km, None
        if km is None:
            return
        try:
            if self._killed or not km.is_alive():
                km.shutdown_kernel(now=True)
            else:
                km.shutdown_kernel(now=False)
        except Exception:
            try:
                km.shutdown_kernel(now=True)
            except Exception:
                pass
        finally:
            self._reap()

    def _reap(self) -> None:
        # Through the Popen object, which knows whether its child was already reaped
        # (a bare pid could have been reused by then).
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    def is_alive(self) -> bool:
        return self.km is not None and self.km.is_alive()

    def kill(self) -> None:
        """SIGKILL the kernel process (a crash: no cleanup code runs) and reap it."""
        assert self._process is not None, "the kernel was not started"
        self._killed = True
        self._process.send_signal(signal.SIGKILL)
        self._process.wait(timeout=10)

    def interrupt(self) -> None:
        """What the notebook's Interrupt button does (SIGINT for this kernel spec)."""
        assert self.km is not None
        self.km.interrupt_kernel()

    # ------------------------------------------------------------ cells

    def run_async(self, code: str, stop_on_error: bool = True) -> str:
        """Send a cell for execution and return its msg id at once. If it fails, the
        kernel aborts the cells queued behind it unless ``stop_on_error`` is False."""
        assert self.kc is not None, "the kernel is not running"
        msg_id: str = self.kc.execute(
            code, store_history=True, allow_stdin=False, stop_on_error=stop_on_error
        )
        self._cells[msg_id] = CellResult(msg_id, code)
        return msg_id

    def wait(self, msg_id: str, timeout: float = 60.0, allow_error: bool = True) -> CellResult:
        """Wait until the cell's reply and its last output arrived."""
        cell = self._cells[msg_id]
        deadline = time.monotonic() + timeout
        while not cell.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"cell did not finish within {timeout:g} s\n{cell.describe()}")
            self._pump(min(remaining, 0.05))
            if not cell.done and not self.is_alive():
                self._pump(0.05)
                if not cell.done:
                    raise KernelDied(f"the kernel died while running the cell\n{cell.describe()}")
        if not allow_error and cell.status != "ok":
            raise AssertionError(f"cell failed in the kernel\n{cell.describe()}")
        return cell

    def peek(self, msg_id: str) -> CellResult:
        """The cell as far as it got, after routing the messages already waiting."""
        self._pump(0)
        return self._cells[msg_id]

    def execute(self, code: str, timeout: float = 60.0, allow_error: bool = False) -> CellResult:
        """Run a cell and return everything it produced; AssertionError if it raised
        (unless ``allow_error``)."""
        return self.wait(self.run_async(code), timeout, allow_error=allow_error)

    def run(self, code: str, timeout: float = 60.0) -> str:
        """Run a cell; its stdout. A cell error becomes an AssertionError with the
        kernel's traceback."""
        return self.execute(code, timeout).stdout

    def eval(self, expression: str, timeout: float = 60.0) -> Any:
        """The value of a Python literal expression evaluated in the kernel."""
        out = self.run(f"print({_VALUE_MARK!r}, repr({expression}))", timeout)
        for line in reversed(out.splitlines()):
            if line.startswith(_VALUE_MARK):
                return ast.literal_eval(line[len(_VALUE_MARK) + 1 :])
        raise AssertionError(f"no value printed for {expression!r}; stdout was:\n{out}")

    def _pump(self, timeout: float) -> None:
        """Route waiting messages to their cells; block up to ``timeout`` for iopub."""
        kc = self.kc
        try:
            msg = kc.get_iopub_msg(timeout=timeout)
        except queue.Empty:
            msg = None
        while msg is not None:
            self._on_iopub(msg)
            try:
                msg = kc.get_iopub_msg(timeout=0)
            except queue.Empty:
                msg = None
        while True:
            try:
                reply = kc.get_shell_msg(timeout=0)
            except queue.Empty:
                break
            cell = self._cells.get(reply["parent_header"].get("msg_id"))
            if cell is not None and reply["msg_type"] == "execute_reply":
                cell.reply = reply["content"]

    def _on_iopub(self, msg: dict[str, Any]) -> None:
        cell = self._cells.get(msg["parent_header"].get("msg_id"))
        if cell is None:
            return
        msg_type = msg["msg_type"]
        content = msg["content"]
        if msg_type == "status":
            if content["execution_state"] == "idle":
                cell.idle = True
        elif msg_type in (
            "stream",
            "display_data",
            "update_display_data",
            "execute_result",
            "error",
            "comm_open",
            "comm_msg",
        ):
            cell.outputs.append((msg_type, content))
            sent = msg["header"].get("date")
            arrived = time.time()
            cell.times.append((sent.timestamp() if sent is not None else arrived, arrived))


# ---------------------------------------------------------------- widget comms
# (additions for tests that click ipywidgets from the frontend's side)


def widget_models(cell: CellResult, **match: Any) -> list[tuple[str, dict[str, Any]]]:
    """``(comm_id, state)`` of the widget models the cell opened whose state has every
    ``match`` item, e.g. ``widget_models(cell, description="Approve")``."""
    found = []
    for msg_type, content in cell.outputs:
        if msg_type != "comm_open":
            continue
        state = content.get("data", {}).get("state") or {}
        if all(state.get(key) == value for key, value in match.items()):
            found.append((content["comm_id"], state))
    return found


def send_comm_msg(k: KernelSession, comm_id: str, data: dict[str, Any]) -> None:
    """Send a ``comm_msg`` on the shell channel, as a frontend does for a widget."""
    assert k.kc is not None, "the kernel is not running"
    msg = k.kc.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
    k.kc.shell_channel.send(msg)


def click_button(k: KernelSession, comm_id: str) -> None:
    """What the frontend sends when an ipywidgets Button is clicked."""
    send_comm_msg(k, comm_id, {"method": "custom", "content": {"event": "click"}})


# ---------------------------------------------------------------- shared test helpers
# (what the real-kernel test files have in common)

CELL_TIMEOUT = 60.0  # generous for a loaded 2-core machine; cells normally take < 1 s


def define(k: KernelSession, *cells: str, timeout: float = CELL_TIMEOUT) -> None:
    """Run a test's definition cells in order, so a broken one fails the test at once."""
    for cell in cells:
        k.run(cell, timeout=timeout)


def fan_cell(activity: str, name: str = "fan") -> str:
    """The fan-out orchestrator ``name(ctx, n)`` most tests run: ``n`` calls, summed."""
    return f"""
%%orchestrator
def {name}(ctx, n):
    results = yield ctx.task_all([ctx.call_activity({activity}, i) for i in range(n)])
    return sum(results)
"""


def record_of(k: KernelSession, instance_id: str, timeout: float = CELL_TIMEOUT) -> dict[str, Any]:
    """The InstanceRecord of ``instance_id`` as the kernel's own store sees it (its counts)."""
    record = k.eval(
        f"durable_nb.get_runtime().store.get_instance({instance_id!r}).to_dict()",
        timeout=timeout,
    )
    assert isinstance(record, dict)
    return record


def complete_lines(path: Path) -> list[str]:
    """The lines of a side-effect file but a last one still being written (not a call yet)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return text[: text.rfind("\n") + 1].splitlines()


def read_indices(path: Path) -> list[int]:
    """The integers in a side-effect file, in file order: which calls ran, and how often."""
    return [int(line) for line in complete_lines(path)]


def wait_for_lines(
    k: KernelSession,
    msg_id: str,
    path: Path,
    count: int,
    timeout: float = CELL_TIMEOUT,
    pause: float = 0.005,
) -> None:
    """Wait for ``count`` lines in ``path``, to act mid-run; fail at once if the cell ends."""
    deadline = time.monotonic() + timeout
    while len(complete_lines(path)) < count:
        cell = k.peek(msg_id)
        if cell.done:
            raise AssertionError(
                f"the cell ended before {path.name} had {count} lines "
                f"({len(complete_lines(path))})\n{cell.describe()}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{path.name} had {len(complete_lines(path))} lines after {timeout:g} s, "
                f"not {count}\n{cell.describe()}"
            )
        time.sleep(pause)


def poll(predicate: Callable[[], bool], timeout: float, what: str, pause: float = 0.01) -> None:
    """Wait for what another process brings about, failing with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(pause)


@contextmanager
def opened(store: Path) -> Iterator[DiskCacheStore]:
    """The store as another process (this one) sees it, closed afterwards."""
    opened_store = DiskCacheStore(store)
    try:
        yield opened_store
    finally:
        opened_store.close()


def history_of(store: Path, instance_id: str) -> list[history.Event]:
    """The instance's history read by this process, not by the kernel that wrote it."""
    with opened(store) as s:
        return s.read_history(instance_id)


def durable_nb_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The ``durable-nb`` command line, in another process, as a user would run it."""
    script = Path(sys.executable).with_name("durable-nb")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "durable_nb.cli"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=60, check=False
    )
