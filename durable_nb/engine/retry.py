"""The durable retry of a sub-orchestration under a :class:`RetryOptions` policy
(``ctx.call_sub_orchestrator_with_retry``): :class:`RetryingTask`.

A sub-orchestration retried under a policy is driven here, in the engine, from history
alone: each failed attempt is the ``SubOrchestrationFailed`` the parent's history
already records, and each wait before the next attempt is a durable timer keyed
``retry:<call key>#<attempt>`` (``TimerCreated``/``TimerFired``). A rerun of the parent
after its kernel was killed counts the failures recorded since the last run that
ended (a run that was interrupted does not end the count) and re-arms the timer for
what is left of it, so the child never runs more times than the policy allows. A run
that ended (failed, terminated, completed) resets the count: a rerun of a failed
instance retries its failures afresh, as it does for activities.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from durable_nb import history
from durable_nb.engine.retry_options import RetryOptions
from durable_nb.engine.tasks import SubOrchestrationCall, SubOrchestrationTask, Task
from durable_nb.errors import SubOrchestrationEndedError

Failure = tuple[float, BaseException, int]  # when, the error, position in history
# An activity call's retries so far: attempts that failed, when the next one is due,
# and when its first attempt began (what a retry timeout counts from).
ResumeAt = tuple[int, float, float]


class RecordedRetries:
    """Activity calls whose attempts failed and were to be retried, in the runs since the
    last one that ended (read from history by ``load``): a kernel killed during a
    backoff goes on with the next attempt when it is due, not with the first."""

    __slots__ = ("by_key",)

    def __init__(self) -> None:
        self.by_key: dict[str, ResumeAt] = {}

    def add(self, event: history.TaskRetried) -> None:
        before = self.by_key.get(event.key)
        first = before[2] if before else event.started or event.timestamp
        self.by_key[event.key] = (event.attempt, event.timestamp + event.delay, first)

    def run_ended(self, event: history.ExecutionFinished) -> None:
        if event.status != history.Status.INTERRUPTED.value:
            self.by_key.clear()  # a rerun of a failed instance retries afresh


class RecordedFailures:
    """Sub-orchestration failures of the runs since the last one that ended, by call key
    (read from history by ``load``): a retry count that survives a killed kernel."""

    __slots__ = ("by_key",)

    def __init__(self) -> None:
        self.by_key: dict[str, list[Failure]] = {}

    def add(self, event: history.SubOrchestrationFailed, position: int, instance_id: str) -> None:
        error = event.error or SubOrchestrationEndedError(
            f"sub-orchestration {event.instance_id!r} failed: {event.error_type}: {event.message}",
            instance_id=event.instance_id,
            status="failed",
        )
        self.by_key.setdefault(event.key, []).append((event.timestamp, error, position))

    def run_ended(self, event: history.ExecutionFinished) -> None:
        if event.status != history.Status.INTERRUPTED.value:
            self.by_key.clear()


Schedule = Callable[[SubOrchestrationCall[Any]], SubOrchestrationTask]
RetryTimer = Callable[[str, float], Task]


class RetryingTask(Task):
    """A sub-orchestration call under a :class:`RetryOptions` policy: completes with the
    first attempt that completes; fails with the last failure once the policy gives up.
    Attempts already recorded in history are taken from it, then attempts run live."""

    __slots__ = (
        "_attempt",
        "_first",
        "_recorded",
        "_retry",
        "_schedule",
        "_timer",
        "_timers",
        "call",
    )

    def __init__(
        self,
        call: SubOrchestrationCall[Any],
        options: RetryOptions,
        first_started: float,
        recorded: list[Failure],
        schedule: Schedule,
        timer: RetryTimer,
    ) -> None:
        super().__init__()
        self.call = call
        self._retry = options
        self._first = first_started
        self._recorded = recorded
        self._schedule = schedule
        self._timers = timer
        self._timer: Task | None = None
        self._attempt = 1
        self._go()

    @property
    def attempt(self) -> int:
        """The attempt running or next to run (1 is the first)."""
        return self._attempt

    def _go(self) -> None:
        """Take the attempts history recorded, then start the next one live."""
        recorded = self._recorded
        while self._attempt <= len(recorded):
            at, error, order = recorded[self._attempt - 1]
            if not self._retry_after(error, at, order):
                return
        attempt = self.call if self._attempt == 1 else replace(self.call, attempt=self._attempt)
        self._schedule(attempt)._listen(self)

    def _retry_after(self, error: BaseException, at: float, order: int) -> bool:
        """After a failure at ``at``: True when the next attempt may start now; False when
        the task failed (the policy gives up) or waits on its retry timer."""
        if not self._retry.allows(self._attempt, self._first, at):
            self._fail(error, at, order)
            return False
        fire_at = at + self._retry.delay_before(self._attempt + 1)
        timer = self._timers(f"retry:{self.call.key}#{self._attempt}", fire_at)
        self._attempt += 1
        if timer.is_done:
            return True
        self._timer = timer
        timer._listen(self)
        return False

    def _child_finished(self, child: Task) -> None:
        if child is self._timer:
            self._timer = None
            self._go()
        elif child.is_failed:
            assert child._error is not None
            if self._retry_after(child._error, child.finished_at, child.order):
                self._go()
        else:
            self._complete(child._value, child.finished_at, child.replayed, child.order)

    def __repr__(self) -> str:
        return f"<RetryingTask {self.call.instance_id} attempt {self._attempt}>"
