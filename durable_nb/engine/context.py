"""The ``ctx`` object an orchestrator receives: the only things it may wait on,
and deterministic stand-ins for the clock and random ids.
"""

from __future__ import annotations

import datetime as _dt
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from durable_nb.engine.retry_options import check_retry_options
from durable_nb.engine.tasks import Task, WhenAll, WhenAny
from durable_nb.errors import OrchestratorError

if TYPE_CHECKING:
    from durable_nb.engine.replay import OrchestrationEngine

_UUID_NAMESPACE = uuid.UUID("5f6c2a6e-5d0b-4c52-9f0e-6a1d2b7c9e31")

# The input of an orchestrator that takes only the context (Durable Functions' style,
# read with ctx.get_input()), as it is kept among the bound arguments: a name no
# parameter can have, left out when the orchestrator is called.
CLIENT_INPUT = "<input>"


def parameters(arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments an orchestrator is called with (its client input left out)."""
    if CLIENT_INPUT in arguments:
        return {k: v for k, v in arguments.items() if k != CLIENT_INPUT}
    return arguments


class OrchestrationContext:
    """Passed as the first argument of every orchestrator."""

    __slots__ = ("_engine", "_uuids")

    def __init__(self, engine: OrchestrationEngine[Any, Any]) -> None:
        self._engine = engine
        self._uuids = 0  # one context per run: ids count from the run's start

    @property
    def instance_id(self) -> str:
        return self._engine.instance_id

    @property
    def parent_instance_id(self) -> str | None:
        """The id of the instance that started this one as a sub-orchestration; None
        for an instance started by a client (``await orch(...)``, ``run``, ``start``)."""
        return self._engine.parent_instance_id

    def get_input(self) -> Any:
        """The orchestrator's input, for code written in Durable Functions' style.

        An orchestrator that takes only ``ctx`` (and calls this) gets the one value it
        was started with (``orch.run(value)``, ``ctx.call_sub_orchestrator(orch, value)``),
        or None; one that takes parameters gets the value of its only parameter, or a
        dict of them by name when it has several.
        """
        arguments = self._engine.arguments
        if CLIENT_INPUT in arguments:
            return arguments[CLIENT_INPUT]
        if len(arguments) == 1:
            return next(iter(arguments.values()))
        return dict(arguments) if arguments else None

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

    def call_activity_with_retry(
        self, activity: Any, retry_options: Any, /, *args: Any, **kwargs: Any
    ) -> Task:
        """Schedule an activity with a retry policy of this call (a
        :class:`~durable_nb.RetryOptions`) instead of the activity's own.

        The policy sets how many attempts and the waits between them; which exceptions
        are retried stays the activity's (``retry_on``, ``no_retry_on``). The call key
        does not include the policy: a checkpoint made under another policy is replayed.
        """
        where = "ctx.call_activity_with_retry"
        retry = check_retry_options(retry_options, where)
        return self._engine.call_activity(activity, args, kwargs, retry)

    def call_sub_orchestrator(
        self, orchestrator: Any, /, *args: Any, instance_id: str | None = None, **kwargs: Any
    ) -> Task:
        """Run another orchestrator as a child instance with its own history.

        Its output is replayed like an activity result; its failure is raised at the
        yield like an activity failure. ``instance_id`` defaults to this instance's id
        plus the child's name and a digest of its input.
        """
        return self._engine.call_sub_orchestrator(orchestrator, args, kwargs, instance_id)

    def call_sub_orchestrator_with_retry(
        self,
        orchestrator: Any,
        retry_options: Any,
        /,
        *args: Any,
        instance_id: str | None = None,
        **kwargs: Any,
    ) -> Task:
        """Run a child instance; when it fails, run it again (its successes replayed,
        as a rewind does) after the waits of ``retry_options`` (a
        :class:`~durable_nb.RetryOptions`), until it completes or the policy gives up.

        The count and the waits are durable: a kernel killed during a wait goes on
        where it was when the instance is run again.
        """
        retry = check_retry_options(retry_options, "ctx.call_sub_orchestrator_with_retry")
        return self._engine.call_sub_orchestrator(orchestrator, args, kwargs, instance_id, retry)

    def create_timer(self, fire_at: Any, /) -> Task:
        """A durable timer: seconds, a timedelta, or an aware datetime.

        Its fire time is checkpointed, so after a kernel restart only the remaining
        time is waited. Never use time.sleep or asyncio.sleep in an orchestrator.
        """
        return self._engine.create_timer(fire_at)

    def wait_for_external_event(self, name: str, /, timeout: Any = None) -> Task:
        """Wait for an event raised to this instance under ``name``.

        Events are kept in the store, so one raised before the wait, or while no
        kernel runs, is not lost. With ``timeout`` (seconds or a timedelta) the wait
        raises ``EventTimeoutError`` (a ``TimeoutError``) when it expires.
        """
        if not isinstance(name, str) or not name:
            raise OrchestratorError(
                f"orchestrator {self._engine.name!r}: the event name must be a non-empty "
                f"string, got {name!r}",
                orchestrator=self._engine.name,
                instance_id=self.instance_id,
            )
        return self._engine.wait_for_event(name, timeout)

    def call_entity(
        self, entity_id: Any, operation_name: str, operation_input: Any = None, /
    ) -> Task:
        """Run ``operation_name`` on the durable entity ``entity_id`` (an
        :class:`~durable_nb.EntityId`) with ``operation_input``, and wait for its result.

        Operations on one entity run one at a time, in the order they arrived, each
        exactly once; an operation that raises leaves the state as it was and raises
        here. The result is recorded: a rerun replays it without calling again."""
        return self._engine.call_entity(entity_id, operation_name, operation_input)

    def signal_entity(
        self, entity_id: Any, operation_name: str, operation_input: Any = None, /
    ) -> Task:
        """Send ``operation_name`` to the durable entity ``entity_id`` without waiting.

        The message is queued with the step's checkpoint and applied exactly once, even
        if the kernel dies right after; a rerun does not send it again. Returns a task
        that is done already (yielding it, as Durable Functions' code may, goes on)."""
        return self._engine.signal_entity(entity_id, operation_name, operation_input)

    def lock_entities(self, *entity_ids: Any) -> Task:
        """A critical section: wait until this instance holds the lock of every entity
        given; until it lets go, only its own operations run on them. Use it as
        ``with (yield ctx.lock_entities(a, b)):`` (``with await ...`` in an ``async
        def``); leaving the block (or the run ending) releases the locks. Inside,
        ``ctx.call_entity`` may call only the locked entities, and no section nests."""
        return self._engine.lock_entities(entity_ids)

    def continue_as_new(self, /, *args: Any, **kwargs: Any) -> None:
        """End this run now and restart the instance with a new input and an empty
        history (for eternal orchestrations such as monitors)."""
        self._engine.continue_as_new(args, kwargs)

    def task_all(self, tasks: Iterable[Task], /) -> Task:
        """A task that completes with the list of all results, in order."""
        return WhenAll(self._tasks(tasks, "ctx.task_all"))

    def task_any(self, tasks: Iterable[Task], /) -> Task:
        """A task that completes with the first of ``tasks`` to finish (the task itself);
        with no tasks, at once with None, as in Durable Functions."""
        return WhenAny(self._tasks(tasks, "ctx.task_any"))

    def new_uuid(self) -> str:
        """A UUID that is the same on every replay of this instance."""
        self._uuids += 1
        return str(uuid.uuid5(_UUID_NAMESPACE, f"{self._engine.instance_id}/{self._uuids}"))

    def new_guid(self) -> str:
        """:meth:`new_uuid` under Durable Functions' other name."""
        return self.new_uuid()

    def set_custom_status(self, value: Any) -> None:
        """Publish a small value (a dict, a string) shown in status and ``%durable list``."""
        self._engine.set_custom_status(value)

    def _tasks(self, tasks: Iterable[Task], what: str) -> list[Task]:
        checked = list(tasks)
        for item in checked:
            if not isinstance(item, Task):
                raise OrchestratorError(
                    f"{what} in orchestrator {self._engine.name!r} got {item!r}, which is not "
                    "a task; pass the results of ctx.call_activity(...)"
                )
        return checked

    def __repr__(self) -> str:
        return f"<OrchestrationContext {self.instance_id}>"
