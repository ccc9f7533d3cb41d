"""Writing one instance's history chunks and its record, and noticing chunks others
appended.

A run appends its events in chunks. Other writers append too: a kernel or the
command line raising an event or asking to terminate, threads keeping results
that arrived after a run ended. Chunk numbers give every writer's chunks one
order, the order replay will see, so the live run applies foreign events in that
same order relative to its own.

The journal is also where a run keeps the instance's record (status, custom status,
outcome, counts) and where progress counts an outcome: once, when its event is
written, which is when it is final (a result that cannot be stored becomes a failure
on the way).
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from durable_nb import history
from durable_nb.errors import InstanceConflictError, ResultNotStorableError, StoreError
from durable_nb.history import Status
from durable_nb.progress import Progress
from durable_nb.store import CheckpointStore, InstanceRecord, shared_digest

if TYPE_CHECKING:
    from durable_nb.definitions import ScheduledCall

logger = logging.getLogger(__name__)

# What a live run takes from chunks other writers appended.
LIVE_FOREIGN = (history.EventRaised, history.ControlRequested)
# Written before the run waits, not with the next outcome: a timer's fire time (a
# restart must keep it) and the custom status (others read it).
# What must be on disk before the run waits: a timer's fire time, the custom status, and
# a retry's count and due time (a kill during the backoff goes on from there).
_WRITE_BEFORE_WAITING = (history.TimerCreated, history.CustomStatusSet, history.TaskRetried)
COMPACT_AFTER_CHUNKS = 32
COMPACT_FROM_REPLAY = 2  # the run that replays a history for the second time compacts it


class Journal:
    """The history of one instance as one run writes and watches it."""

    def __init__(self, store: CheckpointStore, instance_id: str, progress: Progress) -> None:
        self.store = store
        self.instance_id = instance_id
        self.progress = progress
        self._unwritten: list[history.Event] = []  # rides with the next chunk
        self._urgent = False  # _unwritten holds what must not wait for the next outcome
        self.record: InstanceRecord | None = None
        self._record_dirty = False
        self._next = 0  # the number the next chunk gets if nobody else appends
        self.history_id = ""  # the history this run writes into (set once it is known)
        self._share: set[str] = set()  # call keys whose completions are to be shared

    def load(self) -> list[history.Event]:
        """The history so far, as replay reads it: without its ``TaskScheduled`` events.

        A long one of small chunks (a chain's) is compacted by a load that reads it
        anyway, not at the end of every run (most ended runs are never loaded again),
        and only from its second replay on: a run cut short is usually replayed once and
        then completes, and a completed instance is final, so compacting at the first
        replay would mostly cost (about 1.5 µs a chunk) without ever paying back (about
        1 µs a chunk on each later load). A history replayed again is one that is likely
        to be replayed more (a kernel that keeps dying, a long monitor)."""
        replays = self.record.runs - 1 if self.record is not None else 0
        events, count = self.store.load_history(
            self.instance_id,
            compact_after=COMPACT_AFTER_CHUNKS if replays >= COMPACT_FROM_REPLAY else None,
            scheduled=False,
        )
        self._next = count
        return events

    def buffer(self, event: history.Event) -> None:
        """Bookkeeping that rides with the next chunk (TaskRetried, TaskScheduled...)."""
        self._unwritten.append(event)
        if isinstance(event, _WRITE_BEFORE_WAITING):
            self._urgent = True

    def buffer_all(self, events: Sequence[history.Event]) -> None:
        self._unwritten += events
        if not self._urgent:
            for event in events:
                if isinstance(event, _WRITE_BEFORE_WAITING):
                    self._urgent = True
                    break

    def must_write_before_waiting(self) -> bool:
        """Whether what is buffered must be written before the run waits (a timer's
        fire time, the custom status)."""
        return self._urgent

    def write(
        self, events: Sequence[history.Event]
    ) -> tuple[list[history.Event], list[history.Event]]:
        """Append the buffered bookkeeping and ``events`` as one atomic chunk.

        Returns the events for the engine, in store order: first the live events of
        chunks others appended before this one, then ``events`` themselves (where a
        completion whose result cannot be pickled has become a failure saying so).
        """
        chunk = self._unwritten
        chunk += events
        self._unwritten = []
        self._urgent = False
        seen = events if type(events) is list else list(events)
        if not chunk:
            return [], seen
        try:
            number = self._append(chunk)
        except (pickle.PicklingError, TypeError, AttributeError):
            replaced = self._unstorable(chunk)
            if not replaced:
                raise
            number = self._append([replaced.get(id(event), event) for event in chunk])
            seen = [replaced.get(id(event), event) for event in seen]
        foreign: list[history.Event] = []
        if number > self._next:
            foreign = self._live_events(
                self.store.read_chunks(self.instance_id, self._next), number
            )
        self._next = number + 1
        settled = self.progress.settled
        for event in seen:
            settled(event)
        return foreign, seen

    def share(self, key: str) -> None:
        """Record the completion of call ``key``, when written, as a shared result too."""
        self._share.add(key)

    def find_shared(self, calls: Sequence[ScheduledCall]) -> dict[str, history.TaskCompleted]:
        """Completions for those of ``calls`` (share=True) that match a shared success of
        any instance, no older than their activity's ``ttl``, by call key. ``attempts``
        0 marks them in history as reused, not run. One query per activity and ttl (and
        per 500 calls)."""
        groups: dict[tuple[str, float | None], dict[str, list[str]]] = {}
        for call in calls:
            act = call.activity
            keys = groups.setdefault((act.name, act.options.ttl), {})
            keys.setdefault(shared_digest(act.name, call.key), []).append(call.key)
        answers: dict[str, history.TaskCompleted] = {}
        now = time.time()
        for (activity, ttl), by_digest in groups.items():
            newer_than = now - ttl if ttl is not None else None
            try:
                found = self.store.find_shared_many(activity, list(by_digest), newer_than)
            except Exception:  # a lookup that fails only costs running the calls
                logger.warning("could not look up shared results of %s", activity, exc_info=True)
                continue
            for digest, shared in found.items():
                for key in by_digest[digest]:
                    answers[key] = history.TaskCompleted(now, key, activity, shared.result, 0)
        return answers

    def poll(self) -> list[history.Event]:
        """Live events in chunks others appended since the last look."""
        chunks = self.store.read_chunks(self.instance_id, self._next)
        if chunks:
            self._next = chunks[-1][0] + 1
        return self._live_events(chunks, None)

    def keep_late(self, event: history.Event) -> None:
        """A result that arrived after the run ended: keep it for the next run, unless
        the instance's history has started over since (continue_as_new, purge): a call
        of the new history is a new call, even with the same arguments. May run in a
        worker thread; its chunk is foreign to any live run."""
        try:
            if not self.store.append_late(self.instance_id, self.history_id, [event]):
                logger.info(
                    "dropped a late result of %s: its history started over", self.instance_id
                )
        except Exception:
            logger.warning("could not keep a late result of %s", self.instance_id, exc_info=True)

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _live_events(
        chunks: list[tuple[int, list[history.Event]]], before: int | None
    ) -> list[history.Event]:
        return [
            event
            for number, events in chunks
            if before is None or number < before
            for event in events
            if isinstance(event, LIVE_FOREIGN)
        ]

    def _append(self, chunk: list[history.Event]) -> int:
        share = self._sharing(chunk) if self._share else ()
        try:
            if share:
                number = self.store.append(self.instance_id, chunk, share)
            else:
                number = self.store.append(self.instance_id, chunk)
        except (pickle.PicklingError, TypeError, AttributeError):
            raise  # a value that cannot be pickled; the caller finds which
        except Exception as exc:
            raise StoreError(
                f"could not write the checkpoints of instance {self.instance_id!r} to "
                f"{self.store.location}: {exc}. Results checkpointed before are kept; fix "
                "the store (disk space, permissions) and rerun to resume.",
                location=str(self.store.location),
                instance_id=self.instance_id,
            ) from exc
        self._share.difference_update(share)
        return number

    def _sharing(self, chunk: list[history.Event]) -> list[str]:
        """The keys of the chunk's completions to share. A call that ended otherwise (its
        result could not be stored) is forgotten: only successes are shared."""
        share = []
        for event in chunk:
            key = getattr(event, "key", None)
            if key in self._share:
                if isinstance(event, history.TaskCompleted):
                    share.append(key)
                elif isinstance(event, history.TaskFailed):
                    self._share.discard(key)
        return share

    def _unstorable(self, chunk: list[history.Event]) -> dict[int, history.Event]:
        """Failures to stand in for completions whose result cannot be pickled."""
        replaced: dict[int, history.Event] = {}
        for event in chunk:
            if not isinstance(event, (history.TaskCompleted, history.SubOrchestrationCompleted)):
                continue
            why = _why_unstorable(event.result, self.store)
            if why is not None:
                activity = getattr(event, "activity", None)
                name = activity or getattr(event, "instance_id", "?")
                error = ResultNotStorableError(
                    f"{name!r} (instance {self.instance_id}, call {event.key}) returned a "
                    f"{type(event.result).__qualname__}, which cannot be checkpointed ({why}); "
                    "return plain data (numbers, strings, lists, dicts, arrays, DataFrames) "
                    "instead",
                    activity=activity,
                    call=event.key,
                    instance_id=self.instance_id,
                )
                if isinstance(event, history.TaskCompleted):
                    replaced[id(event)] = history.TaskFailed(
                        event.timestamp,
                        event.key,
                        event.activity,
                        type(error).__name__,
                        str(error),
                        event.attempts,
                        event.started,
                        error=error,
                    )
                else:
                    replaced[id(event)] = history.SubOrchestrationFailed(
                        event.timestamp,
                        event.key,
                        event.instance_id,
                        type(error).__name__,
                        str(error),
                        error,
                    )
        return replaced

    # ------------------------------------------------------------------ the record

    def open_with_lease(
        self,
        orchestrator: str,
        parent: str | None,
        arguments: dict[str, Any],
        expected: str | None,
        lease: dict[str, Any],
    ) -> bool:
        """Take the lease from ``expected`` and mark the instance's record running for
        this run (created if new), in one write; False, and nothing written, when the
        lease did not go (``LeaseKeeper.acquire`` looks again)."""
        now = time.time()

        def opened(record: InstanceRecord | None) -> InstanceRecord:
            return self._opened(record, orchestrator, parent, arguments, now)

        try:
            record = self.store.open_run(self.instance_id, expected, lease, opened)
        except (pickle.PicklingError, TypeError, AttributeError):
            # An input that cannot be pickled still works live; the record keeps the rest.
            record = self.store.open_run(
                self.instance_id,
                expected,
                lease,
                lambda current: self._storable_part(opened(current)),
            )
        if record is None:
            return False
        self.record = record
        self.history_id = record.history_id
        return True

    def _opened(
        self,
        record: InstanceRecord | None,
        orchestrator: str,
        parent: str | None,
        arguments: dict[str, Any],
        now: float,
    ) -> InstanceRecord:
        """``record`` (None: a new one), marked running for this run."""
        if record is None:
            record = InstanceRecord(self.instance_id, orchestrator, created_at=now)
        elif record.orchestrator != orchestrator:
            raise InstanceConflictError(
                f"instance id {self.instance_id!r} belongs to orchestrator "
                f"{record.orchestrator!r}, not {orchestrator!r}; choose another "
                "instance_id or purge the old instance (%durable purge ID)",
                instance_id=self.instance_id,
                orchestrator=orchestrator,
                owner=record.orchestrator,
            )
        record.runs += 1
        record.status, record.started_at, record.updated_at = Status.RUNNING.value, now, now
        record.finished_at, record.error, record.parent = None, None, parent
        record.completed_with = None  # set again only if this run completes
        record.input = arguments
        return record

    def set_status(self, status: Status) -> None:
        """The run's status, in the record at once (others read it)."""
        if self.record is not None:
            self.record.status = status.value
            self._record_dirty = True
            self.flush_record()

    def set_custom_status(self, value: Any) -> None:
        """Written with the record before the run next waits."""
        if self.record is not None:
            self.record.custom_status = value
            self._record_dirty = True

    def flush_record(self) -> None:
        if self._record_dirty and self.record is not None:
            self.record.updated_at = time.time()
            self.store.put_instance(self.record)
            self._record_dirty = False

    def close(
        self,
        status: Status,
        message: str,
        output: Any,
        completed_with: dict[str, Any] | None,
        lease_owner: str | None,
    ) -> bool:
        """Record how the run ended: the buffered bookkeeping (``ExecutionFinished``) as
        the last chunk, the record, and the lease ``lease_owner`` holds given back, in
        one write (``CheckpointStore.close_run``; ``lease_owner`` None: the lease stays).
        Returns whether the lease went back with them: results to share, or a value
        that cannot be stored, take the long way (the chunk, then the record; the lease
        stays with its keeper)."""
        record = self.record
        if record is None:
            self.write(())
            return False
        self._ending(record, status, message, output, completed_with)
        if not self._share:
            try:
                self.store.close_run(record, self._unwritten, lease_owner)
            except (pickle.PicklingError, TypeError, AttributeError):
                pass  # nothing was written: the long way finds what cannot be stored
            else:
                self._unwritten, self._urgent, self._record_dirty = [], False, False
                return lease_owner is not None
        self.write(())
        self._put_record(record)
        self._record_dirty = False
        return False

    def _ending(
        self,
        record: InstanceRecord,
        status: Status,
        message: str,
        output: Any,
        completed_with: dict[str, Any] | None,
    ) -> None:
        now = time.time()
        record.status, record.finished_at, record.updated_at = status.value, now, now
        record.error = message or None
        record.counts = self.progress.totals().counts(live=False)
        record.output = output if status == Status.COMPLETED else None
        record.completed_with = completed_with if status == Status.COMPLETED else None

    def _put_record(self, record: InstanceRecord) -> None:
        try:
            self.store.put_instance(record)
        except (pickle.PicklingError, TypeError, AttributeError):
            self.store.put_instance(self._storable_part(record))

    def _storable_part(self, record: InstanceRecord) -> InstanceRecord:
        """``record`` without the input or output the store cannot serialise: they still
        work live, and the record keeps the rest (rewind then needs the input passed
        again)."""
        if not self.store.storable(record.output):
            record.output = None
            record.completed_with = None  # no recorded outcome: it cannot be final
        if not self.store.storable(record.input):
            record.input = None
        return record


def _why_unstorable(value: Any, store: CheckpointStore) -> str | None:
    """Why ``value`` cannot be checkpointed in ``store``, or None if it can."""
    try:
        pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        return str(exc)
    if not store.storable(value):
        return f"{type(value).__qualname__} is not JSON data"
    return None
