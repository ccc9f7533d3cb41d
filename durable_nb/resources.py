"""The shared means of running activities: named executors, concurrency limits, and
the threads still running for runs that ended.

Limits live here, not in a run, because they protect something outside the
notebook (a rate-limited API, a database): every run in the kernel shares them, on
whatever executor the calls go to. The limiters run on the event loop only; a slot
given back from a worker thread is handed to the loop first.
"""

from __future__ import annotations

import asyncio
import collections
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from durable_nb.errors import ConfigurationError
from durable_nb.executors import as_executor
from durable_nb.threads import ActivityThreads, ThreadHandle

if TYPE_CHECKING:
    from durable_nb.definitions import ScheduledCall

DEFAULT_MAX_WORKERS = 32
DEFAULT = "threads"


class Limiter:
    """At most ``limit`` attempts of one activity at once; waiters start in order."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self._waiting: collections.deque[Callable[[], None]] = collections.deque()

    def acquire_or_wait(self, start: Callable[[], None]) -> None:
        if self.in_use < self.limit:
            self.in_use += 1
            start()
        else:
            self._waiting.append(start)

    def release(self) -> None:
        if self._waiting:
            self._waiting.popleft()()  # the slot passes straight to the next waiter
        else:
            self.in_use -= 1

    def forget(self, start: Callable[[], None]) -> None:
        try:
            self._waiting.remove(start)
        except ValueError:
            pass


class LimiterChain:
    """Several limits at once (the activity's and the global one), taken in a fixed
    order so two calls can never wait on each other."""

    def __init__(self, limiters: list[Limiter]) -> None:
        self.limiters = limiters
        self._pending: dict[Callable[[], None], _Acquisition] = {}

    def acquire_or_wait(self, start: Callable[[], None]) -> None:
        acquisition = _Acquisition(self, start)
        self._pending[start] = acquisition
        acquisition.next()

    def release(self) -> None:
        for limiter in reversed(self.limiters):
            limiter.release()

    def forget(self, start: Callable[[], None]) -> None:
        acquisition = self._pending.pop(start, None)
        if acquisition is not None:
            acquisition.abandon()


class _Acquisition:
    def __init__(self, chain: LimiterChain, start: Callable[[], None]) -> None:
        self.chain = chain
        self.start = start
        self.taken = 0
        self.waiting_on: Limiter | None = None

    def next(self) -> None:
        if self.waiting_on is not None:
            self.taken += 1
        limiters = self.chain.limiters
        if self.taken == len(limiters):
            self.waiting_on = None
            self.chain._pending.pop(self.start, None)
            self.start()
            return
        self.waiting_on = limiters[self.taken]
        self.waiting_on.acquire_or_wait(self.next)

    def abandon(self) -> None:
        if self.waiting_on is not None:
            self.waiting_on.forget(self.next)
        for limiter in reversed(self.chain.limiters[: self.taken]):
            limiter.release()


SlotLimit = Limiter | LimiterChain


class LeftoverThreads:
    """Threads still running for runs that ended, by owner (``instance@history_id``) and call
    key: a later run of the same history takes one over instead of running its call
    again. A thread keeps its concurrency slot until it really ends."""

    def __init__(self) -> None:
        self._threads: dict[tuple[str, str], ThreadHandle] = {}

    def __len__(self) -> int:
        return len(self._threads)

    def keep(
        self,
        owner: str,
        key: str,
        future: ThreadHandle,
        limiter: SlotLimit | None,
    ) -> None:
        """Register a thread that outlives its run (called on the loop); when it ends, it
        is forgotten and its slot given back, on the loop."""
        entry = (owner, key)
        self._threads[entry] = future
        loop = asyncio.get_running_loop()

        def ended(_: ThreadHandle) -> None:
            def on_loop() -> None:
                if self._threads.get(entry) is future:
                    del self._threads[entry]
                if limiter is not None:
                    limiter.release()

            try:
                loop.call_soon_threadsafe(on_loop)
            except RuntimeError:  # the loop is closed: nobody waits for the slot
                pass

        future.add_done_callback(ended)

    def take(self, owner: str, key: str) -> ThreadHandle | None:
        """The thread ``owner`` left for ``key``, if worth adopting: still running (it
        holds its slot), or succeeded (its result may not have reached the history yet).
        A failure is dropped and the call retried by the new run, as every failure of an
        earlier run is."""
        future = self._threads.pop((owner, key), None)
        if future is None or not _worth_adopting(future):
            return None
        return future


def _worth_adopting(future: ThreadHandle) -> bool:
    if not future.done():
        return True
    return not future.cancelled() and future.exception() is None


class Resources:
    """Executors by name, the per-activity and global concurrency limits, and the
    threads left running by runs that ended."""

    def __init__(self, max_workers: int = DEFAULT_MAX_WORKERS) -> None:
        self.max_workers = max_workers
        self.max_in_flight: int | None = None
        self.default = DEFAULT
        self._executors: dict[str, Any] = {}
        self._made: set[str] = set()  # the executors created here, shut down by close()
        self._limits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Limiter]] = (
            weakref.WeakKeyDictionary()
        )
        self.leftover_threads = LeftoverThreads()  # shared by the runs of this process

    def set_executor(self, value: Any, name: str | None = None) -> None:
        """Use ``value`` ("threads", "processes", an Executor, a Dask Client) as the
        executor named ``name``, or as the default when no name is given."""
        if name is None and value == DEFAULT:
            self.default = DEFAULT
            return
        target = name or "default"
        self._executors[target] = as_executor(value)
        if value == "processes":
            self._made.add(target)
        if name is None:
            self.default = target

    def executor_named(self, name: str) -> Any:
        found = self._executors.get(name)
        if found is not None:
            return found
        if name == DEFAULT:
            found = ActivityThreads(self.max_workers, thread_name_prefix="durable_nb")
        elif name == "processes":
            found = as_executor("processes")
        else:
            known = ", ".join(sorted({DEFAULT, "processes", *self._executors}))
            raise ConfigurationError(
                f"no executor named {name!r} (known: {known}); register it with "
                f"durable_nb.configure(executors={{{name!r}: ...}})",
                setting="executor",
                value=name,
            )
        self._executors[name] = found
        self._made.add(name)
        return found

    def executor_for(self, call: ScheduledCall) -> Any:
        """Where a synchronous activity call runs (its --executor, or the default)."""
        return self.executor_named(call.activity.options.executor or self.default)

    def limiter_for(self, call: ScheduledCall) -> SlotLimit | None:
        """The limits a call must fit in: its activity's, then the global one; shared by
        every run on the running loop."""
        limit = call.activity.options.concurrency
        if limit is None and self.max_in_flight is None:
            return None  # the common case: no limit to look up
        per_loop = self._limits.setdefault(asyncio.get_running_loop(), {})
        limits = []
        if limit is not None:
            limits.append(self._limit(per_loop, f"{call.activity.name}/{limit}", limit))
        if self.max_in_flight is not None:
            limits.append(self._limit(per_loop, f"*/{self.max_in_flight}", self.max_in_flight))
        if not limits:
            return None
        return limits[0] if len(limits) == 1 else LimiterChain(limits)

    @staticmethod
    def _limit(per_loop: dict[str, Limiter], key: str, limit: int) -> Limiter:
        found = per_loop.get(key)
        if found is None:
            found = per_loop[key] = Limiter(limit)
        return found

    def close(self) -> None:
        for name in self._made:
            executor = self._executors.pop(name, None)
            if executor is not None:
                executor.shutdown(wait=False)
        self._made.clear()
