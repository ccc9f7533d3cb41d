"""The pure replay engine.

The engine runs an orchestrator (generator or coroutine) against a history. It
does no I/O, reads no clock and starts no threads: the runtime feeds it events
and carries out the decisions it returns.

Results are matched by *call key*: activity name, digest of its normalised
source, digest of its arguments, and the occurrence number of that triple in the
run. So an edited orchestrator (a step added, steps reordered) keeps every result
whose activity and inputs did not change, and an edited activity body invalidates
exactly that activity's results. Failures are not replayed: a rerun retries them.

The engine keeps the orchestrator suspended between events, so a live run costs
one resume per completion rather than a replay from the start.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

from durable_nb import history
from durable_nb.definitions import Activity, resolve_activity
from durable_nb.engine.context import OrchestrationContext
from durable_nb.engine.tasks import ActivityCall, ActivityTask, Task
from durable_nb.errors import NonDeterminismError, OrchestratorError
from durable_nb.fingerprint import arguments_digest

_UUID_NAMESPACE = uuid.UUID("5f6c2a6e-5d0b-4c52-9f0e-6a1d2b7c9e31")
_UNSET: Any = object()

RUNNING, COMPLETED, FAILED = "running", "completed", "failed"


@dataclass
class Step:
    """What the runtime must do after the engine consumed some events."""

    scheduled: list[ActivityCall] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)  # activity names answered from history
    custom_status: Any = _UNSET

    @property
    def has_custom_status(self) -> bool:
        return self.custom_status is not _UNSET


class OrchestrationEngine:
    """Drives one run of an orchestrator from history and new events."""

    def __init__(
        self,
        fn: Callable[..., Any],
        arguments: dict[str, Any],
        *,
        name: str,
        instance_id: str,
        resolve: Callable[[Any], Activity] = resolve_activity,
        strict: bool = False,
    ) -> None:
        self.fn = fn
        self.name = name
        self.instance_id = instance_id
        self.arguments = arguments
        self.strict = strict
        self.status = RUNNING
        self.output: Any = None
        self.failure: BaseException | None = None
        self.is_replaying = False
        self.now = 0.0
        self.calls: list[str] = []  # activity names by position (strict mode only)
        self._resolve = resolve
        self._results: dict[str, tuple[Any, float]] = {}
        self._pending: dict[str, ActivityTask] = {}
        self._occurrences: dict[str, int] = {}
        self._position = 0
        self._uuid_counter = 0
        self._created_at: float | None = None
        self._reference_calls: tuple[str, ...] | None = None
        self._loading = False
        self._waiting_on: Task | None = None
        self._coroutine: Generator[Any, Any, Any] | Coroutine[Any, Any, Any] | None = None
        self._step = Step()
        self._handlers: dict[type[history.Event], Callable[[Any], None]] = {
            history.ExecutionStarted: self._on_started,
            history.TaskScheduled: self._on_ignored,
            history.TaskCompleted: self._on_completed,
            history.TaskFailed: self._on_failed,
            history.TaskRetried: self._on_ignored,
            history.CustomStatusSet: self._on_ignored,
            history.ExecutionFinished: self._on_finished,
        }

    # ------------------------------------------------------------ public API

    @property
    def done(self) -> bool:
        return self.status != RUNNING

    @property
    def pending_calls(self) -> int:
        return len(self._pending)

    def load(self, events: Iterable[history.Event]) -> None:
        """Take in the history of earlier runs (before :meth:`start`)."""
        self._loading = True
        try:
            for event in events:
                self._handlers[type(event)](event)
        finally:
            self._loading = False

    def start(self, started: history.ExecutionStarted) -> Step:
        """Begin this run: call the orchestrator and run it to its first wait."""
        self._step = Step()
        self._on_started(started)
        self.now = self._created_at if self._created_at is not None else started.timestamp
        self.is_replaying = bool(self._results)
        ctx = OrchestrationContext(self)
        try:
            self._coroutine = self.fn(ctx, **self.arguments)
        except Exception as exc:  # the orchestrator raised before its first yield
            self._fail_run(exc)
            return self._step
        self._drive(None, None)
        return self._step

    def apply(self, events: Iterable[history.Event]) -> Step:
        """Take in new events of this run, then resume the orchestrator if it can go on."""
        self._step = Step()
        for event in events:
            self._handlers[type(event)](event)
        waiting = self._waiting_on
        if waiting is not None and waiting.is_done and not self.done:
            self._waiting_on = None
            self._resume_from(waiting)
        return self._step

    # ------------------------------------------------------------ ctx support

    def call_activity(self, ref: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Task:
        act = self._resolve(ref)
        owner = f"activity {act.name!r} (instance {self.instance_id})"
        arg_digest = arguments_digest(owner, args, kwargs)
        triple = f"{act.name}/{act.source_digest[:16]}/{arg_digest}"
        occurrence = self._occurrences.get(triple, 0)
        self._occurrences[triple] = occurrence + 1
        position = self._position
        self._position += 1
        if self.strict:
            self._check_determinism(position, act.name)
        call = ActivityCall(f"{triple}#{occurrence}", act, args, kwargs, position)
        task = ActivityTask(call)
        hit = self._results.get(call.key)
        if hit is not None:
            task._complete(hit[0], hit[1], True)
            self._step.cached.append(act.name)
        else:
            self._pending[call.key] = task
            self._step.scheduled.append(call)
        return task

    def check_tasks(self, tasks: Iterable[Task], what: str) -> list[Task]:
        checked = list(tasks)
        for item in checked:
            if not isinstance(item, Task):
                raise OrchestratorError(
                    f"{what} in orchestrator {self.name!r} got {item!r}, which is not a task; "
                    "pass the results of ctx.call_activity(...)"
                )
        return checked

    def new_uuid(self) -> str:
        self._uuid_counter += 1
        return str(uuid.uuid5(_UUID_NAMESPACE, f"{self.instance_id}/{self._uuid_counter}"))

    def set_custom_status(self, value: Any) -> None:
        self._step.custom_status = value

    # ------------------------------------------------------------ event handlers

    def _on_started(self, event: history.ExecutionStarted) -> None:
        if self._created_at is None:
            self._created_at = event.timestamp

    def _on_ignored(self, event: history.Event) -> None:
        pass

    def _on_completed(self, event: history.TaskCompleted) -> None:
        if self._loading:
            self._results[event.key] = (event.result, event.timestamp)
            return
        task = self._pending.pop(event.key, None)
        if task is not None:
            task._complete(event.result, event.timestamp, False)

    def _on_failed(self, event: history.TaskFailed) -> None:
        if self._loading:
            return  # failures are retried on the next run, never replayed
        task = self._pending.pop(event.key, None)
        if task is not None:
            error = event.error or RuntimeError(f"{event.error_type}: {event.message}")
            task._fail(error, event.timestamp)

    def _on_finished(self, event: history.ExecutionFinished) -> None:
        if event.calls is not None:
            self._reference_calls = event.calls

    # ------------------------------------------------------------ driving

    def _resume_from(self, task: Task) -> None:
        self.now = max(self.now, task.finished_at)
        self.is_replaying = task.from_history
        if task.is_failed:
            self._drive(None, task.exception)
        else:
            self._drive(task._value, None)

    def _drive(self, value: Any, error: BaseException | None) -> None:
        """Run the orchestrator until it waits on a pending task or ends."""
        coroutine = self._coroutine
        assert coroutine is not None
        while True:
            try:
                if error is not None:
                    yielded = coroutine.throw(error)
                else:
                    yielded = coroutine.send(value)
            except StopIteration as stop:
                self.status, self.output = COMPLETED, stop.value
                self._pending.clear()
                return
            except Exception as exc:
                self._fail_run(exc)
                return
            error = None
            if not isinstance(yielded, Task):
                value, error = None, self._not_a_task(yielded)
                continue
            if not yielded.is_done:
                self._waiting_on = yielded
                return
            self.now = max(self.now, yielded.finished_at)
            self.is_replaying = yielded.from_history
            if yielded.is_failed:
                value, error = None, yielded.exception
            else:
                value = yielded._value

    def _fail_run(self, exc: BaseException) -> None:
        self.status, self.failure = FAILED, exc
        self._pending.clear()

    def _not_a_task(self, yielded: Any) -> OrchestratorError:
        hint = "wait on ctx tasks only; do real waiting and I/O inside activities"
        if isinstance(yielded, (list, tuple)):
            hint = "to wait for several tasks, yield ctx.task_all([...])"
        return OrchestratorError(
            f"orchestrator {self.name!r} (instance {self.instance_id}) waited on {yielded!r}, "
            f"which is not a durable task; {hint}"
        )

    def _check_determinism(self, position: int, name: str) -> None:
        self.calls.append(name)
        reference = self._reference_calls
        if reference is not None and position < len(reference) and reference[position] != name:
            raise NonDeterminismError(
                f"orchestrator {self.name!r} (instance {self.instance_id}) called activity "
                f"{name!r} at call position {position}, but the recorded run called "
                f"{reference[position]!r} there. Strict mode requires the same calls in the "
                "same order; drop strict=True to match results by call key, or start afresh "
                "with fresh=True."
            )
