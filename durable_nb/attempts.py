"""One try of one activity call, as the dispatcher (dispatch.py) carries it out: the
call, its number, where it runs (its handle), its timer and concurrency slot, and the
times history records of it."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Protocol

from durable_nb.executors import SubmitWindow
from durable_nb.resources import SlotLimit
from durable_nb.threads import ThreadHandle

if TYPE_CHECKING:
    from durable_nb.definitions import ScheduledCall


class AttemptOwner(Protocol):
    """Who is told, on the worker thread or the loop, that an attempt's work ended."""

    def _thread_done(self, attempt: Attempt, future: ThreadHandle) -> None: ...

    def _task_done(self, attempt: Attempt, task: asyncio.Task[Any]) -> None: ...


class Attempt:
    """One try of one call; finishes exactly once."""

    __slots__ = (
        "call",
        "finished",
        "first_started",
        "handle",
        "kept",
        "limiter",
        "number",
        "owner",
        "started",
        "timer",
        "window",
    )

    def __init__(
        self,
        owner: AttemptOwner,
        call: ScheduledCall,
        number: int,
        first_started: float,
        limiter: SlotLimit | None,
    ) -> None:
        self.owner = owner
        self.call = call
        self.number = number
        self.first_started = first_started  # when the call's first attempt was asked for
        self.limiter = limiter
        self.handle: ThreadHandle | asyncio.Task[Any] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.window: SubmitWindow[Attempt] | None = None  # submitted through it (not adopted)
        self.finished = False  # outcome delivered, or slot given back
        self.kept = False  # result stored after the run ended
        self.started: float | None = None  # when handed to its executor (or the loop)

    def began(self, handle: object = None) -> float | None:
        """When it began to run: the default pool's thread says so; others, when they
        were given the attempt (an adopted thread of an earlier run: unknown). ``handle``:
        its thread's, once the attempt let go of it (a result kept after the run)."""
        return getattr(handle or self.handle, "started_at", None) or self.started

    def ended(self) -> float:
        """When it ended: the default pool's thread says so, else now (the loop took
        the outcome; with threads busy, later than the call really ended)."""
        return getattr(self.handle, "ended_at", None) or time.time()

    def thread_done(self, future: ThreadHandle) -> None:
        """The executor's done callback (a bound method: no partial per attempt)."""
        self.owner._thread_done(self, future)

    def task_done(self, task: asyncio.Task[Any]) -> None:
        self.owner._task_done(self, task)
