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

Each step returns the work to do and the history it implies (``Step.events``), timed
by the clock it is given, never read. Definitions are known only through
``engine/protocols.py``; the runtime passes the resolvers.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Generator, Iterable
from typing import Any, Generic

from durable_nb import history
from durable_nb.engine.awaited import not_a_task
from durable_nb.engine.children import ChildCalls
from durable_nb.engine.context import OrchestrationContext, parameters
from durable_nb.engine.entities import EntityCalls
from durable_nb.engine.keys import CallKeys, older_triple
from durable_nb.engine.preview import arguments_preview
from durable_nb.engine.protocols import A, BindInput, O
from durable_nb.engine.results import ResultBook, failure_known_by_name
from durable_nb.engine.retry import RecordedFailures, RecordedRetries
from durable_nb.engine.retry_options import RetryOptions
from durable_nb.engine.runaway import RUNAWAY_CALLS, RunawayGuard
from durable_nb.engine.step import Outcome, Step, end_message, finished_event
from durable_nb.engine.strict import check_position
from durable_nb.engine.tasks import (
    _FAILED,
    _PENDING,
    ActivityCall,
    ActivityTask,
    EventTask,
    SubOrchestrationTask,
    Task,
    TimerCall,
    TimerTask,
)
from durable_nb.engine.waits import EventBook, RaisedEvent, TimerBook, event_timeout
from durable_nb.errors import (
    ContinueAsNew,
    EventTimeoutError,
    OrchestratorError,
)
from durable_nb.fingerprint import arguments_digest
from durable_nb.history import Status


