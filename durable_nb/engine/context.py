"""The ``ctx`` object an orchestrator receives: the only things it may wait on,
and deterministic stand-ins for the clock and random ids.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from durable_nb.engine.tasks import Task, WhenAll, WhenAny

if TYPE_CHECKING:
    from durable_nb.engine.replay import OrchestrationEngine


class OrchestrationContext:
    """Passed as the first argument of every orchestrator."""

    __slots__ = ("_engine",)

    def __init__(self, engine: OrchestrationEngine) -> None:
        self._engine = engine

    @property
    def instance_id(self) -> str:
        return self._engine.instance_id

    @property
    def is_replaying(self) -> bool:
        """True while the code runs on results recorded by an earlier run.

        Use it to keep side effects in the orchestrator (prints, logs) from
        repeating on every rerun.
        """
        return self._engine.is_replaying

    @property
    def current_utc_datetime(self) -> _dt.datetime:
        """A clock that is the same on every replay: the instance's creation time,
        advanced to the completion time of each result the orchestrator receives."""
        return _dt.datetime.fromtimestamp(self._engine.now, tz=_dt.timezone.utc)

    def call_activity(self, activity: Any, /, *args: Any, **kwargs: Any) -> Task:
        """Schedule an activity (an activity, a registered name or a function).

        Nothing waits until the task is yielded or awaited, so build a list of
        calls and wait on all of them with :meth:`task_all` to fan out.
        """
        return self._engine.call_activity(activity, args, kwargs)

    def task_all(self, tasks: Iterable[Task], /) -> Task:
        """A task that completes with the list of all results, in order."""
        return WhenAll(self._engine.check_tasks(tasks, "ctx.task_all"))

    def task_any(self, tasks: Iterable[Task], /) -> Task:
        """A task that completes with the first of ``tasks`` to finish (the task itself)."""
        return WhenAny(self._engine.check_tasks(tasks, "ctx.task_any"))

    def new_uuid(self) -> str:
        """A UUID that is the same on every replay of this instance."""
        return self._engine.new_uuid()

    def set_custom_status(self, value: Any) -> None:
        """Publish a small value (a dict, a string) shown in status and ``%durable list``."""
        self._engine.set_custom_status(value)

    def __repr__(self) -> str:
        return f"<OrchestrationContext {self.instance_id}>"
