"""Writing one instance's history chunks, and noticing chunks others appended.

A run appends its events in chunks. Other writers append too: a kernel or the
command line raising an event or asking to terminate, threads keeping results
that arrived after a run ended. Chunk numbers give every writer's chunks one
order, the order replay will see, so the live run applies foreign events in that
same order relative to its own.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from durable_nb import history
from durable_nb.errors import ResultNotStorableError, StoreError
from durable_nb.progress import Progress
from durable_nb.store import CheckpointStore, shared_digest

if TYPE_CHECKING:
    from durable_nb.engine import ActivityCall

logger = logging.getLogger(__name__)

# What a live run takes from chunks other writers appended.
LIVE_FOREIGN = (history.EventRaised, history.ControlRequested)


class Journal:
    """The history of one instance as one run writes and watches it."""

    def __init__(self, store: CheckpointStore, instance_id: str, progress: Progress) -> None:
        self.store = store
        self.instance_id = instance_id
        self.progress = progress
        self.unwritten: list[history.Event] = []  # bookkeeping that rides with the next chunk
        self.chunks = 0  # chunks of the instance: loaded and written by this run
        self._next = 0  # the number the next chunk gets if nobody else appends
        self.epoch = ""  # the instance's epoch this run writes into (set once it is known)
        self._share: set[str] = set()  # call keys whose completions are to be shared

    def load(self) -> list[history.Event]:
        events, count = self.store.load_history(self.instance_id)
        self.chunks = self._next = count
        return events

    def write(
        self, events: Sequence[history.Event]
    ) -> tuple[list[history.Event], list[history.Event]]:
        """Append the buffered bookkeeping and ``events`` as one atomic chunk.

        Returns the events for the engine, in store order: first the live events of
        chunks others appended before this one, then ``events`` themselves (where a
        completion whose result cannot be pickled has become a failure saying so).
        """
        chunk = self.unwritten + list(events)
        self.unwritten = []
        seen = list(events)
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
        return foreign, seen

    def share(self, key: str) -> None:
        """Record the completion of call ``key``, when written, as a shared result too."""
        self._share.add(key)

    def find_shared(self, calls: Sequence[ActivityCall]) -> dict[str, history.TaskCompleted]:
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
            if not self.store.append_late(self.instance_id, self.epoch, [event]):
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
                "the store (disk space, permissions) and rerun to resume."
            ) from exc
        self.chunks += 1
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
            try:
                pickle.dumps(event.result, protocol=pickle.HIGHEST_PROTOCOL)
                if not self.store.storable(event.result):
                    raise TypeError(f"{type(event.result).__qualname__} is not JSON data")
            except Exception as why:
                name = getattr(event, "activity", None) or getattr(event, "instance_id", "?")
                error = ResultNotStorableError(
                    f"{name!r} (instance {self.instance_id}, call {event.key}) returned a "
                    f"{type(event.result).__qualname__}, which cannot be checkpointed ({why}); "
                    "return plain data (numbers, strings, lists, dicts, arrays, DataFrames) "
                    "instead"
                )
                if isinstance(event, history.TaskCompleted):
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
