"""The seam between the runtime and durable storage: :class:`CheckpointStore`.

The runtime talks to a store only through this protocol, so tests can inject faults at
this seam. :class:`~durable_nb.store.DiskCacheStore` is the default and survives kernel
deaths; :class:`~durable_nb.memory_store.MemoryStore` is for tests and throwaway runs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol

from durable_nb import history
from durable_nb.entity_store import EntityStore
from durable_nb.instance_record import InstanceRecord
from durable_nb.store_values import SharedResult


class CheckpointStore(Protocol):
    """The seam between the runtime and durable storage."""

    location: str
    # The key schemes of the calls recorded here (durable_nb.fingerprint): this
    # release's, and any older release's that wrote to the store before.
    key_schemes: tuple[int, ...]

    @property
    def entities(self) -> EntityStore:
        """Durable entities' states and queues."""

    def append(
        self, instance_id: str, events: Sequence[history.Event], share: Collection[str] = ()
    ) -> int:
        """Durably append ``events`` as one atomic chunk; returns the chunk's number.

        ``share``: call keys of the chunk's completions to record as shared results
        (:meth:`find_shared`), atomically with the chunk, while the instance exists."""

    def find_shared(
        self, activity: str, digest: str, newer_than: float | None
    ) -> SharedResult | None:
        """The latest shared success of ``activity`` with ``digest`` (see
        :func:`shared_digest`) that finished at or after ``newer_than``, with its result
        loaded; None if there is none. One indexed lookup."""

    def find_shared_many(
        self, activity: str, digests: Sequence[str], newer_than: float | None
    ) -> dict[str, SharedResult]:
        """:meth:`find_shared` for many digests at once, by digest (misses left out)."""

    def append_late(
        self, instance_id: str, history_id: str, events: Sequence[history.Event]
    ) -> bool:
        """Append as :meth:`append` does, but only while the instance's history is still
        the one of ``history_id`` (see :attr:`InstanceRecord.history_id`), atomically; False when
        it has moved on. For results that arrive after their run ended."""

    def read_chunks(self, instance_id: str, start: int) -> list[tuple[int, list[history.Event]]]:
        """The chunks numbered ``start`` and up, with their numbers (to see what other
        processes appended: raised events, control requests)."""

    def read_history(self, instance_id: str) -> list[history.Event]:
        """Every event of the instance, oldest first."""

    def write_mark(self) -> int:
        """A number that stays the same while no other writer (process, connection) wrote:
        while it stays, :meth:`read_chunks` finds nothing others appended. It may move
        for writes of no interest (a store that cannot tell writers apart moves on all)."""

    def load_history(
        self, instance_id: str, compact_after: int | None = None, *, scheduled: bool = True
    ) -> tuple[list[history.Event], int]:
        """Every event of the instance, oldest first, and how many chunks held them.

        ``compact_after``: a history of more chunks is rewritten as one in the same pass,
        atomically (as :meth:`compact` does; an append meanwhile is never lost, and may
        leave it uncompacted), and the count is the one after. ``scheduled=False``:
        without the ``TaskScheduled`` events, which replay never reads."""

    def history_chunks(self, instance_id: str) -> int:
        """How many chunks the history is made of (compaction merges them)."""

    def compact(self, instance_id: str) -> None:
        """Rewrite the history as one chunk, atomically."""

    def get_instance(self, instance_id: str) -> InstanceRecord | None: ...

    def put_instance(self, record: InstanceRecord) -> None: ...

    def list_instances(self) -> list[InstanceRecord]: ...

    def purge(self, instance_id: str) -> bool:
        """Delete an instance and its history; False when there was nothing to delete."""

    def reset_history(self, record: InstanceRecord) -> None:
        """Atomically delete the instance's history and write its record
        (continue_as_new: a new input and an empty history, or neither)."""

    def get_lease(self, instance_id: str) -> dict[str, Any] | None: ...

    def storable(self, value: Any) -> bool:
        """Whether the store can serialise ``value``."""

    def swap_lease(
        self, instance_id: str, expected: str | None, lease: dict[str, Any] | None
    ) -> bool:
        """Atomically replace the lease if its current owner is ``expected`` (None: no
        lease); ``lease=None`` releases it. False when someone else holds it."""

    def open_run(
        self,
        instance_id: str,
        expected: str | None,
        lease: dict[str, Any],
        opened: Callable[[InstanceRecord | None], InstanceRecord],
    ) -> InstanceRecord | None:
        """A run's start, atomically: the lease taken from ``expected`` (as
        :meth:`swap_lease`) and the record that ``opened`` makes of the current one
        (None: there is none) written. None, and nothing written, when the lease is no
        longer ``expected``'s or another writer wrote the record meanwhile: look again."""

    def close_run(
        self, record: InstanceRecord, events: Sequence[history.Event], lease_owner: str | None
    ) -> None:
        """A run's end, atomically: ``events`` appended as one chunk (none: no chunk),
        ``record`` written, and the lease given back if ``lease_owner`` still holds it
        (None: the lease is left as it is)."""

    def close(self) -> None: ...
