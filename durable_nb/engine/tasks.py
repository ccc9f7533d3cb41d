"""Durable tasks: what an orchestrator yields or awaits.

A task is pending until the engine completes or fails it. Composite tasks
(:class:`WhenAll`, :class:`WhenAny`) listen to their children. Tasks know nothing
of executors or stores; the engine drives them from history events.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic

from durable_nb.engine.protocols import A, O
from durable_nb.engine.retry_options import RetryOptions
from durable_nb.errors import OrchestratorError

_PENDING, _DONE, _FAILED = 0, 1, 2


class Task:
    """A value the orchestrator waits for; ``yield task`` or ``await task``."""

    __slots__ = (
        "_error",
        "_listeners",
        "_state",
        "_value",
        "finished_at",
        "order",
        "replayed",
    )

    def __init__(self) -> None:
        self._state = _PENDING
        self._value: Any = None
        self._error: BaseException | None = None
        self._listeners: list[Task] | None = None
        # True when the outcome came from a previous run's history (replay).
        self.replayed = False
        self.finished_at = 0.0
        # Position in the instance's history of the event that finished the task. A race
        # (task_any) is decided by it, so replay picks the winner that history recorded
        # first rather than whichever child comes first in the list.
        self.order = 0

    def __await__(self) -> Generator[Task, Any, Any]:
        return (yield self)

    @property
    def is_done(self) -> bool:
        """True once the task has a result or an error."""
        return self._state != _PENDING

    @property
    def is_failed(self) -> bool:
        return self._state == _FAILED

    @property
    def result(self) -> Any:
        """The result; raises the task's error if it failed, or if it is still pending."""
        if self._state == _FAILED:
            assert self._error is not None
            raise self._error
        if self._state == _PENDING:
            raise OrchestratorError(
                f"{self!r} has not finished yet; yield or await it before reading its result"
            )
        return self._value

    @property
    def exception(self) -> BaseException | None:
        return self._error

    def _listen(self, parent: Task) -> None:
        if self._listeners is None:
            self._listeners = []
        self._listeners.append(parent)

    def _complete(self, value: Any, at: float, replayed: bool, order: int) -> None:
        if self._state != _PENDING:
            return
        self._state, self._value = _DONE, value
        self.finished_at, self.replayed, self.order = at, replayed, order
        self._notify()

    def _replayed(self, value: Any, at: float, order: int) -> None:
        """Complete a task just made, from history: no listener can be waiting yet."""
        self._state, self._value = _DONE, value
        self.finished_at, self.replayed, self.order = at, True, order

    def _fail(self, error: BaseException, at: float, order: int) -> None:
        if self._state != _PENDING:
            return
        self._state, self._error = _FAILED, error
        self.finished_at, self.order = at, order
        self._notify()

    def _notify(self) -> None:
        if self._listeners:
            listeners, self._listeners = self._listeners, None
            for parent in listeners:
                parent._child_finished(self)

    def _child_finished(self, child: Task) -> None:  # pragma: no cover - composites override
        raise NotImplementedError


# The calls below are values, never changed once made; not frozen dataclasses, whose
# __init__ costs 5x a plain one (see durable_nb.history.Event).
@dataclass(slots=True, unsafe_hash=True)
class ActivityCall(Generic[A]):
    """One scheduled activity invocation, as the runtime needs to execute it."""

    key: str
    activity: A
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    position: int
    # ctx.call_activity_with_retry's policy, used instead of the activity's own; not
    # part of the key (the same call under another policy is the same call).
    retry: RetryOptions | None = field(default=None, compare=False)
    # Attempts that already failed in a run cut short (retry.py's ResumeAt): the next is
    # number done + 1, due at the recorded time. None: a first attempt.
    resume: tuple[int, float, float] | None = field(default=None, compare=False)


