"""One run of one instance: the asyncio loop that joins store, engine and executor.

The order of things is what makes a run durable:

1. completions of activities are collected in an inbox;
2. the inbox is appended to the store in one atomic chunk;
3. only then does the engine see them and resume the orchestrator.

So a result is on disk before the orchestrator acts on it, and a kill at any
moment loses at most the activities that were in flight.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from durable_nb import history
from durable_nb.dispatch import Dispatcher
from durable_nb.engine import OrchestrationEngine, Step
from durable_nb.engine.replay import COMPLETED
from durable_nb.errors import (
    DurableNbError,
    ResultNotStorableError,
    StoreError,
)
from durable_nb.progress import Progress
from durable_nb.store import CheckpointStore, InstanceRecord

if TYPE_CHECKING:
    from durable_nb.definitions import Orchestrator
    from durable_nb.runtime import Runtime

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.2  # wakes the loop so the kernel's interrupt is seen promptly
COMPACT_AFTER_CHUNKS = 32


@dataclass
class Outcome:
    """How a run ended."""

    status: str  # completed | failed
    output: Any = None
    failure: BaseException | None = None


class Execution:
    """Runs an orchestrator instance once, from its stored history to its end."""

    def __init__(
        self,
        runtime: Runtime,
        orchestrator: Orchestrator,
        arguments: dict[str, Any],
        instance_id: str,
        progress: Progress,
    ) -> None:
        self.runtime = runtime
        self.store: CheckpointStore = runtime.store
        self.orchestrator = orchestrator
        self.instance_id = instance_id
        self.progress = progress
        self.engine = OrchestrationEngine(
            orchestrator.fn,
            arguments,
            name=orchestrator.name,
            instance_id=instance_id,
            strict=orchestrator.strict,
        )
        self._inbox: list[history.Event] = []
        self._unwritten: list[history.Event] = []
        self._wake: asyncio.Event | None = None
        self._record: InstanceRecord | None = None
        self._record_dirty = False
        self._chunks = 0  # history chunks of the instance, loaded and written

    # ------------------------------------------------------------------ run

    async def run(self) -> Outcome:
        self._wake = asyncio.Event()
        record = self._open_record()
        events, self._chunks = self.store.load_history(self.instance_id)
        self.engine.load(events)
        started = history.ExecutionStarted(time.time(), self.orchestrator.name, record.runs)
        self._unwritten.append(started)
        self._dispatcher = Dispatcher(
            executor=self.runtime.executor,
            limiter_for=self.runtime.limiter_for,
            orphans=self.runtime.orphans,
            progress=self.progress,
            instance_id=self.instance_id,
            post=self._post,
            note=self._unwritten.append,
            keep_late=self._store_late,
        )
        self.progress.begin()
        ticker = asyncio.ensure_future(self._tick())
        try:
            self._apply(self.engine.start(started))
            while not self.engine.done:
                if not self._inbox:
                    await self._wake.wait()
                self._wake.clear()
                events, self._inbox = self._inbox, []
                self._apply(self.engine.apply(self._persist(events)))
        except (asyncio.CancelledError, KeyboardInterrupt) as exc:  # the kernel's interrupt
            self._end("interrupted", f"{type(exc).__name__}: run stopped before it finished")
            raise
        except BaseException as exc:
            self._end("failed", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            ticker.cancel()
            self._dispatcher.stop()
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
        record.finished_at, record.error = None, None
        self.store.put_instance(record)
        self._record = record
        return record

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            self.progress.changed()

    # ------------------------------------------------------------------ steps

    def _apply(self, step: Step) -> None:
        progress = self.progress
        for name in step.cached:
            progress.cached(name)
        if step.scheduled:
            now = time.time()
            for call in step.scheduled:
                self._unwritten.append(history.TaskScheduled(now, call.key, call.activity.name))
                progress.scheduled(call.activity.name)
                self._dispatcher.dispatch(call)
        if step.has_custom_status:
            self._unwritten.append(history.CustomStatusSet(time.time(), step.custom_status))
            assert self._record is not None
            self._record.custom_status = step.custom_status
            self._record_dirty = True
        progress.changed()

    def _post(self, event: history.Event) -> None:
        self._inbox.append(event)
        assert self._wake is not None
        self._wake.set()

    def _persist(self, events: Sequence[history.Event]) -> list[history.Event]:
        """Write ``events`` (and buffered bookkeeping events) as one atomic chunk.

        Returns the events the engine should see: a completion whose result cannot
        be pickled becomes a failure that says so.
        """
        chunk = self._unwritten + list(events)
        self._unwritten = []
        seen = list(events)
        if chunk:
            try:
                self._append(chunk)
            except (pickle.PicklingError, TypeError, AttributeError):
                replaced = self._unstorable(chunk)
                if not replaced:
                    raise
                chunk = [replaced.get(id(event), event) for event in chunk]
                self._append(chunk)
                seen = [replaced.get(id(event), event) for event in seen]
        if self._record_dirty and self._record is not None:
            self._record.updated_at = time.time()
            self.store.put_instance(self._record)
            self._record_dirty = False
        return seen

    def _append(self, chunk: list[history.Event]) -> None:
        try:
            self.store.append(self.instance_id, chunk)
            self._chunks += 1
        except (pickle.PicklingError, TypeError, AttributeError):
            raise  # a value that cannot be pickled; the caller finds which
        except Exception as exc:
            raise StoreError(
                f"could not write the checkpoints of instance {self.instance_id!r} to "
                f"{self.store.location}: {exc}. Results checkpointed before are kept; fix "
                "the store (disk space, permissions) and rerun to resume."
            ) from exc

    def _unstorable(self, chunk: list[history.Event]) -> dict[int, history.Event]:
        """Failures to stand in for completions whose result cannot be pickled."""
        replaced: dict[int, history.Event] = {}
        for event in chunk:
            if not isinstance(event, history.TaskCompleted):
                continue
            try:
                pickle.dumps(event.result, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as why:
                error = ResultNotStorableError(
                    f"activity {event.activity!r} (instance {self.instance_id}, call "
                    f"{event.key}) returned a {type(event.result).__qualname__}, which "
                    f"cannot be checkpointed ({why}); return plain data (numbers, strings, "
                    "lists, dicts, arrays, DataFrames) instead"
                )
                replaced[id(event)] = history.TaskFailed(
                    event.timestamp,
                    event.key,
                    event.activity,
                    type(error).__name__,
                    str(error),
                    event.attempts,
                    error,
                )
                row = self.progress.row(event.activity)
                row.ran -= 1
                row.failed += 1
        return replaced

    def _store_late(self, event: history.Event) -> None:
        """A result that arrived after the run ended (interrupt, failure, task_any):
        keep it, so the next run need not redo the work. May run in a worker thread."""
        try:
            self.store.append(self.instance_id, [event])
            logger.debug("kept a late result for instance %s", self.instance_id)
        except Exception:
            logger.warning("could not keep a late result of %s", self.instance_id, exc_info=True)

    # ------------------------------------------------------------------ ending

    def _finish(self) -> Outcome:
        engine = self.engine
        if engine.status == COMPLETED:
            self._end("completed", "")
            return Outcome("completed", output=engine.output)
        failure = engine.failure
        assert failure is not None
        self._end("failed", f"{type(failure).__name__}: {failure}")
        return Outcome("failed", failure=failure)

    def _end(self, status: str, message: str) -> None:
        now = time.time()
        calls = tuple(self.engine.calls) if self.orchestrator.strict else None
        if status == "interrupted":
            calls = None  # a partial run is no reference for strict mode
        self._unwritten.append(history.ExecutionFinished(now, status, message, calls))
        record = self._record
        try:
            self._record_end(status, message, now, record)
        except Exception:
            # The store may be what failed; the run's own error is the one to report.
            logger.warning("could not record the end of %s", self.instance_id, exc_info=True)
        finally:
            self.progress.finish(status, message)

    def _record_end(
        self, status: str, message: str, now: float, record: InstanceRecord | None
    ) -> None:
        # Completions that arrived after the engine's last step are kept too.
        inbox, self._inbox = self._inbox, []
        self._persist(inbox)
        if record is not None:
            record.status, record.finished_at, record.updated_at = status, now, now
            record.error = message or None
            totals = self.progress.totals()
            record.counts = {
                "calls": totals.total,
                "cached": totals.cached,
                "ran": totals.ran,
                "failed": totals.failed,
                "retried": totals.retried,
            }
            record.output = self.engine.output if status == "completed" else None
            self._put_record(record)
        if self._chunks > COMPACT_AFTER_CHUNKS:
            self.store.compact(self.instance_id)

    def _put_record(self, record: InstanceRecord) -> None:
        try:
            self.store.put_instance(record)
        except (pickle.PicklingError, TypeError, AttributeError):
            record.output = None  # an output that cannot be pickled is still returned live
            self.store.put_instance(record)
