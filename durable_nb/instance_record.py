"""An instance's record: what a store knows about an instance without reading its
history (status, times, counts, input, output), one row of ``durable_instances``.

Stored as a plain dict of its fields (:meth:`InstanceRecord.to_dict`; large values in
files of their own, :mod:`durable_nb.record_values`), so a store does not depend on
where this class lives.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from durable_nb.history import Status
from durable_nb.record_values import field_names
from durable_nb.store_values import LazyField


@dataclass
class InstanceRecord:
    """What a store knows about an instance without reading its history."""

    instance_id: str
    orchestrator: str
    # pending | running | suspended | completed | failed | interrupted | terminated
    status: str = Status.PENDING.value
    created_at: float = 0.0
    updated_at: float = 0.0
    started_at: float = 0.0
    finished_at: float | None = None
    runs: int = 0
    # A large custom status, output or input is kept in a file of its own and loaded
    # when the field is read: descriptor fields, whose default is None.
    custom_status: LazyField[Any] = LazyField()  # noqa: RUF009
    output: LazyField[Any] = LazyField()  # noqa: RUF009
    error: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    # the orchestrator's arguments by name
    input: LazyField[dict[str, Any] | None] = LazyField()  # noqa: RUF009
    generation: int = 0  # how many times it continued as new
    parent: str | None = None  # the parent instance of a sub-orchestration
    # What a completed run was made of (input, code digests), so that running it again
    # returns this record's outcome while none of it changed (durable_nb.finality).
    completed_with: dict[str, Any] | None = None

    @property
    def history_id(self) -> str:
        """Which history the instance is on: it changes when the history starts over
        (continue_as_new, or a purge and a new instance under the same id)."""
        return f"{self.created_at!r}/{self.generation}"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["status"] = str(self.status)  # the plain value, even if given a Status
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstanceRecord:
        try:
            return cls(**data)
        except TypeError:  # a field of a later release: left out
            return cls(**{k: v for k, v in data.items() if k in field_names(cls)})
