"""Signals that stop runs outside a Jupyter kernel, so that the runs end as
``interrupted`` instead of staying ``running`` with nothing behind them.

* SIGTERM (``kill``, a job scheduler, a container stop): the live runs are cancelled and
  record ``interrupted``, then the signal is passed on: the process dies as SIGTERM's
  default would (exit status 143), or the handler the program installed itself runs.
* Ctrl-C while ``await orch(...)`` waits on a loop driven by ``run_until_complete``, as
  terminal IPython runs an ``await`` cell: Python's default handler would raise
  KeyboardInterrupt out of the loop and leave the run pending, a ghost that goes on
  whenever a later cell runs the loop. Instead the run is cancelled, as the interrupt
  button cancels it in a kernel. A second Ctrl-C while the run is stopping raises
  KeyboardInterrupt as usual.

A kernel handles its own signals (its interrupt already cancels the cell), and
``asyncio.run`` installs its own SIGINT handler; neither is touched.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal.getsignal, unconverted
import asyncio
import contextlib
import os
import signal
import sys
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any

_live: set[asyncio.Task[Any]] = set()  # runs started in this process, not yet ended
_stopping: set[asyncio.Task[Any]] = set()  # runs cancelled by SIGTERM, not yet ended
_sigterm: dict[str, Any] = {"installed": False, "previous": None, "signum": None, "pid": 0}


def _in_kernel() -> bool:
    from durable_nb.widgets import _in_kernel as in_kernel

    return in_kernel()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


# ------------------------------------------------------------------ SIGTERM


def watch(task: asyncio.Task[Any]) -> None:
    """Stop ``task`` cleanly on SIGTERM; installs the handler on the first run."""
    _install_sigterm()
    _live.add(task)
    task.add_done_callback(_ended)


def _install_sigterm() -> None:
    if _sigterm["installed"] or not _main_thread() or _in_kernel():
        return
    _sigterm["installed"] = True
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_IGN or previous is None:
        return  # ignored on purpose, or set outside Python: left alone
    _sigterm["previous"], _sigterm["pid"] = previous, os.getpid()
    signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame: types.FrameType | None) -> None:
    runs = {t for t in _live if not t.done() and t.get_loop().is_running()}
    if os.getpid() != _sigterm["pid"]:
        runs = set()  # a forked child: the runs are its parent's
    if _sigterm["signum"] is not None or not runs:
        _pass_on(signum, frame)  # a second SIGTERM, or nothing to stop: at once
        return
    _sigterm["signum"] = signum
    _stopping.update(runs)
    for task in runs:
        task.get_loop().call_soon_threadsafe(task.cancel)


def _ended(task: asyncio.Task[Any]) -> None:
    _live.discard(task)
    if task in _stopping:
        _stopping.discard(task)
        signum = _sigterm["signum"]
        if not _stopping and signum is not None:
            _pass_on(signum, None)  # every run recorded its end


def _pass_on(signum: int, frame: types.FrameType | None) -> None:
    _sigterm["signum"] = None
    previous = _sigterm["previous"]
    if callable(previous):
        previous(signum, frame)
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if not _main_thread():  # the handler cannot be reset from here
        os._exit(128 + signum)
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


# ------------------------------------------------------------------ Ctrl-C


class _CtrlC:
    """The runs awaited under Python's default SIGINT handler, replaced by ours."""

    tasks: set[asyncio.Task[Any]] = set()
    cancelled: set[asyncio.Task[Any]] = set()  # by Ctrl-C


def _on_sigint(signum: int, frame: types.FrameType | None) -> None:
    waiting = [t for t in _CtrlC.tasks if not t.done() and t not in _CtrlC.cancelled]
    if not waiting:
        raise KeyboardInterrupt
    for task in waiting:
        _CtrlC.cancelled.add(task)
        task.get_loop().call_soon_threadsafe(task.cancel)


def _sigint_handler() -> object:
    """The SIGINT handler as installed. ``signal.getsignal`` tries to turn it into a
    ``Handlers`` member first, and that failure formats the handler's repr: under
    ``asyncio.run`` (3.11+) a partial holding the main task, whose repr costs 50-100 µs,
    paid on every ``orch.run()``. The identity checks here need no conversion."""
    return _signal.getsignal(signal.SIGINT)


@contextlib.contextmanager
def cancel_on_sigint(task: asyncio.Task[Any]) -> Iterator[Callable[[], bool]]:
    """While the caller awaits ``task``, Ctrl-C cancels it (where Python's default
    handler is in place, outside a kernel). Yields whether Ctrl-C cancelled it."""
    armed = False
    if _main_thread() and not _in_kernel():
        current = _sigint_handler()
        if current is signal.default_int_handler or current is _on_sigint:
            armed = True
            if not _CtrlC.tasks:
                signal.signal(signal.SIGINT, _on_sigint)
            _CtrlC.tasks.add(task)
    try:
        yield lambda: task in _CtrlC.cancelled
    finally:
        if armed:
            _CtrlC.tasks.discard(task)
            _CtrlC.cancelled.discard(task)
            if not _CtrlC.tasks and _sigint_handler() is _on_sigint:
                signal.signal(signal.SIGINT, signal.default_int_handler)
