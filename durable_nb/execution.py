"""One run of one instance: the asyncio loop that joins store, engine and executor.

The order of things is what makes a run durable:

1. outcomes (activity results, timers firing, child orchestrations ending) are
   collected in an inbox;
2. the inbox is appended to the store in one atomic chunk;
3. only then does the engine see them and resume the orchestrator.

So a result is on disk before the orchestrator acts on it, and a kill at any
moment loses at most the work that was in flight.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from durable_nb import history
from durable_nb.dispatch import Dispatcher
from durable_nb.engine import OrchestrationEngine, Step, SubOrchestrationCall
from durable_nb.engine.replay import COMPLETED, CONTINUED, TERMINATED
from durable_nb.errors import DurableNbError, InstanceBusyError, add_note
from durable_nb.finality import completed_with
from durable_nb.fingerprint import KEY_SCHEME
from durable_nb.journal import Journal
from durable_nb.leases import LeaseKeeper
from durable_nb.orchestrator_warnings import warn_if_slow, warn_runaway
from durable_nb.progress import Progress
from durable_nb.store import CheckpointStore, InstanceRecord

if TYPE_CHECKING:
    from durable_nb.definitions import Orchestrator
    from durable_nb.engine import ActivityCall
    from durable_nb.runtime import Runtime

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.2  # wakes the loop so the kernel's interrupt is seen promptly
POLL_SECONDS = 0.5  # how often a run looks for events raised by other processes
COMPACT_AFTER_CHUNKS = 32
_WRITE_BEFORE_WAITING = (history.TimerCreated, history.CustomStatusSet)


@dataclass
class Outcome:
    """How a run ended."""

    status: str  # completed | failed | terminated | continued_as_new
    output: Any = None
    failure: BaseException | None = None
    message: str = ""
    new_input: tuple[tuple[Any, ...], dict[str, Any]] | None = None


@dataclass
class _Held:
    """What waits for the resume of a suspended instance: the work the engine scheduled,
    and the events that arrived meanwhile (durable already, for the engine in history
    order once the instance is resumed: nothing progresses while it is suspended)."""

    activities: list[ActivityCall] = field(default_factory=list)
    children: list[SubOrchestrationCall] = field(default_factory=list)
    events: list[history.Event] = field(default_factory=list)


class Execution:
    """Runs an orchestrator instance once, from its stored history to its end."""

    def __init__(
        self,
        runtime: Runtime,
        orchestrator: Orchestrator,
        arguments: dict[str, Any],
        instance_id: str,
        progress: Progress,
        parent: str | None = None,
        caller_input: str | None = None,
    ) -> None:
        self.runtime = runtime
        # The digest of the input the caller gave (before any continue_as_new); kept
        # with a completed record so that the instance is final for that input.
        self.caller_input = caller_input
        self.store: CheckpointStore = runtime.store
        self.orchestrator = orchestrator
        self.arguments = arguments
        self.instance_id = instance_id
        self.progress = progress
        self.parent = parent
        self.engine = OrchestrationEngine(
            orchestrator.fn,
            arguments,
            name=orchestrator.name,
            instance_id=instance_id,
            strict=orchestrator.strict,
            runaway_calls=runtime.runaway_calls,
        )
        self.journal = Journal(self.store, instance_id, progress)
        self._lease = LeaseKeeper(self.store, instance_id)
        self._inbox: list[history.Event] = []
        self._arrived: list[history.Event] = []  # already durable, appended by others
        self._wake: asyncio.Event | None = None
        self._record: InstanceRecord | None = None
        self._record_dirty = False
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._children: set[asyncio.Task[Outcome]] = set()
        self._suspended = False
        self._held = _Held()
        # Set while the orchestrator waits for a resume to start (suspended at the start).
        self._deferred: history.ExecutionStarted | None = None
        self._last_poll = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ run

    async def run(self) -> Outcome:
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        await self._lease.acquire_waiting(self.runtime.busy_timeout)
        try:
            return await self._run_leased()
        finally:
            self._lease.release()

    async def _run_leased(self) -> Outcome:
        assert self._wake is not None
        record = self._open_record()
        self.journal.epoch = record.epoch
        events = self.journal.load()
        self.engine.load(events)
        self._suspended = _suspended_in(events)
        started = history.ExecutionStarted(
            time.time(), self.orchestrator.name, record.runs, KEY_SCHEME
        )
        self.journal.unwritten.append(started)
        self._dispatcher = Dispatcher(
            resources=self.runtime.resources,
            progress=self.progress,
            instance_id=self.instance_id,
            epoch=record.epoch,
            post=self._post,
            note=self.journal.unwritten.append,
            keep_late=self.journal.keep_late,
            journal=self.journal,  # shared results (share=True activities)
        )
        self.progress.begin()
        if self._suspended:
            self._set_status("suspended")
        ticker = asyncio.ensure_future(self._tick())
        try:
            if self._suspended:
                self._deferred = started  # the orchestrator starts when resumed
            else:
                self._start_engine(started)
            while not self.engine.done:
                if not self._inbox and not self._arrived:
                    self._flush_before_waiting()
                if not self._inbox and not self._arrived:
                    await self._wake.wait()
                self._wake.clear()
                events, self._inbox = self._inbox, []
                arrived, self._arrived = self._arrived, []
                foreign, seen = self.journal.write(events)
                self._flush_record()
                ready = self._admit(arrived + foreign + seen)
                if not ready:
                    continue  # suspended: all of it waits for the resume
                began = time.monotonic()
                step = self.engine.apply(ready)
                self._timed("after a result", began)
                self._apply(step)
        except (asyncio.CancelledError, KeyboardInterrupt) as exc:  # the kernel's interrupt
            self._end("interrupted", f"{type(exc).__name__}: run stopped before it finished")
            raise
        except BaseException as exc:
            self._end("failed", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            ticker.cancel()
            self._stop_work()
        return self._finish()

    def _open_record(self) -> InstanceRecord:
        now = time.time()
        record = self.store.get_instance(self.instance_id)
        if record is None:
            record = InstanceRecord(self.instance_id, self.orchestrator.name, created_at=now)
        elif record.orchestrator != self.orchestrator.name:
            raise DurableNbError(
                f"instance id {self.instance_id!r} belongs to orchestrator "
                f"{record.orchestrator!r}, not {self.orchestrator.name!r}; choose another "
                "instance_id or purge the old instance (%durable purge ID)"
            )
        record.runs += 1
        record.status, record.started_at, record.updated_at = "running", now, now
        record.finished_at, record.error, record.parent = None, None, self.parent
        record.completed_with = None  # set again only if this run completes
        record.input = self.arguments
        self._put_record(record)
        self._record = record
        return record

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            if not self._lease.renew_if_due():
                self._post(
                    history.ControlRequested(time.time(), "terminate", "lease lost")
                )  # another kernel took the instance over: stop here
            now = time.monotonic()
            if now - self._last_poll >= POLL_SECONDS:
                self.poll()
            self.progress.changed()

    def nudge(self) -> None:
        """Look for new events at once (thread-safe); used after a raise in this process."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.poll)

    def poll(self) -> None:
        """Look for events and requests other writers appended (also: a nudge)."""
        self._last_poll = time.monotonic()
        arrived = self.journal.poll()
        if arrived:
            self._arrived.extend(arrived)
            assert self._wake is not None
            self._wake.set()

    # ------------------------------------------------------------------ steps

    def _timed(self, what: str, started: float) -> None:
        warn_if_slow(self.orchestrator.name, self.instance_id, what, started)

    def _apply(self, step: Step) -> None:
        if step.runaway is not None:
            warn_runaway(self.orchestrator.name, self.instance_id, *step.runaway)
        progress = self.progress
        for name in step.cached:
            progress.cached(name)
        now = time.time()
        for call in step.scheduled:
            self.journal.unwritten.append(history.TaskScheduled(now, call.key, call.activity.name))
            progress.scheduled(call.activity.name)
            if self._suspended:
                self._held.activities.append(call)
            else:
                self._dispatcher.dispatch(call)
        for timer in step.timers:
            if timer.new:
                self.journal.unwritten.append(history.TimerCreated(now, timer.key, timer.fire_at))
            self._arm(timer.key, timer.fire_at)
        for sub in step.subs:
            progress.scheduled(f"sub:{sub.orchestrator.name}")
            if self._suspended:
                self._held.children.append(sub)
            else:
                self._start_child(sub)
        progress.waiting_events = list(step.waiting_events)
        if step.has_custom_status:
            self.journal.unwritten.append(history.CustomStatusSet(now, step.custom_status))
            assert self._record is not None
            self._record.custom_status = step.custom_status
            progress.custom_status = step.custom_status
            self._record_dirty = True
        progress.changed()

    def _post(self, event: history.Event) -> None:
        self._inbox.append(event)
        assert self._wake is not None
        self._wake.set()

    def _flush_before_waiting(self) -> None:
        """Before the run waits, make durable what must not wait for the next outcome:
        a timer's fire time (a restart must keep it) and the custom status (others read it)."""
        if any(isinstance(e, _WRITE_BEFORE_WAITING) for e in self.journal.unwritten):
            foreign, _ = self.journal.write([])
            self._arrived.extend(foreign)  # already durable: applied in their order
        self._flush_record()

    def _flush_record(self) -> None:
        if self._record_dirty and self._record is not None:
            self._record.updated_at = time.time()
            self.store.put_instance(self._record)
            self._record_dirty = False

    def _start_engine(self, started: history.ExecutionStarted) -> None:
        began = time.monotonic()
        step = self.engine.start(started)
        self._timed("its start", began)
        self._apply(step)

    def _admit(self, events: list[history.Event]) -> list[history.Event]:
        """The events (in history order) the engine may take now. Suspend and resume act
        here, terminate in the engine (suspended or not). While the instance is suspended
        the other events wait, durable already, and reach the engine after the resume in
        the same order, so the orchestrator does not move and a replay sees that order."""
        ready: list[history.Event] = []
        for event in events:
            action = event.action if isinstance(event, history.ControlRequested) else None
            if action == "terminate":
                ready += self._held.events
                self._held.events = []
                ready.append(event)
                continue
            if action == "resume" and self._suspended:
                ready += self._resume()
            elif action == "suspend" and not self._suspended:
                self._suspended = True
                self._set_status("suspended")
            if self._suspended:
                self._held.events.append(event)
            else:
                ready.append(event)
        return ready

    def _resume(self) -> list[history.Event]:
        """Let held work go; returns the events that arrived while suspended."""
        self._suspended = False
        self._set_status("running")
        deferred, self._deferred = self._deferred, None
        if deferred is not None:
            self._start_engine(deferred)  # over the history up to the resume
        held, self._held = self._held, _Held()
        for call in held.activities:
            self._dispatcher.dispatch(call)
        for sub in held.children:
            self._start_child(sub)
        return held.events

    def _set_status(self, status: str) -> None:
        self.progress.status = status
        self.progress.changed()
        if self._record is not None:
            self._record.status = status
            self._record_dirty = True
            self._flush_record()

    # ------------------------------------------------------------------ timers

    def _arm(self, key: str, fire_at: float) -> None:
        loop = asyncio.get_running_loop()
        delay = max(0.0, fire_at - time.time())
        self._timers[key] = loop.call_later(delay, self._fire, key)
        self.progress.timers[key] = fire_at

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self.progress.timers.pop(key, None)
        self._post(history.TimerFired(time.time(), key))

    # ------------------------------------------------------------------ children

    def _start_child(self, call: SubOrchestrationCall) -> None:
        task = asyncio.ensure_future(self.runtime.run_child(self, call))
        self._children.add(task)
        task.add_done_callback(lambda t: self._child_done(call, t))

    def _child_done(self, call: SubOrchestrationCall, task: asyncio.Task[Outcome]) -> None:
        self._children.discard(task)
        if task.cancelled() or self.engine.done:
            return
        name = f"sub:{call.orchestrator.name}"
        error = task.exception()
        outcome = task.result() if error is None else None
        if outcome is not None and outcome.status == COMPLETED:
            self.progress.ran(name)
            self._post(
                history.SubOrchestrationCompleted(
                    time.time(), call.key, call.instance_id, outcome.output
                )
            )
            return
        if error is None:
            assert outcome is not None
            error = outcome.failure or InstanceBusyError(
                f"sub-orchestration {call.instance_id!r} ended as {outcome.status}: "
                f"{outcome.message}"
            )
        add_note(error, f"durable_nb: in sub-orchestration {call.instance_id}")
        self.progress.failed(name)
        self._post(
            history.SubOrchestrationFailed(
                time.time(),
                call.key,
                call.instance_id,
                type(error).__name__,
                str(error),
                error,
            )
        )

    # ------------------------------------------------------------------ ending

    def _stop_work(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self.progress.timers.clear()
        for task in list(self._children):
            task.cancel()
        self._dispatcher.stop()

    def _finish(self) -> Outcome:
        engine = self.engine
        if engine.status == COMPLETED:
            self._end("completed", "")
            return Outcome("completed", output=engine.output)
        if engine.status == TERMINATED:
            message = f"terminated: {engine.terminated_reason}"
            self._end("terminated", message)
            return Outcome("terminated", message=message)
        if engine.status == CONTINUED:
            self._end("continued_as_new", "")
            return Outcome("continued_as_new", new_input=engine.new_input)
        failure = engine.failure
        assert failure is not None
        self._end("failed", f"{type(failure).__name__}: {failure}")
        return Outcome("failed", failure=failure)

    def _end(self, status: str, message: str) -> None:
        now = time.time()
        calls = tuple(self.engine.calls) if self.orchestrator.strict else None
        if status == "interrupted":
            calls = None  # a partial run is no reference for strict mode
        self.journal.unwritten.append(history.ExecutionFinished(now, status, message, calls))
        try:
            self._record_end(status, message, now)
        except Exception:
            # The store may be what failed; the run's own error is the one to report.
            logger.warning("could not record the end of %s", self.instance_id, exc_info=True)
        finally:
            if status == "continued_as_new":
                self.progress.status = status  # the same view goes on with the next round
                self.progress.changed()
            else:
                self.progress.finish(status, message)

    def _record_end(self, status: str, message: str, now: float) -> None:
        # Outcomes that arrived after the engine's last step are kept too.
        inbox, self._inbox = self._inbox, []
        self.journal.write(inbox)
        record = self._record
        if record is not None:
            record.status, record.finished_at, record.updated_at = status, now, now
            record.error = message or None
            record.counts = self.progress.totals().counts(live=False)
            record.output = self.engine.output if status == "completed" else None
            if status == "completed" and self.caller_input is not None:
                record.completed_with = completed_with(
                    self.orchestrator, self.caller_input, self.engine.code_used, self.progress.rows
                )
            self._put_record(record)
        if self.journal.chunks > COMPACT_AFTER_CHUNKS and status != "continued_as_new":
            self.store.compact(self.instance_id)

    def _put_record(self, record: InstanceRecord) -> None:
        try:
            self.store.put_instance(record)
        except (pickle.PicklingError, TypeError, AttributeError):
            # An input or output that cannot be pickled still works live; the record
            # keeps the rest (rewind then needs the input passed again).
            if not self.store.storable(record.output):
                record.output = None
                record.completed_with = None  # no recorded outcome: it cannot be final
            if not self.store.storable(record.input):
                record.input = None
            self.store.put_instance(record)


def _suspended_in(events: list[history.Event]) -> bool:
    """Whether the last suspend/resume request in history was a suspend."""
    for event in reversed(events):
        if isinstance(event, history.ControlRequested) and event.action in ("suspend", "resume"):
            return event.action == "suspend"
    return False
