"""The parts of a run that carry out what the engine asks for, besides activity calls:
durable timers and child orchestrations.

Every part has the same small interface as the activity :class:`~durable_nb.dispatch.
Dispatcher`: ``start(call)`` begins one piece of work, ``stop()`` ends them all when
the run ends, and what comes of the work is *posted* to the run as a history event
(the run writes it, then hands it to the engine). A part never writes history itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from durable_nb import history
from durable_nb.engine import Outcome, SubOrchestrationCall, TimerCall
from durable_nb.errors import SubOrchestrationEndedError, add_note
from durable_nb.history import Status
from durable_nb.progress import Progress

Post = Callable[[history.Event], None]
C_contra = TypeVar("C_contra", contravariant=True)


class Part(Protocol[C_contra]):
    """Carries out one kind of the engine's actions and posts what comes of them."""

    def start(self, call: C_contra) -> None: ...

    def stop(self) -> None: ...


class DurableTimers:
    """Arms durable timers on the loop; a timer that fires posts ``TimerFired``. The fire
    time is in history already (``TimerCreated``), so after a restart only what is left
    of it is waited."""

    def __init__(self, post: Post, progress: Progress) -> None:
        self._post = post
        self._progress = progress
        self._handles: dict[str, asyncio.TimerHandle] = {}

    def start(self, call: TimerCall) -> None:
        loop = asyncio.get_running_loop()
        delay = max(0.0, call.fire_at - time.time())
        self._handles[call.key] = loop.call_later(delay, self._fire, call.key)
        self._progress.timer_armed(call.key, call.fire_at)

    def _fire(self, key: str) -> None:
        self._handles.pop(key, None)
        self._progress.timer_ended(key)
        self._post(history.TimerFired(time.time(), key))

    def stop(self) -> None:
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()
        self._progress.timers_stopped()


# Starts a child's run; its future ends with the run (or with the reason it could not start).
RunChild = Callable[[SubOrchestrationCall[Any]], "asyncio.Future[Outcome]"]


class ChildRuns:
    """Runs sub-orchestrations as instances of their own; each one's end posts
    ``SubOrchestrationCompleted`` or ``SubOrchestrationFailed``."""

    def __init__(self, run_child: RunChild, post: Post, parent_id: str) -> None:
        self._run_child = run_child
        self._post = post
        self._parent_id = parent_id
        self._tasks: set[asyncio.Future[Outcome]] = set()
        self._stopped = False

    def start(self, call: SubOrchestrationCall[Any]) -> None:
        task = self._run_child(call)
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._ended(call, done))

    def _ended(self, call: SubOrchestrationCall[Any], task: asyncio.Future[Outcome]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or self._stopped:
            return
        error = task.exception()
        outcome = task.result() if error is None else None
        if outcome is not None and outcome.status == Status.COMPLETED:
            self._post(
                history.SubOrchestrationCompleted(
                    time.time(), call.key, call.instance_id, outcome.output
                )
            )
            return
        if error is None:
            assert outcome is not None
            error = outcome.failure or SubOrchestrationEndedError(
                f"sub-orchestration {call.instance_id!r} of instance {self._parent_id!r} "
                f"ended as {outcome.status}: {outcome.message}",
                instance_id=call.instance_id,
                status=outcome.status.value,
            )
        add_note(error, f"durable_nb: in sub-orchestration {call.instance_id}")
        self._post(
            history.SubOrchestrationFailed(
                time.time(), call.key, call.instance_id, type(error).__name__, str(error), error
            )
        )

    def stop(self) -> None:
        self._stopped = True
        for task in list(self._tasks):
            task.cancel()
