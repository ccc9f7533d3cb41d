"""The default executor: a thread pool lean enough for a durable step per activity.

``concurrent.futures.ThreadPoolExecutor`` costs a chain of trivial activities about
20 µs per step over a plain queue (measured on 2 cores): two locks and a semaphore per
``submit``, a ``Future`` with its ``Condition`` taken five times per call, a work item.
The dispatcher needs less: a call handed to a thread, and one callback on that thread
when it ends. :meth:`ActivityThreads.start_call` does that with one queue put and one
uncontended pool lock at each end. Its :class:`ThreadCall` answers the few questions
the dispatcher and the registry of leftover threads ask of a future (``done``,
``cancel``, ``result``, ``add_done_callback``), and ``submit`` still returns a real
``concurrent.futures.Future`` for everyone else.

Semantics follow the standard pool: a queued call can be cancelled, a running one
cannot; a worker thread survives what an activity raises (``BaseException`` included,
kept as the call's error); threads start when no idle one is there, up to
``max_workers``; at interpreter exit, calls already handed over are run to their end
(their results are checkpointed), as the standard pool's exit hook does.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from durable_nb.errors import ActivityLostError, ConfigurationError

logger = logging.getLogger(__name__)

_PENDING, _RUNNING, _CANCELLED, _FINISHED = range(4)


class ThreadHandle(Protocol):
    """What the dispatcher and the registry of leftover threads ask of an attempt
    running in a thread: a ``concurrent.futures.Future`` or a :class:`ThreadCall`."""

    def done(self) -> bool: ...

    def cancelled(self) -> bool: ...

    def cancel(self) -> bool: ...

    def exception(self) -> BaseException | None: ...

    def result(self) -> Any: ...

    def add_done_callback(self, fn: Callable[[Any], object]) -> None: ...


class ThreadCall:
    """One call handed to an :class:`ActivityThreads` pool. Its ``result`` and
    ``exception`` do not wait: ask them once ``done()`` (or in a done callback)."""

    __slots__ = (
        "_args",
        "_callbacks",
        "_error",
        "_fn",
        "_kwargs",
        "_lock",
        "_result",
        "_state",
        "ended_at",
        "started_at",
    )

    def __init__(
        self,
        lock: threading.Lock,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        callbacks: list[Callable[[Any], object]],
    ) -> None:
        self._lock = lock  # the pool's: one uncontended lock, not a Condition per call
        self._fn: Callable[..., Any] | None = fn
        self._args = args
        self._kwargs = kwargs
        self._callbacks: list[Callable[[Any], object]] | None = callbacks
        self._state = _PENDING
        self._result: Any = None
        self._error: BaseException | None = None
        self.started_at: float | None = None  # when a thread took it (epoch seconds)
        self.ended_at: float | None = None  # when its function returned or raised

    def done(self) -> bool:
        return self._state >= _CANCELLED

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def running(self) -> bool:
        return self._state == _RUNNING

    def cancel(self) -> bool:
        """Cancel the call if no thread took it yet; False once it runs or ran."""
        with self._lock:
            if self._state != _PENDING:
                return self._state == _CANCELLED
            self._state = _CANCELLED
            callbacks, self._callbacks = self._callbacks, None
        self._fn = None
        self._call_back(callbacks)
        return True

    def exception(self) -> BaseException | None:
        self._check_done()
        return self._error

    def result(self) -> Any:
        self._check_done()
        if self._error is not None:
            raise self._error
        return self._result

    def add_done_callback(self, fn: Callable[[Any], object]) -> None:
        with self._lock:
            if self._callbacks is not None:
                self._callbacks.append(fn)
                return
        self._call_back([fn])

    def _check_done(self) -> None:
        if self._state == _CANCELLED:
            raise concurrent.futures.CancelledError()
        if self._state != _FINISHED:
            raise concurrent.futures.InvalidStateError("the call has not ended yet")

    def _run(self) -> None:
        """In a worker thread."""
        with self._lock:
            if self._state != _PENDING:
                return  # cancelled while queued
            self._state = _RUNNING
        self.started_at = time.time()
        fn, self._fn = self._fn, None
        assert fn is not None
        try:
            self._result = fn(*self._args, **self._kwargs)
        except BaseException as exc:  # kept as the call's outcome, as the standard pool does
            self._error = exc
        self.ended_at = time.time()
        self._args, self._kwargs = (), {}  # let the arguments go with the call's end
        with self._lock:
            self._state = _FINISHED
            callbacks, self._callbacks = self._callbacks, None
        self._call_back(callbacks)

    def _call_back(self, callbacks: list[Callable[[Any], object]] | None) -> None:
        for callback in callbacks or ():
            try:
                callback(self)
            except Exception:
                logger.exception("a done callback of %r failed", self)

    def __repr__(self) -> str:
        state = ("pending", "running", "cancelled", "finished")[self._state]
        return f"<ThreadCall {state}>"


class ActivityThreads:
    """A pool of worker threads for synchronous activities (see the module docstring)."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "durable_nb") -> None:
        if max_workers < 1:
            raise ConfigurationError(
                f"a thread pool needs at least one worker, got max_workers={max_workers}",
                setting="max_workers",
                value=max_workers,
            )
        self.max_workers = max_workers
        self._prefix = thread_name_prefix
        self._queue: queue.SimpleQueue[ThreadCall | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a call that no start_call has counted on
        self._shut = False
        _POOLS.add(self)
        # A pool nobody refers to any more lets its idle threads go.
        weakref.finalize(self, _stop_workers, self._queue, self._threads)

    def start_call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        done: Callable[[ThreadCall], object],
    ) -> ThreadCall:
        """Run ``fn(*args, **kwargs)`` in a worker thread; ``done(call)`` is called in
        that thread when it ends (or here, if it is cancelled while queued)."""
        lock = self._lock
        call = ThreadCall(lock, fn, args, kwargs, [done])
        with lock:
            if self._shut:
                name = getattr(fn, "__name__", repr(fn))
                raise ActivityLostError(
                    f"activity {name!r} could not start: its thread pool was shut down "
                    "(the runtime was closed or reconfigured); run it again",
                    activity=name,
                )
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self.max_workers:
                self._spawn()
        self._queue.put(call)
        return call

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """The standard executor's method, for code that expects a real future."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def relay(call: ThreadCall) -> None:
            if call.cancelled():
                future.cancel()
                future.set_running_or_notify_cancel()
            elif future.set_running_or_notify_cancel():
                error = call.exception()
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(call.result())

        self.start_call(fn, args, kwargs, relay)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if not self._shut:
                self._shut = True
                for _ in self._threads:
                    self._queue.put(None)  # after the calls queued: those still run
        if cancel_futures:
            self._cancel_queued()
        if wait:
            for thread in list(self._threads):
                if thread is not threading.current_thread():
                    thread.join()

    def _cancel_queued(self) -> None:
        stops = 0
        while True:
            try:
                call = self._queue.get_nowait()
            except queue.Empty:
                break
            if call is None:
                stops += 1
            else:
                call.cancel()
        for _ in range(stops):
            self._queue.put(None)

    def _spawn(self) -> None:
        """Under the lock: one more worker thread. Daemon threads, so that an idle pool
        never holds the interpreter open; _at_exit waits for the calls handed over."""
        thread = threading.Thread(
            target=_work,
            args=(self._queue, weakref.ref(self)),
            name=f"{self._prefix}_{len(self._threads)}",
            daemon=True,
        )
        thread.start()
        self._threads.append(thread)

    def _ended_one(self) -> None:
        with self._lock:
            self._idle += 1

    def __repr__(self) -> str:
        return f"<ActivityThreads {len(self._threads)}/{self.max_workers} threads>"


def _work(calls: queue.SimpleQueue[ThreadCall | None], pool: weakref.ref[ActivityThreads]) -> None:
    # The pool is held weakly: a pool nobody refers to shuts down (via its finalizer
    # in _POOLS), and its threads end on the None it queues.
    while True:
        call = calls.get()
        if call is None:
            return
        call._run()
        del call  # drop the call (its result) before waiting for the next one
        alive = pool()
        if alive is not None:
            alive._ended_one()
            del alive


def _stop_workers(calls: queue.SimpleQueue[ThreadCall | None], threads: list[Any]) -> None:
    for _ in threads:
        calls.put(None)


_POOLS: weakref.WeakSet[ActivityThreads] = weakref.WeakSet()


@atexit.register
def _at_exit() -> None:
    """Run the calls already handed to a pool to their end before the interpreter goes
    (their results reach the store), as concurrent.futures does for its pools."""
    for pool in list(_POOLS):
        pool.shutdown(wait=True)
