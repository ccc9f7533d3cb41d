"""One run of one instance: the asyncio loop that joins store, engine and executor.

The order of things is what makes a run durable:

1. outcomes (activity results, timers firing, child orchestrations ending) are
   collected in an inbox;
2. the inbox is appended to the store in one atomic chunk;
3. only then does the engine see them and resume the orchestrator.

So a result is on disk before the orchestrator acts on it, and a kill at any
moment loses at most the work that was in flight.

Outcomes are handled by a loop callback, not by waking a coroutine: the first outcome
that lands in an empty inbox schedules :meth:`Execution._drain` for the loop's next
turn, so outcomes that arrive together are still written as one chunk, and the run's
coroutine only waits for the end. The outcomes of threads that ended together come
as one batch (dispatch.py), which is drained at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import logging
import math
import os
import time
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from durable_nb import history
from durable_nb.definitions import resolve_orchestrator
from durable_nb.dispatch import Dispatcher
from durable_nb.engine import OrchestrationEngine, Outcome, TimerCall
from durable_nb.entity_calls import EntityActivities, send_signals
from durable_nb.finality import completed_with
from durable_nb.fingerprint import KEY_SCHEME
from durable_nb.history import Status
from durable_nb.journal import Journal
from durable_nb.leases import LeaseKeeper
from durable_nb.orchestrator_warnings import SLOW_STEP_SECONDS, warn_if_slow, warn_runaway
from durable_nb.parts import ChildRuns, DurableTimers, Part
from durable_nb.progress import Progress
from durable_nb.resources import Resources
from durable_nb.store import CheckpointStore
from durable_nb.suspension import Suspension, suspended_in

if TYPE_CHECKING:
    from durable_nb.definitions import ChildCall, Engine, EngineStep, Orchestrator

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.2  # wakes the loop so the kernel's interrupt is seen promptly
POLL_SECONDS = 0.5  # how often a run looks for events raised by other processes
TICK_GRID = 0.05  # a tick is due at a multiple of this (in the loop's clock)


class Host(Protocol):
    """What a run needs of the runtime that starts it (runtime.py's ``Runtime``)."""

    @property
    def store(self) -> CheckpointStore: ...

    @property
    def resources(self) -> Resources: ...

    @property
    def runaway_calls(self) -> int: ...

    @property
    def busy_timeout(self) -> float: ...

    def start_child(self, parent: Execution, call: ChildCall) -> asyncio.Future[Outcome]:
        """Start a sub-orchestration of ``parent`` as an instance of its own."""
        ...


class Execution:
    """Runs an orchestrator instance once, from its stored history to its end: the loop
    that joins the journal, the engine, and the parts that carry out its actions."""

    def __init__(
        self,
        runtime: Host,
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
        self._entities = EntityActivities(self.store)
        self.engine: Engine = OrchestrationEngine(
            orchestrator.fn,
            arguments,
            name=orchestrator.name,
            instance_id=instance_id,
            resolve_activity=self._entities.resolve,
            resolve_orchestrator=resolve_orchestrator,
            bind_input=lambda args, kwargs: orchestrator.bind_input(
                args, kwargs, via="ctx.continue_as_new"
            ),
            strict=orchestrator.strict,
            runaway_calls=runtime.runaway_calls,
            parent_instance_id=parent,
        )
        self.journal = Journal(self.store, instance_id, progress)
        self._lease = LeaseKeeper(self.store, instance_id)
        self._inbox: list[history.Event] = []
        self._arrived: list[history.Event] = []  # already durable, appended by others
        self._draining = False  # a _drain is scheduled on the loop
        self._flush_due = False  # a write of noted bookkeeping is scheduled (_note)
        self._subs_counted: set[str] = set()  # sub-orchestration calls counted by this run
        self._ended: asyncio.Future[None] | None = None  # set when the run is over
        self._context: contextvars.Context | None = None  # the run's, for _drain
        self._last_poll = 0.0
        self._ticker: asyncio.TimerHandle | None = None  # the next _tick
        self._polled_mark: int | None = None  # the store's write mark at the last poll
        self._loop: asyncio.AbstractEventLoop | None = None
        # Set while the orchestrator waits for a resume to start (suspended at the start).
        self._deferred: history.ExecutionStarted | None = None
        self._over = False  # the run ended (or is ending): outcomes go to _record_end

    # ------------------------------------------------------------------ run

    async def run(self) -> Outcome:
        self._loop = asyncio.get_running_loop()
        self._ended = self._loop.create_future()
        self._context = contextvars.copy_context()
        await self._lease.acquire_waiting(self.runtime.busy_timeout, take=self._open)
        try:
            return await self._run_leased()
        finally:
            self._lease.release()

    def _open(self, expected: str | None, lease: dict[str, Any]) -> bool:
        """The lease and the record marked running for this run: one write."""
        return self.journal.open_with_lease(
            self.orchestrator.name, self.parent, self.arguments, expected, lease
        )

    async def _run_leased(self) -> Outcome:
        assert self._ended is not None
        journal = self.journal
        record = journal.record
        assert record is not None  # opened with the lease
        self._history_id = record.history_id
        with collector_paused():
            events = journal.load()
            self.engine.load(events)
            suspended = suspended_in(events)
            # The engine keeps what it needs of them: the events go now, not at the end
            # of the run (a long history's are most of its memory), and the collector
            # does not scan them when it runs again.
            del events
        started = history.ExecutionStarted(
            time.time(), self.orchestrator.name, record.runs, KEY_SCHEME
        )
        journal.buffer(started)
        self._activities = Dispatcher(
            resources=self.runtime.resources,
            progress=self.progress,
            instance_id=self.instance_id,
            history_id=record.history_id,
            post=self._post,
            note=self._note,
            keep_late=journal.keep_late,
            journal=journal,  # shared results (share=True activities)
            post_batch=self._post_batch,
        )
        # The parts, behind start(call)/stop() (the Dispatcher has them too, and written()).
        self._timers: Part[TimerCall] = DurableTimers(self._post, self.progress)
        self._children: Part[ChildCall] = ChildRuns(self._run_child, self._post, self.instance_id)
        assert self._loop is not None
        self.progress.begin(self._loop.call_later)  # a change held back is told on time
        self._suspension = Suspension(suspended, self._set_status, self._resumed)
        self._arm_tick()
        try:
            if self._suspension.suspended:
                self._deferred = started  # the orchestrator starts when resumed
            else:
                self._start_engine(started)
            if not self.engine.done:
                self._wait_or_drain()
                await self._ended
        except (asyncio.CancelledError, KeyboardInterrupt) as exc:  # the kernel's interrupt
            self._abort(Status.INTERRUPTED, f"{type(exc).__name__}: run stopped before it finished")
            raise
        except BaseException as exc:
            self._abort(Status.FAILED, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self._over = True  # a _drain still scheduled does nothing
            if self._ticker is not None:
                self._ticker.cancel()
            self._stop_work()
        outcome = self.engine.outcome
        self._end(outcome.status, outcome.message)
        return outcome

    def _arm_tick(self) -> None:
        # A sub-orchestration ticks only as often as it polls: the loop's wake-ups for
        # the kernel's interrupt and the views' clock are its root run's to make (a
        # fan-out of thousands of waiting children would spend a core on ticks). A tick
        # is a timer, not a task that sleeps: each child of such a fan-out keeps one
        # handle alive, not a task, its coroutine, a sleep's future and their contexts,
        # which the cyclic collector would go over again and again. Ticks fall on a grid,
        # so that those of many runs are due at the same moment and wake the loop once.
        seconds = TICK_SECONDS if self.parent is None else POLL_SECONDS
        loop = self._loop
        assert loop is not None
        when = math.ceil((loop.time() + seconds) / TICK_GRID) * TICK_GRID
        self._ticker = loop.call_at(when, self._tick, context=self._context)

    def _tick(self) -> None:
        if self._over:
            return
        try:
            if not self._lease.renew_if_due():
                self._post(
                    history.ControlRequested(time.time(), "terminate", "lease lost")
                )  # another kernel took the instance over: stop here
            if self.parent is not None or time.monotonic() - self._last_poll >= POLL_SECONDS:
                self._poll_if_written()
            if self.parent is None:
                self.progress.changed()  # also moves the views' clock while nothing happens
        except Exception:  # the store, for a moment (a full disk): the next tick tries again
            logger.warning("tick of %s failed", self.instance_id, exc_info=True)
        finally:
            self._arm_tick()

    def nudge(self) -> None:
        """Look for new events at once (thread-safe); used after a raise in this process."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.poll)

    def _poll_if_written(self) -> None:
        """Poll, unless no other writer wrote since the last poll: a fan-out of thousands
        of waiting children would otherwise read the store twice a second each."""
        mark = self.store.write_mark()  # before the poll: a write during it moves it
        if mark == self._polled_mark:
            self._last_poll = time.monotonic()
            return
        self._polled_mark = mark
        self.poll()

    def poll(self) -> None:
        """Look for events and requests other writers appended (also: a nudge)."""
        self._last_poll = time.monotonic()
        arrived = self.journal.poll()
        if arrived:
            self._arrived.extend(arrived)
            self._schedule_drain()

    # ------------------------------------------------------------------ outcomes

    def _post(self, event: history.Event) -> None:
        self._inbox.append(event)
        if not self._draining:
            self._schedule_drain()

    def _post_batch(self, events: list[history.Event]) -> None:
        """Outcomes that arrived together (threads that ended): taken at once, as one
        chunk with whatever else is in the inbox."""
        self._inbox += events
        self._drain()

    def _schedule_drain(self) -> None:
        if not self._draining and not self._over:
            assert self._loop is not None
            self._draining = True
            self._loop.call_soon(self._drain, context=self._context)

    def _drain(self) -> None:
        """On the loop, once per batch: write what arrived as one chunk, then let the
        engine take it. An error here ends the run as it would have in its coroutine."""
        self._draining = False
        ended = self._ended
        if self._over or ended is None or ended.done():
            return
        if not self._inbox and not self._arrived:
            return  # taken already (a batch of threads' outcomes came first)
        try:
            self._take_outcomes()
            if self.engine.done:
                ended.set_result(None)
            else:
                self._wait_or_drain()
        except BaseException as exc:  # the coroutine fails, or records the interrupt
            if not ended.done():
                ended.set_exception(exc)

    def _take_outcomes(self) -> None:
        journal = self.journal
        inbox, self._inbox = self._inbox, []
        arrived, self._arrived = self._arrived, []
        foreign, seen = journal.write(inbox)
        self._activities.written()
        journal.flush_record()
        if arrived or foreign:
            events = arrived + foreign + seen
        else:
            events = seen
        ready = self._suspension.admit(events)
        if not ready:
            return  # suspended: all of it waits for the resume
        began = time.monotonic()
        step = self.engine.apply(ready, time.time())
        self._warn_if_slow("after a result", began, step)
        self._carry_out(step)

    def _wait_or_drain(self) -> None:
        """After a step: drain again if more arrived, else make durable what must not
        wait for the next outcome (which may find events others appended)."""
        if not self._inbox and not self._arrived:
            self._flush_before_waiting()
        if self._inbox or self._arrived:
            self._schedule_drain()

    # ------------------------------------------------------------------ steps

    def _start_engine(self, started: history.ExecutionStarted) -> None:
        began = time.monotonic()
        with collector_paused():
            step = self.engine.start(started)
            self._warn_if_slow("its start", began, step)
            self._carry_out(step)

    def _warn_if_slow(self, what: str, began: float, step: EngineStep) -> None:
        if time.monotonic() - began <= SLOW_STEP_SECONDS:
            return  # a step that blocked nothing: its calls need no counting
        calls = len(step.scheduled) + len(step.replayed) + len(step.subs) + len(step.timers)
        warn_if_slow(self.orchestrator.name, self.instance_id, what, began, calls)

    def _carry_out(self, step: EngineStep) -> None:
        """Append the history the step implies, then start the work it asks for."""
        if step.runaway is not None:
            warn_runaway(self.orchestrator.name, self.instance_id, *step.runaway)
        progress = self.progress
        if step.signals:  # queued before the history that says they were sent is written
            send_signals(self._entities.worker, self.instance_id, self._history_id, step.signals)
            for signal in step.signals:
                progress.sent(f"@{signal.entity.name}")
        self.journal.buffer_all(step.events)
        if step.replayed:
            progress.cached_calls(step.replayed)
        suspension = self._suspension
        for call in step.scheduled:
            progress.scheduled(call.activity.name)
            if suspension.suspended:
                suspension.hold(partial(self._activities.start, call))
            else:
                self._activities.start(call)
        for timer in step.timers:
            self._timers.start(timer)  # a timer's time passes while suspended too
        for sub in step.subs:
            name = f"sub:{sub.orchestrator.name}"
            if sub.attempt > 1:  # its failure before was retried, not a failed call
                progress.child_retried(name, sub.key in self._subs_counted)
            else:
                progress.scheduled(name)
            self._subs_counted.add(sub.key)
            if suspension.suspended:
                suspension.hold(partial(self._children.start, sub))
            else:
                self._children.start(sub)
        progress.waiting_events = list(step.waiting_events)
        if step.has_custom_status:
            self.journal.set_custom_status(step.custom_status)
            progress.custom_status = step.custom_status
        progress.changed()

    def _note(self, event: history.Event) -> None:
        """Bookkeeping for history only (a retry): it rides with the next chunk, but what
        must be on disk before the run waits (a retry's count) is written at the end of
        this loop turn when no outcome is coming to carry it."""
        self.journal.buffer(event)
        if self.journal.must_write_before_waiting() and not self._flush_due and self._loop:
            self._flush_due = True
            self._loop.call_soon(self._flush_noted, context=self._context)

    def _flush_noted(self) -> None:
        self._flush_due = False
        if not self._over and not self._inbox and not self._arrived:
            self._flush_before_waiting()  # else the drain to come writes it

    def _flush_before_waiting(self) -> None:
        """Before the run waits, make durable what must not wait for the next outcome."""
        if self.journal.must_write_before_waiting():
            foreign, _ = self.journal.write([])
            self._arrived.extend(foreign)  # already durable: applied in their order
        self.journal.flush_record()

    def _resumed(self) -> None:
        deferred, self._deferred = self._deferred, None
        if deferred is not None:
            self._start_engine(deferred)  # over the history up to the resume

    def _set_status(self, status: Status) -> None:
        self.progress.status = status.value
        self.progress.changed()
        self.journal.set_status(status)

    def _run_child(self, call: ChildCall) -> asyncio.Future[Outcome]:
        return self.runtime.start_child(self, call)

    # ------------------------------------------------------------------ ending

    def _stop_work(self) -> None:
        self._timers.stop()
        self._children.stop()
        self._activities.stop()

    def _abort(self, status: Status, message: str) -> None:
        """The run ends for a reason outside the orchestrator."""
        self.journal.buffer(self.engine.abort(status, message, time.time()))
        self._end(status, message)

    def _end(self, status: Status, message: str) -> None:
        try:
            self._record_end(status, message)
        except Exception:
            # The store may be what failed; the run's own error is the one to report.
            logger.warning("could not record the end of %s", self.instance_id, exc_info=True)
        finally:
            if status == Status.CONTINUED_AS_NEW:
                self.progress.status = status.value  # the view goes on with the next round
                self.progress.changed()
            else:
                self.progress.finish(status.value, message)

    def _record_end(self, status: Status, message: str) -> None:
        # Outcomes that arrived after the engine's last step are kept too.
        inbox, self._inbox = self._inbox, []
        if inbox:  # counted once written, before the record takes the counts
            self.journal.write(inbox)
        made_of = None
        if status == Status.COMPLETED and self.caller_input is not None:
            made_of = completed_with(
                self.orchestrator, self.caller_input, self.engine.code_used, self.progress.rows
            )
        # Ended inside a critical section: its locks go back (a run cut short keeps them;
        # its next run goes on inside the section), before the lease does. A run that
        # waits for them takes a holder without a lease for one that stopped inside its
        # section, and fails instead of waiting.
        releases_locks = self.engine.holds_locks and status != Status.INTERRUPTED
        lease = self._lease
        owner = lease.owner if lease.held and not releases_locks else None
        if self.journal.close(status, message, self.engine.output, made_of, owner):
            lease.given_back()
        if releases_locks:
            for entity in self.store.entities.release_locks(self.instance_id):
                self._entities.worker.kick(entity)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a history is read and replayed, and
    while the first step's calls are made: that allocates an object or more per call, all
    of which live on, and the collector would scan them again and again (a third of the
    time of a replay of 300,000 calls). Left as it was if it was off; it runs as usual
    again right after."""
    if not gc.isenabled() or os.environ.get("DURABLE_NB_GC_PAUSE") == "0":
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
