"""Carrying out scheduled activity calls: attempts, retries, timeouts, concurrency.

Attempts are driven by callbacks on the event loop rather than one coroutine per
call: a chain of activities then costs one thread hop per step, and a 10,000-way
fan-out creates no 10,000 tasks. Only ``async def`` activities get a task.

Everything here runs on the loop thread, except :meth:`Dispatcher._thread_done`,
which the executor calls from its worker thread and which only hands over: threads
that end together wake the loop once (a queue and a flag), and the loop takes all
their outcomes in one callback and posts them together (``post_batch``).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from durable_nb import history
from durable_nb.attempts import Attempt
from durable_nb.entity_store import message_id
from durable_nb.errors import ActivityLostError, ActivityTimeoutError
from durable_nb.executors import SubmitWindow
from durable_nb.failures import annotate, as_activity_error, explain_bad_arguments
from durable_nb.options import with_retry
from durable_nb.progress import Progress
from durable_nb.resources import Resources, SlotLimit
from durable_nb.threads import ThreadHandle

if TYPE_CHECKING:
    from durable_nb.definitions import ScheduledCall
    from durable_nb.journal import Journal

logger = logging.getLogger(__name__)

Emit = Callable[[history.Event], None]
_Ended = tuple[Attempt, ThreadHandle]  # a thread that ended, and its attempt


class Dispatcher:
    """Runs the calls the engine schedules and reports how each one ended."""

    def __init__(
        self,
        *,
        resources: Resources,
        progress: Progress,
        instance_id: str,
        history_id: str,
        post: Emit,
        note: Emit,
        keep_late: Emit,
        journal: Journal | None = None,
        post_batch: Callable[[list[history.Event]], None] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        # Threads hand their outcomes over in the run's context, as its own callbacks run.
        self._context = contextvars.copy_context()
        self._resources = resources  # executors, limits, leftover threads: shared
        self._progress = progress
        self._instance_id = instance_id
        # Leftover threads are adopted only by a run on the same history: after
        # continue_as_new a call with the same key is a new call.
        self._owner = f"{instance_id}@{history_id}"
        self._history_id = history_id
        self._post = post  # a final outcome: the engine must see it
        self._note = note  # bookkeeping for history only (retries)
        self._keep_late = keep_late  # an outcome after the run ended
        # Shared results (share=True activities): looked up before a call runs, and
        # recorded with the completion. None: every call runs.
        self._journal = journal
        self._asking: list[ScheduledCall] = []  # share=True calls to look up, in one batch
        self._live: set[Attempt] = set()
        self._retry_timers: set[asyncio.TimerHandle] = set()
        self._queued: dict[Callable[[], None], SlotLimit] = {}
        self._windows: dict[int, SubmitWindow[Attempt]] = {}  # by id(executor)
        self._ended: collections.deque[_Ended] = collections.deque()  # for the loop to take
        self._woken = False  # the loop is to take _ended soon
        self._post_batch = post_batch  # the outcomes of threads that ended together
        self._batch: list[history.Event] | None = None  # collected while taking them
        self._slots_to_free: list[SlotLimit] = []  # of outcomes not written yet
        self.stopped = False

    # ------------------------------------------------------------ starting

    def start(self, call: ScheduledCall) -> None:
        """Carry out a call the engine scheduled: its first attempt, or, for a call whose
        attempts failed in a run cut short during its backoff, the next one when due."""
        if call.resume is not None:
            failed, due, first_started = call.resume
            self._progress.retried(call.activity.name)
            self._retry_later(max(0.0, due - time.time()), call, failed + 1, first_started)
            return
        if call.activity.options.share and self._journal is not None:
            self._ask_shared(call)
            return
        self._run(call, 1, time.time())

    def _run(self, call: ScheduledCall, number: int, first_started: float) -> None:
        leftovers = self._resources.leftover_threads
        leftover = leftovers.take(self._owner, call.key) if leftovers else None
        if leftover is not None:
            # The same call ran in a thread of an interrupted run of this instance: take
            # its outcome instead of doing the work twice. Still running, it holds its
            # slot; already done, its result may not have reached the history this run
            # loaded (the thread's own callback writes it a moment after it is done).
            self._adopt(call, number, first_started, leftover)
            return
        limiter = self._resources.limiter_for(call)
        if limiter is None:
            self._start(call, number, first_started, None)
            return

        def start() -> None:
            self._queued.pop(start, None)
            self._start(call, number, first_started, limiter)

        self._queued[start] = limiter
        limiter.acquire_or_wait(start)

    def _ask_shared(self, call: ScheduledCall) -> None:
        """Look a share=True call up among the shared results before running it. The
        calls one step schedules are looked up together, on the loop's next turn: a few
        queries for a whole fan-out, and none of them interleaved with starting threads
        (a query releases the GIL, and getting it back from busy workers costs more than
        the query)."""
        if not self._asking:
            self._loop.call_soon(self._answer_shared)
        self._asking.append(call)

    def _answer_shared(self) -> None:
        """Complete each asked call that matches a young enough success of any instance:
        posted like a result (so written to this instance's history, where replay finds
        it) and counted as cached, not ran. The others run."""
        calls, self._asking = self._asking, []
        if self.stopped or self._journal is None:
            return  # the run ended first: like queued calls, they never started
        found = self._journal.find_shared(calls)
        for call in calls:
            event = found.get(call.key)
            if event is not None:
                self._post(event)  # counted as cached when it is written
            else:
                self._run(call, 1, time.time())

    def _adopt(
        self,
        call: ScheduledCall,
        number: int,
        first_started: float,
        future: ThreadHandle,
    ) -> None:
        attempt = Attempt(self, call, number, first_started, None)
        attempt.handle = future
        self._live.add(attempt)
        self._progress.attempt_started(call.activity.name)
        future.add_done_callback(attempt.thread_done)

    def _start(
        self, call: ScheduledCall, number: int, first_started: float, limiter: SlotLimit | None
    ) -> None:
        if self.stopped:
            if limiter is not None:
                limiter.release()
            return
        attempt = Attempt(self, call, number, first_started, limiter)
        self._live.add(attempt)
        act = call.activity
        self._progress.attempt_started(act.name)
        try:
            if act.is_async:
                attempt.started = time.time()
                task = asyncio.ensure_future(act.fn(*call.args, **call.kwargs))
                task.add_done_callback(attempt.task_done)
                attempt.handle = task
            else:
                self._submit(attempt, self._window_for(call))
        except Exception as exc:  # the executor refused (shut down), or fn is not callable
            self._finish(attempt, None, exc)
            return
        timeout = act.options.timeout
        if timeout is not None and not attempt.finished:
            # Its time runs from here, as when every attempt went to the executor's queue.
            attempt.timer = self._loop.call_later(timeout, self._timed_out, attempt, timeout)

    def _window_for(self, call: ScheduledCall) -> SubmitWindow[Attempt]:
        executor = self._resources.executor_for(call)
        window = self._windows.get(id(executor))
        if window is None or window.executor is not executor:
            window = self._windows[id(executor)] = SubmitWindow(executor)
        return window

    def _submit(self, attempt: Attempt, window: SubmitWindow[Attempt]) -> None:
        """Hand the attempt to its executor now, or when one of its window's ends."""
        if window.submitted >= window.size:
            window.waiting.append(attempt)
            return
        call = attempt.call
        act = call.activity
        attempt.started = time.time()
        args = call.args
        if act.takes_message_id:  # an entity call: its message's id is made of the call's
            args = (message_id(self._instance_id, self._history_id, call.key), *args)
        if window.start_call is not None:  # the default pool: no Future per call
            attempt.handle = window.start_call(act.fn, args, call.kwargs, attempt.thread_done)
        else:
            future = window.executor.submit(act.fn, *args, **call.kwargs)
            attempt.handle = future
            future.add_done_callback(attempt.thread_done)
        window.submitted += 1
        attempt.window = window

    def _submitted_ended(self, window: SubmitWindow[Attempt]) -> None:
        """An attempt this run submitted ended in its executor: submit the next waiting
        one of that executor (skipping those that timed out while waiting)."""
        window.submitted -= 1
        waiting = window.waiting
        while waiting and window.submitted < window.size and not self.stopped:
            queued = waiting.popleft()
            if queued.finished:
                continue
            try:
                self._submit(queued, window)
            except Exception as exc:  # the executor refused (shut down)
                self._finish(queued, None, exc)

    # ------------------------------------------------------------ ending

    def _thread_done(self, attempt: Attempt, future: ThreadHandle) -> None:
        """Worker thread: hand the outcome to the loop, or keep it if the run is over.
        The loop is woken once for the threads that end before it takes them."""
        if self.stopped:
            self._keep_if_success(attempt, future)
            return
        self._ended.append((attempt, future))
        if self._woken:
            return  # _take_ended is scheduled and has not cleared the flag yet
        self._woken = True
        try:
            self._loop.call_soon_threadsafe(self._take_ended, context=self._context)
        except RuntimeError:  # the loop is closed: the run is over
            self._keep_ended()

    def _take_ended(self) -> None:
        """On the loop: the outcomes of the threads that ended, as one batch."""
        self._woken = False  # before taking: a thread that ends from now on wakes again
        if self._ended:
            self._as_one_batch(self._take_threads)

    def _take_threads(self) -> None:
        ended = self._ended
        while ended:
            attempt, future = ended.popleft()
            try:
                self._future_done(attempt, future)
            except Exception:  # one outcome that cannot be handled strands no other
                logger.exception("could not take the outcome of %s", attempt.call.key)

    def _as_one_batch(self, take: Callable[[], None]) -> None:
        """Run ``take`` with the outcomes it emits posted together, and taken at once."""
        batch: list[history.Event] = []
        self._batch = batch
        try:
            take()
        finally:
            self._batch = None
            if batch:
                if self._post_batch is not None:
                    self._post_batch(batch)
                else:
                    for event in batch:
                        self._post(event)

    def _emit(self, event: history.Event) -> None:
        """Post an outcome; while a batch of threads' outcomes is taken, with the batch."""
        if self._batch is not None:
            self._batch.append(event)
        else:
            self._post(event)

    def _keep_ended(self) -> None:
        while True:
            try:
                attempt, future = self._ended.popleft()
            except IndexError:
                return
            self._keep_if_success(attempt, future)

    def _future_done(self, attempt: Attempt, future: ThreadHandle) -> None:
        if self.stopped:
            self._keep_if_success(attempt, future)
            return
        if attempt.window is not None:
            self._submitted_ended(attempt.window)
        if future.cancelled():  # by the executor (shut down with cancel_futures)
            lost = ActivityLostError(
                f"activity {attempt.call.activity.name!r} (instance {self._instance_id}, call "
                f"{attempt.call.key}): its executor cancelled the attempt; run it again",
                activity=attempt.call.activity.name,
                call=attempt.call.key,
                attempt=attempt.number,
                instance_id=self._instance_id,
            )
            self._finish(attempt, None, lost)
            return
        error = future.exception()
        self._finish(attempt, None if error is not None else future.result(), error)

    def _task_done(self, attempt: Attempt, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            if not attempt.finished:
                self._release(attempt)
            return
        error = task.exception()
        result = None if error is not None else task.result()
        if len(self._live) > 1 or self._batch is not None:
            # Others may end in this loop turn too: one drain, scheduled, takes them all.
            self._finish(attempt, result, error)
        else:
            # The only attempt in flight (a chain's): taken now, not one loop turn later.
            self._as_one_batch(partial(self._finish, attempt, result, error))

    def _timed_out(self, attempt: Attempt, timeout: float) -> None:
        call = attempt.call
        error = ActivityTimeoutError(
            f"activity {call.activity.name!r} (instance {self._instance_id}, call {call.key}) "
            f"attempt {attempt.number} ran longer than its timeout of {timeout:g} s",
            activity=call.activity.name,
            call=call.key,
            attempt=attempt.number,
            timeout=timeout,
            instance_id=self._instance_id,
        )
        if isinstance(attempt.handle, asyncio.Task):
            attempt.handle.cancel()
        # A thread cannot be stopped: it is abandoned and its outcome ignored.
        self._finish(attempt, None, error)

    def _release(self, attempt: Attempt) -> None:
        attempt.finished = True
        attempt.handle = None  # the future's callback refers back: break the cycle
        self._live.discard(attempt)
        if attempt.timer is not None:
            attempt.timer.cancel()
        self._progress.attempt_ended(attempt.call.activity.name)
        if attempt.limiter is not None:
            attempt.limiter.release()

    def _finish(self, attempt: Attempt, result: Any, error: BaseException | None) -> None:
        if attempt.finished:
            return
        call = attempt.call
        name = call.activity.name
        started, ended = attempt.began(), attempt.ended()
        retry = False
        if error is not None:
            error = explain_bad_arguments(call, error, self._instance_id)
            # The call's own policy (ctx.call_activity_with_retry), else the activity's.
            retry = with_retry(call.activity.options, call.retry).should_retry(
                error, attempt.number, attempt.first_started, time.time()
            )
            error = as_activity_error(error, call, attempt.number, self._instance_id)
        if not retry and attempt.limiter is not None:
            # Its slot is given back once the outcome is written (written()): calls in
            # flight plus outcomes not on disk yet never pass the limit, so a kill makes
            # at most `concurrency` calls of the activity run again.
            self._slots_to_free.append(attempt.limiter)
            attempt.limiter = None
        self._release(attempt)
        if error is None:
            if call.activity.options.share and self._journal is not None:
                self._journal.share(call.key)
            self._emit(
                history.TaskCompleted(ended, call.key, name, result, attempt.number, started)
            )
            return
        if retry:
            delay = with_retry(call.activity.options, call.retry).delay_before(attempt.number + 1)
            kind, text = type(error).__name__, str(error)
            self._note(
                history.TaskRetried(
                    ended, call.key, name, attempt.number, kind, text, delay, started
                )
            )
            self._progress.retried(name)
            logger.info("activity %s attempt %s failed (%s); retrying", name, attempt.number, text)
            self._retry_later(delay, call, attempt.number + 1, attempt.first_started)
            return
        annotate(error, name, attempt.number, self._instance_id, call.key)
        kind = type(error).__name__
        self._emit(
            history.TaskFailed(
                ended, call.key, name, kind, str(error), attempt.number, started, error=error
            )
        )

    def _retry_later(
        self, delay: float, call: ScheduledCall, number: int, first_started: float
    ) -> None:
        timer: asyncio.TimerHandle

        def fire() -> None:
            self._retry_timers.discard(timer)
            self._progress.retry_started(call.activity.name)
            self._run(call, number, first_started)

        timer = self._loop.call_later(delay, fire)
        self._retry_timers.add(timer)

    def _keep_if_success(self, attempt: Attempt, future: ThreadHandle) -> None:
        if attempt.kept or future.cancelled() or future.exception() is not None:
            return
        attempt.kept = True
        call = attempt.call
        event = history.TaskCompleted(
            time.time(),
            call.key,
            call.activity.name,
            future.result(),
            attempt.number,
            attempt.began(future),
        )
        self._keep_late(event)

    # ------------------------------------------------------------ stopping

    def written(self) -> None:
        """The outcomes posted so far are on disk: their concurrency slots are free."""
        if not self._slots_to_free:
            return  # after most writes: no limit, or no outcome held a slot
        slots, self._slots_to_free = self._slots_to_free, []
        for slot in slots:
            slot.release()

    def stop(self) -> None:
        """The run ended: start nothing new; threads finish and their results are kept."""
        self.stopped = True
        self.written()  # outcomes not written now are kept by the run's end or lost
        self._asking = []  # not looked up yet: they never start
        for timer in self._retry_timers:
            timer.cancel()
        self._retry_timers.clear()
        for start, waiting_on in list(self._queued.items()):
            waiting_on.forget(start)
        self._queued.clear()
        for window in self._windows.values():
            window.waiting.clear()  # never submitted: released below with the rest
        for attempt in list(self._live):
            handle = attempt.handle
            if isinstance(handle, asyncio.Task):
                self._release(attempt)
                handle.cancel()
                continue
            if handle is not None and handle.cancel():
                self._release(attempt)  # queued in the pool, never started: drop it
                continue
            running_thread = handle is not None and not handle.done()
            limiter = attempt.limiter
            if running_thread:
                attempt.limiter = None  # the thread keeps its slot until it really ends
            self._release(attempt)
            if handle is not None:
                if running_thread:
                    # A next run of this history may adopt it (LeftoverThreads.take).
                    self._resources.leftover_threads.keep(
                        self._owner, attempt.call.key, handle, limiter
                    )
                else:
                    # Its hand-over is still queued on the loop: keep the result now.
                    self._keep_if_success(attempt, handle)
        self._keep_ended()
