"""Signals outside a kernel end runs as ``interrupted``: SIGTERM to a script, Ctrl-C in
terminal IPython (driven for real under a pseudo-terminal). Real processes, real store."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from durable_nb.store import DiskCacheStore

FLOWS = """
import os, sys, time
import durable_nb as dn

dn.configure(store=os.environ["DN_STORE"], progress="none")
MARKS = os.environ["DN_MARKS"]


@dn.activity
def step(i):
    with open(MARKS, "a") as f:
        f.write(f"{i}\\n")
    time.sleep(float(os.environ.get("DN_SLEEP", "2")))
    return i * 10


@dn.orchestrator
def slow(ctx):
    a = yield ctx.call_activity(step, 1)
    b = yield ctx.call_activity(step, 2)
    return f"DONE-{a + b}"
"""

SCRIPT = """
import signal, sys
from flows import slow

if sys.argv[1] == "handler":
    def own(signum, frame):
        open("own_handler_ran", "w").close()
        sys.exit(3)
    signal.signal(signal.SIGTERM, own)
print(slow.instance_id_for(), flush=True)
print(slow.run())
"""


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def status_of(store: Path, instance_id: str) -> str:
    opened = DiskCacheStore(store)
    try:
        record = opened.get_instance(instance_id)
    finally:
        opened.close()
    assert record is not None
    return record.status


def flows_env(tmp_path: Path, sleep: float) -> dict[str, str]:
    (tmp_path / "flows.py").write_text(FLOWS)
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    return dict(
        os.environ,
        DN_STORE=str(tmp_path / "store"),
        DN_MARKS=str(tmp_path / "marks"),
        DN_SLEEP=str(sleep),
        PYTHONPATH=path,
    )


@pytest.mark.parametrize("handler", ["default", "handler"])
def test_sigterm_stops_a_script_and_marks_its_run_interrupted(tmp_path: Path, handler: str) -> None:
    (tmp_path / "script.py").write_text(SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, "script.py", handler],
        cwd=tmp_path,
        # the script's own handler exits as usual, waiting for the activity's thread
        env=flows_env(tmp_path, sleep=30 if handler == "default" else 3),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for((tmp_path / "marks").exists, 60, "the first activity to start")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    instance_id = out.splitlines()[0]
    assert status_of(tmp_path / "store", instance_id) == "interrupted", err
    if handler == "default":
        assert proc.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM), err
    else:  # the script's own handler ran once the run had recorded its end
        assert proc.returncode == 3, err
        assert (tmp_path / "own_handler_ran").exists()


class Terminal:
    """Terminal IPython under a pseudo-terminal, as a person at a prompt runs it."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        argv = [sys.executable, "-m", "IPython", "--simple-prompt", "--no-banner"]
        argv += ["--colors=NoColor", "--HistoryManager.enabled=False"]
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env
        )
        os.close(slave)
        self.master = master
        self.chunks: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            if not data:
                return
            self.chunks.append(data.decode(errors="replace"))

    @property
    def output(self) -> str:
        return "".join(self.chunks)

    def send(self, line: str) -> int:
        """Type a line; returns where the output stood before it."""
        mark = len(self.output)
        os.write(self.master, (line + "\n").encode())
        return mark

    def wait_for(self, text: str, since: int = 0, timeout: float = 60) -> str:
        wait_for(lambda: text in self.output[since:], timeout, repr(text) + self.output)
        return self.output[since:]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        os.close(self.master)


@pytest.mark.kernel
def test_ctrl_c_in_terminal_ipython_stops_the_run_with_no_ghost(tmp_path: Path) -> None:
    term = Terminal(tmp_path, flows_env(tmp_path, sleep=2))
    try:
        term.send("%load_ext durable_nb")
        term.send("from flows import slow; import asyncio")
        mark = term.send("print('ID', slow.instance_id_for())")
        instance_id = term.wait_for("ID slow-", mark).split("ID ")[-1].split()[0]
        mark = term.send("r = await slow()")
        wait_for((tmp_path / "marks").exists, 60, "the first activity to start")
        term.proc.send_signal(signal.SIGINT)
        shown = term.wait_for("Run it again to resume.", mark)
        assert f"KeyboardInterrupt: durable_nb: {instance_id} was interrupted" in shown
        assert "base_events.py" not in shown  # no raw asyncio traceback
        assert status_of(tmp_path / "store", instance_id) == "interrupted"

        # The run is over: a later cell that runs the loop shows nothing of it.
        mark = term.send("await asyncio.sleep(2.5); print('slept')")
        after = term.wait_for("slept", mark)
        assert "DONE" not in after and "Traceback" not in after, after
        time.sleep(0.5)
        assert status_of(tmp_path / "store", instance_id) == "interrupted"

        mark = term.send("print('GOT', await slow())")
        assert "GOT DONE-30" in term.wait_for("GOT ", mark)
        assert status_of(tmp_path / "store", instance_id) == "completed"
        assert (tmp_path / "marks").read_text().split() == ["1", "2"]  # each ran once
    finally:
        term.close()


def test_ctrl_c_is_taken_over_only_from_pythons_default_handler() -> None:
    """Under the default handler a run's Ctrl-C is ours while it is awaited, and the
    default comes back after; under asyncio.run's own handler (3.11+), nothing is
    touched: Ctrl-C stays asyncio's, which cancels the main task."""
    import asyncio

    from durable_nb import interrupts

    async def awaited_under_ours() -> tuple[object, object]:
        task = asyncio.ensure_future(asyncio.sleep(0))
        with interrupts.cancel_on_sigint(task):
            during = signal.getsignal(signal.SIGINT)
            await task
        return during, signal.getsignal(signal.SIGINT)

    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    loop = asyncio.new_event_loop()
    try:  # a loop driven by run_until_complete, as terminal IPython drives an await cell
        during, after = loop.run_until_complete(awaited_under_ours())
    finally:
        loop.close()
    assert during is interrupts._on_sigint and after is signal.default_int_handler

    if sys.version_info >= (3, 11):  # asyncio.Runner installs a handler of its own
        # The Runner itself, not asyncio.run: another test may have let nest_asyncio2
        # replace asyncio.run with a function that installs no handler.
        with asyncio.Runner() as runner:
            runner_during, _ = runner.run(awaited_under_ours())
        assert runner_during not in (interrupts._on_sigint, signal.default_int_handler)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert not interrupts._CtrlC.tasks