class ActivityTask(Task):
    """The pending result of one ``ctx.call_activity``."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        # Task.__init__'s fields set here: one of these per call, a million in a fan-out.
        self._state, self._value, self._error, self._listeners = _PENDING, None, None, None
        self.replayed, self.finished_at, self.order = False, 0.0, 0
        self.key = key  # the call's; its ActivityCall is made only if it is scheduled

    def __repr__(self) -> str:
        return f"<ActivityTask {self.key}>"


@dataclass(slots=True, unsafe_hash=True)
class TimerCall:
    """A durable timer to arm: fire at ``fire_at`` (epoch seconds)."""

    key: str
    fire_at: float
    new: bool  # False when the history already recorded its creation


class TimerTask(Task):
    """Completes (with None) when its durable timer fires; the clock moves to its fire time."""

    __slots__ = ("timer",)

    def __init__(self, timer: TimerCall) -> None:
        super().__init__()
        self.timer = timer

    def __repr__(self) -> str:
        return f"<TimerTask {self.timer.key} at {self.timer.fire_at:.3f}>"


class EventTask(Task):
    """Completes with the value of an external event raised under ``name``."""

    __slots__ = ("fire_at", "name", "timeout", "timer_key")

    def __init__(self, name: str, timer_key: str | None) -> None:
        super().__init__()
        self.name = name
        self.timer_key = timer_key
        self.timeout: Any = None
        self.fire_at = 0.0  # when the timeout fires, if there is one

    def __repr__(self) -> str:
        return f"<EventTask {self.name!r}>"


@dataclass(slots=True, unsafe_hash=True)
class SubOrchestrationCall(Generic[O]):
    """A child orchestration to run as its own instance."""

    key: str
    orchestrator: O
    arguments: dict[str, Any]
    instance_id: str
    position: int
    attempt: int = field(default=1, compare=False)  # > 1: a retry (retry.py's RetryingTask)


class SubOrchestrationTask(Task):
    """The pending output of one ``ctx.call_sub_orchestrator``."""

    __slots__ = ("call",)

    def __init__(self, call: SubOrchestrationCall[Any]) -> None:
        super().__init__()
        self.call = call

    def __repr__(self) -> str:
        return f"<SubOrchestrationTask {self.call.instance_id}>"


class WhenAll(Task):
    """Completes with the list of child results; fails as soon as one child fails."""

    __slots__ = ("_remaining", "children")

    def __init__(self, children: Sequence[Task]) -> None:
        super().__init__()
        self.children = list(children)
        self._remaining = 0
        for child in self.children:
            if not child.is_done:
                self._remaining += 1
                child._listen(self)
            elif child.is_failed:
                assert child._error is not None
                self._fail(child._error, child.finished_at, child.order)
                return
        if self._remaining == 0:
            self._finish()

    def _child_finished(self, child: Task) -> None:
        if child.is_failed:
            assert child._error is not None
            self._fail(child._error, child.finished_at, child.order)
            return
        self._remaining -= 1
        if self._remaining == 0:
            self._finish()

    def _finish(self) -> None:
        children = self.children
        at = max((c.finished_at for c in children), default=0.0)
        order = max((c.order for c in children), default=0)
        replayed = all(c.replayed for c in children)
        self._complete([c._value for c in children], at, replayed, order)


class WhenAny(Task):
    """Completes with the first child to finish (successfully or not).

    "First" means first in history, so a replay hands back the same winner as the
    live run even when several children are already done when the race is built.
    With no children it is done at once, with None, as in Durable Functions' Python SDK.
    """

    __slots__ = ("children",)

    def __init__(self, children: Sequence[Task]) -> None:
        super().__init__()
        self.children = list(children)
        if not self.children:
            self._state, self.replayed = _DONE, True
            return
        done = [child for child in self.children if child.is_done]
        if done:
            self._child_finished(min(done, key=_history_order))
            return
        for child in self.children:
            child._listen(self)

    def _child_finished(self, child: Task) -> None:
        self._complete(child, child.finished_at, child.replayed, child.order)


def _history_order(task: Task) -> int:
    return task.order