class OrchestrationEngine(ChildCalls[A, O], EntityCalls[A, O], Generic[A, O]):
    """Drives one run of an orchestrator from history and new events.

    ``resolve_activity`` and ``resolve_orchestrator`` turn what the orchestrator passes
    to ``ctx.call_activity`` / ``ctx.call_sub_orchestrator`` into definitions;
    ``bind_input`` checks the input of ``ctx.continue_as_new`` (None: not checked here).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        arguments: dict[str, Any],
        *,
        name: str,
        instance_id: str,
        resolve_activity: Callable[[Any], A],
        resolve_orchestrator: Callable[[Any], O],
        bind_input: BindInput | None = None,
        strict: bool = False,
        runaway_calls: int | None = RUNAWAY_CALLS,
        parent_instance_id: str | None = None,
    ) -> None:
        self.fn = fn
        self.name = name
        self.instance_id, self.parent_instance_id = instance_id, parent_instance_id
        self.arguments = arguments
        self.strict = strict
        self.status = Status.RUNNING
        self.output: Any = None
        self.failure: BaseException | None = None
        self.is_replaying = False
        self.now = 0.0
        self.calls: list[str] = []  # activity names by position (strict mode only)
        self.new_input: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self.terminated_reason = ""
        self._resolve = resolve_activity
        self._resolve_sub = resolve_orchestrator
        self._bind_input = bind_input
        self._clock = 0.0  # the time of the events this step emits
        self._timers = TimerBook()
        self._events = EventBook()
        self._position_in_history = 0
        self._run_started = 0.0
        self._results = ResultBook()
        self._failures = RecordedFailures()  # of children, for their retry count
        self._retries = RecordedRetries()  # of activity calls cut short in a backoff
        self._pending: dict[str, ActivityTask | SubOrchestrationTask] = {}
        self._held = None  # the entities a critical section holds
        self._finished: history.ExecutionFinished | None = None
        self._keys: CallKeys[A] = CallKeys()
        self._created_at: float | None = None
        self._reference_calls: tuple[str, ...] | None = None
        self._runaway = RunawayGuard(runaway_calls)
        self._resumes = 0  # times the orchestrator went on after a yield (the guard's unit)
        # What this run called, by name (sub-orchestrators as "sub:<name>"): a completed
        # instance stays final while the code of none of them changed.
        self.code_used: dict[str, A | O] = {}
        self._owners: dict[str, str] = {}  # activity name -> how errors name it
        self._loading = False
        self._waiting_on: Task | None = None
        self._coroutine: Generator[Any, Any, Any] | Coroutine[Any, Any, Any] | None = None
        self._step: Step[A, O] = Step()

    # ------------------------------------------------------------ public API

    @property
    def done(self) -> bool:
        return self.status != Status.RUNNING

    @property
    def outcome(self) -> Outcome:
        """How the run ended (once :attr:`done`)."""
        message = self._finished.message if self._finished is not None else ""
        return Outcome(self.status, self.output, self.failure, message, self.new_input)

    @property
    def pending_calls(self) -> int:
        return len(self._pending)

    def load(self, events: Iterable[history.Event]) -> None:
        """Take in the history of earlier runs (before :meth:`start`)."""
        self._loading = True
        handlers, results = _HANDLERS, self._results.results
        try:
            for event in events:
                self._position_in_history += 1
                if type(event) is history.TaskCompleted:  # most of a history: inline
                    results[event.key] = (event.result, event.timestamp, self._position_in_history)
                elif type(event) is not history.TaskScheduled:
                    handlers[type(event)](self, event)
        finally:
            self._loading = False

    def start(self, started: history.ExecutionStarted) -> Step[A, O]:
        """Begin this run: call the orchestrator and run it to its first wait. The runtime
        appends ``started`` itself (it is this run's input), then ``Step.events``."""
        self._step = Step()
        self._clock = started.timestamp
        self._on_started(started)
        self._run_started = started.timestamp
        self.now = self._created_at if self._created_at is not None else started.timestamp
        self.is_replaying = bool(self._results)
        ctx = OrchestrationContext(self)
        try:
            self._coroutine = self.fn(ctx, **parameters(self.arguments))
        except Exception as exc:  # the orchestrator raised before its first yield
            self._fail_run(exc)
            return self._close_step()
        self._advance(None, None)
        return self._close_step()

    def apply(self, events: Iterable[history.Event], now: float | None = None) -> Step[A, O]:
        """Take in new events of this run, then resume the orchestrator if it can go on.
        ``now`` is the time of the events the step emits (default: the last event's)."""
        self._step = Step()
        for event in events:
            self._position_in_history += 1
            self._clock = event.timestamp
            _HANDLERS[type(event)](self, event)
        if now is not None:
            self._clock = now
        waiting = self._waiting_on
        if waiting is not None and waiting.is_done and not self.done:
            self._waiting_on = None
            self._resume_from(waiting)
        return self._close_step()

    def abort(self, status: Status, message: str, now: float) -> history.ExecutionFinished:
        """End the run for a reason outside the orchestrator (``interrupted``, or
        ``failed`` by the runtime): the event that records it, to append."""
        self.status = status
        self._pending.clear()
        self._finished = self._finished_event(message, now)
        return self._finished

    def _close_step(self) -> Step[A, O]:
        """The step's history, from its decisions, in the order the runtime wrote it
        before the engine owned it: calls, new timers, custom status, the end."""
        step, at = self._step, self._clock
        events = step.events
        events += [
            history.TaskScheduled(at, c.key, c.activity.name, arguments_preview(c.args, c.kwargs))
            for c in step.scheduled
        ]
        events += [history.TimerCreated(at, t.key, t.fire_at) for t in step.timers if t.new]
        if step.has_custom_status:
            events.append(history.CustomStatusSet(at, step.custom_status))
        if self.done:
            self._finished = self._finished_event(self._end_message(), at)
            events.append(self._finished)
        else:
            step.waiting_events = self._events.waiting_names()
        return step

    def _end_message(self) -> str:
        return end_message(self.status, self.failure, self.terminated_reason)

    def _finished_event(self, message: str, at: float) -> history.ExecutionFinished:
        calls = tuple(self.calls) if self.strict else None
        return finished_event(self.status, message, calls, at)

    # ------------------------------------------------------------ ctx support

    def call_activity(
        self,
        ref: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        retry: RetryOptions | None = None,
    ) -> Task:
        act = self._resolve(ref)
        name = act.name
        owner = self._owners.get(name)
        if owner is None:  # how its errors name the calls of an activity: made once
            owner = self._owners[name] = f"activity {name!r} (instance {self.instance_id})"
        self.code_used[name] = act
        if (runaway := self._runaway.called(name, self._resumes)) is not None:
            self._step.runaway = runaway
        current = self._keys.prefix(act) + arguments_digest(owner, args, kwargs)
        key, occurrence, position = self._next_call(current, name)
        task = ActivityTask(key)
        older = older_triple(owner, act, args, kwargs) if self._results.older_schemes else None
        if self._answer(task, key, name, older, occurrence):
            call = ActivityCall(key, act, args, kwargs, position, retry)
            if self._retries.by_key:
                call.resume = self._retries.by_key.get(key)
            self._step.scheduled.append(call)
        return task

    def _next_call(self, triple: str, name: str) -> tuple[str, int, int]:
        """The call key, occurrence and position of the next call of ``triple``."""
        key, occurrence, position = self._keys.next(triple)
        if self.strict:
            self.calls.append(name)
            check_position(self.name, self.instance_id, self._reference_calls, position, name)
        return key, occurrence, position

    def _answer(
        self,
        task: ActivityTask | SubOrchestrationTask,
        key: str,
        name: str,
        triple: Callable[[int], str] | None,
        occurrence: int,
    ) -> bool:
        """Complete ``task`` from history if it can be; True when it must be scheduled.
        ``triple(scheme)`` is the call's key under an older scheme, without occurrence
        (None: the history has no older scheme)."""
        book = self._results
        # find(), inlined (every call of a replay asks), and the result taken out: a key
        # is answered once, and what a replay answered is neither kept nor scanned again
        hit = book.results.pop(key, None)
        if hit is None and triple is not None and book.older_schemes:
            hit = book.find_older(triple, occurrence)
        if hit is not None:
            value = hit[0]
            if isinstance(value, history.LargeValue):
                value = value.load()  # a large result, read now that it is needed
            task._replayed(value, hit[1], hit[2])
            self._step.replayed.append(name)
            return False
        self._pending[key] = task
        return True

    def create_timer(self, when: Any) -> Task:
        timer = self._timers.new(when, max(self.now, self._run_started), self.name)
        key = timer.key
        task = TimerTask(timer)
        self._runaway.timer_created()
        fired_position = self._timers.fired.get(key)
        if fired_position is not None:
            task._complete(None, timer.fire_at, True, fired_position)
        else:
            self._timers.waiting[key] = task
            self._step.timers.append(timer)
        return task

    def wait_for_event(self, name: str, timeout: Any) -> Task:
        timer: TimerCall | None = None
        if timeout is not None:
            timer = self._timers.new(timeout, max(self.now, self._run_started), self.name)
            self._runaway.timer_created()
        task = EventTask(name, timer.key if timer else None)
        task.timeout = timeout
        task.fire_at = timer.fire_at if timer else 0.0
        fired_at = self._timers.fired.get(timer.key) if timer else None
        event = self._events.next_for(name, before=fired_at)
        if event is not None:
            self._events.consume(name)
            task._complete(event.value, event.timestamp, event.replayed, event.position)
        elif timer is not None and fired_at is not None:
            task._fail(self._event_timeout(name, timeout), timer.fire_at, fired_at)
            task.replayed = True
        else:
            self._events.wait(task)
            if timer is not None:
                self._timers.waiting[timer.key] = task
                self._step.timers.append(timer)
        return task

    def continue_as_new(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        # Checked here, at the call: input the orchestrator cannot take fails this run
        # (with the traceback at the user's line) instead of leaving the instance
        # between two generations.
        if self._bind_input is not None:
            self._bind_input(args, kwargs)
        raise ContinueAsNew(args, kwargs)

    def _event_timeout(self, name: str, timeout: Any) -> EventTimeoutError:
        return event_timeout(self.name, self.instance_id, name, timeout)

    def set_custom_status(self, value: Any) -> None:
        self._step.custom_status = value

    # ------------------------------------------------------------ event handlers

    def _on_started(self, event: history.ExecutionStarted) -> None:
        if self._created_at is None:
            self._created_at = event.timestamp
        if self._loading:
            self._results.run_keyed_by(event.key_scheme)

    def _on_ignored(self, event: history.Event) -> None:
        pass

    def _on_completed(self, event: history.TaskCompleted) -> None:
        if self._loading:
            self._results.add(event.key, (event.result, event.timestamp, self._position_in_history))
            return
        task = self._pending.pop(event.key, None)
        if task is not None:
            task._complete(event.result, event.timestamp, False, self._position_in_history)

    def _on_failed(self, event: history.TaskFailed) -> None:
        if self._loading:  # failures are retried on the next run, never replayed: afresh
            self._retries.by_key.pop(event.key, None)
            return
        task = self._pending.pop(event.key, None)
        if task is not None:
            error = event.error or failure_known_by_name(event, self.instance_id)
            task._fail(error, event.timestamp, self._position_in_history)

    def _on_sub_failed(self, event: history.SubOrchestrationFailed) -> None:
        if self._loading:  # not replayed either, but counted for a retry policy
            self._failures.add(event, self._position_in_history, self.instance_id)
        else:
            self._on_failed(event)  # type: ignore[arg-type]  # the same fields used

    def _on_finished(self, event: history.ExecutionFinished) -> None:
        if event.calls is not None:
            self._reference_calls = event.calls
        if self._loading:
            self._failures.run_ended(event)
            self._retries.run_ended(event)

    def _on_retried(self, event: history.TaskRetried) -> None:
        if self._loading:
            self._retries.add(event)

    def _on_timer_created(self, event: history.TimerCreated) -> None:
        if self._loading:
            self._timers.created[event.key] = event.fire_at

    def _on_timer_fired(self, event: history.TimerFired) -> None:
        if self._loading:
            self._timers.fired[event.key] = self._position_in_history
            return
        task = self._timers.waiting.pop(event.key, None)
        # The clock moves to the recorded fire time, not the moment the loop got to
        # it, so the orchestrator sees the same time live and on replay.
        if isinstance(task, EventTask):
            if not task.is_done:
                error = self._event_timeout(task.name, task.timeout)
                task._fail(error, task.fire_at, self._position_in_history)
        elif isinstance(task, TimerTask):
            task._complete(None, task.timer.fire_at, False, self._position_in_history)

    def _on_event_raised(self, event: history.EventRaised) -> None:
        raised = RaisedEvent(event.value, event.timestamp, self._position_in_history, self._loading)
        self._events.add(event.name, raised)
        if self._loading:
            return
        waiting = self._events.first_waiting(event.name)
        if waiting is not None:
            self._events.consume(event.name)
            waiting._complete(event.value, event.timestamp, False, self._position_in_history)

    def _on_control(self, event: history.ControlRequested) -> None:
        if not self._loading and event.action == "terminate" and not self.done:
            self._terminate(event.reason)

    # ------------------------------------------------------------ driving

    def _resume_from(self, task: Task) -> None:
        self.now = max(self.now, task.finished_at)
        self.is_replaying = task.replayed
        if task.is_failed:
            self._advance(None, task.exception)
        else:
            self._advance(task._value, None)

    def _advance(self, value: Any, error: BaseException | None) -> None:
        """Run the orchestrator until it waits on a pending task or ends."""
        coroutine = self._coroutine
        assert coroutine is not None
        while True:
            self._resumes += 1
            try:
                if error is not None:
                    yielded = coroutine.throw(error)
                else:
                    yielded = coroutine.send(value)
            except StopIteration as stop:
                self.status, self.output = Status.COMPLETED, stop.value
                self._pending.clear()
                return
            except ContinueAsNew as signal:
                self.status = Status.CONTINUED_AS_NEW
                self.new_input = (signal.new_args, signal.new_kwargs)
                self._pending.clear()
                return
            except Exception as exc:
                self._fail_run(exc)
                return
            error = None
            if not isinstance(yielded, Task):
                value, error = None, self._not_a_task(yielded)
                continue
            state = yielded._state  # is_done and is_failed, read once
            if state == _PENDING:
                self._waiting_on = yielded
                return
            if yielded.finished_at > self.now:
                self.now = yielded.finished_at
            if yielded.order:  # an empty task_all or task_any leaves it as it is
                self.is_replaying = yielded.replayed
            if state == _FAILED:
                value, error = None, yielded._error
            else:
                value = yielded._value

    def _fail_run(self, exc: BaseException) -> None:
        self.status, self.failure = Status.FAILED, exc
        self._pending.clear()

    def _terminate(self, reason: str) -> None:
        self.status, self.terminated_reason = Status.TERMINATED, reason
        coroutine, self._coroutine = self._coroutine, None
        if coroutine is not None:
            try:
                coroutine.close()  # runs the orchestrator's finally blocks
            except Exception:  # a finally block that fails cannot stop the termination
                pass
        # Whatever the finally blocks asked for is dropped: a terminated run does nothing.
        self._pending.clear()
        self._step.scheduled.clear()
        self._step.timers.clear()
        self._step.subs.clear()

    def _not_a_task(self, yielded: Any) -> OrchestratorError:
        return not_a_task(self.name, self.instance_id, self._coroutine, yielded)


# One handler per event type: the class's functions, not 14 bound methods per engine for
# the collector to scan in every live run (a fan-out of children keeps thousands alive).
_HANDLERS: dict[type[history.Event], Callable[[Any, Any], None]] = {
    history.ExecutionStarted: OrchestrationEngine._on_started,
    history.TaskScheduled: OrchestrationEngine._on_ignored,
    history.TaskCompleted: OrchestrationEngine._on_completed,
    history.TaskFailed: OrchestrationEngine._on_failed,
    history.TaskRetried: OrchestrationEngine._on_retried,
    history.CustomStatusSet: OrchestrationEngine._on_ignored,
    history.ExecutionFinished: OrchestrationEngine._on_finished,
    history.TimerCreated: OrchestrationEngine._on_timer_created,
    history.TimerFired: OrchestrationEngine._on_timer_fired,
    history.EventRaised: OrchestrationEngine._on_event_raised,
    history.SubOrchestrationCompleted: OrchestrationEngine._on_completed,
    history.SubOrchestrationFailed: OrchestrationEngine._on_sub_failed,
    history.ControlRequested: OrchestrationEngine._on_control,
    history.EntitySignaled: OrchestrationEngine._on_entity_signaled,
}
