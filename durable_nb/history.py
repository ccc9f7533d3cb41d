"""History events of an orchestration instance and their encoding for the store.

An instance's history is an append-only log of these events. Replay reads it to
know which calls already have results; status, ``%durable show`` and auditing
read it to tell what happened. Events are encoded as plain tuples
``(tag, field, ...)`` so a stored history does not depend on class names.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, ClassVar


class Status(str, Enum):
    """Where an instance stands, in its record and in ``ExecutionFinished.status``.

    A ``str`` so that it compares equal to the plain strings stored by every release;
    what is stored is always the plain string (:attr:`value`), never the member, so a
    store does not depend on this class.
    """

    PENDING = "pending"  # recorded, not started (or rewound, or resumed while not running)
    RUNNING = "running"
    SUSPENDED = "suspended"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # the run stopped before it ended (Ctrl-C, kill, SIGTERM)
    TERMINATED = "terminated"
    CONTINUED_AS_NEW = "continued_as_new"

    def __str__(self) -> str:
        return self.value

    @property
    def is_final(self) -> bool:
        """An outcome no run of this generation changes by itself (rewind and rerun can)."""
        return self in _FINAL


_FINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.TERMINATED})


class LargeValue:
    """A result kept outside its history chunk (a large array or DataFrame), read from
    the store only when an orchestrator receives it, and then only once."""

    def load(self) -> Any:
        raise NotImplementedError


@dataclass(slots=True, unsafe_hash=True)
class Event:
    """Base of all history events; ``timestamp`` is seconds since the epoch (UTC).

    Events are values: equal and hashable by their fields, and never changed once made.
    They are not ``frozen`` dataclasses only because a frozen ``__init__`` sets each field
    through ``object.__setattr__`` (5x the cost of a plain one), and a replay builds
    two events per activity call.
    """

    TAG: ClassVar[str] = ""
    timestamp: float


@dataclass(slots=True, unsafe_hash=True)
class ExecutionStarted(Event):
    """A run of the instance began (every rerun of an instance adds one).

    ``key_scheme`` is how that run's release digested call keys
    (:data:`durable_nb.fingerprint.KEY_SCHEME`); replay looks results of older runs up
    under their own scheme. Rows written before it existed (release 0.1.0) decode as 1.
    """

    TAG: ClassVar[str] = "started"
    orchestrator: str
    run: int
    key_scheme: int = 1


@dataclass(slots=True, unsafe_hash=True)
class TaskScheduled(Event):
    """An activity call was handed to an executor.

    ``arguments`` is a short preview of its arguments for people (tables, charts),
    never read by replay; rows written before store format 3 decode as None.
    """

    TAG: ClassVar[str] = "scheduled"
    key: str
    activity: str
    arguments: str | None = None


@dataclass(slots=True, unsafe_hash=True)
class TaskCompleted(Event):
    """An activity call returned; ``result`` is what replay hands back."""

    TAG: ClassVar[str] = "completed"
    key: str
    activity: str
    result: Any
    attempts: int
    started: float | None = None  # when its last attempt began to run (format 3 on)


@dataclass(slots=True, unsafe_hash=True)
class TaskFailed(Event):
    """An activity call raised on its last attempt.

    ``error`` is the exception itself while the run is live; history stores only
    its type and message, because failures are retried, never replayed. It is a
    keyword, so that the stored fields stay positional.
    """

    TAG: ClassVar[str] = "failed"
    key: str
    activity: str
    error_type: str
    message: str
    attempts: int
    started: float | None = None  # when its last attempt began to run (format 3 on)
    error: BaseException | None = field(default=None, kw_only=True)


@dataclass(slots=True, unsafe_hash=True)
class TaskRetried(Event):
    """An attempt failed and another one is scheduled after ``delay`` seconds."""

    TAG: ClassVar[str] = "retried"
    key: str
    activity: str
    attempt: int
    error_type: str
    message: str
    delay: float
    started: float | None = None  # when the failed attempt began to run (format 3 on)


@dataclass(slots=True, unsafe_hash=True)
class CustomStatusSet(Event):
    """The orchestrator called ``ctx.set_custom_status``."""

    TAG: ClassVar[str] = "custom_status"
    value: Any


@dataclass(slots=True, unsafe_hash=True)
class ExecutionFinished(Event):
    """A run ended: completed, failed, interrupted, terminated or continued_as_new.

    ``calls`` lists the activity names by call position; it is recorded in strict
    mode only, where the next run is checked against it.
    """

    TAG: ClassVar[str] = "finished"
    status: str
    message: str
    calls: tuple[str, ...] | None = None


@dataclass(slots=True, unsafe_hash=True)
class TimerCreated(Event):
    """A durable timer was armed; ``fire_at`` (epoch seconds) survives restarts."""

    TAG: ClassVar[str] = "timer_created"
    key: str
    fire_at: float


@dataclass(slots=True, unsafe_hash=True)
class TimerFired(Event):
    """A durable timer reached its fire time."""

    TAG: ClassVar[str] = "timer_fired"
    key: str


@dataclass(slots=True, unsafe_hash=True)
class EventRaised(Event):
    """An external event was raised to the instance (from any process)."""

    TAG: ClassVar[str] = "event_raised"
    name: str
    value: Any


@dataclass(slots=True, unsafe_hash=True)
class SubOrchestrationCompleted(Event):
    """A sub-orchestration returned; its output is replayed like an activity result."""

    TAG: ClassVar[str] = "sub_completed"
    key: str
    instance_id: str
    result: Any


@dataclass(slots=True, unsafe_hash=True)
class SubOrchestrationFailed(Event):
    """A sub-orchestration failed; like activity failures it is retried, not replayed."""

    TAG: ClassVar[str] = "sub_failed"
    key: str
    instance_id: str
    error_type: str
    message: str
    error: BaseException | None = None


@dataclass(slots=True, unsafe_hash=True)
class ControlRequested(Event):
    """A request to a running instance: ``terminate``, ``suspend`` or ``resume``.

    Requests act on the run that is live when they arrive; replay ignores them.
    """

    TAG: ClassVar[str] = "control"
    action: str
    reason: str


@dataclass(slots=True, unsafe_hash=True)
class EntitySignaled(Event):
    """A one-way message to a durable entity was queued: an operation
    (``ctx.signal_entity``) or the release of a critical section's lock (``kind``
    ``"unlock"``). ``key`` is its call key, so a replay does not send it again;
    ``entity`` is the entity's ``@name@key``; ``arguments`` a short preview."""

    TAG: ClassVar[str] = "entity_signaled"
    key: str
    entity: str
    operation: str | None
    kind: str
    arguments: str


EVENT_TYPES: tuple[type[Event], ...] = (
    ExecutionStarted,
    TaskScheduled,
    TaskCompleted,
    TaskFailed,
    TaskRetried,
    CustomStatusSet,
    ExecutionFinished,
    TimerCreated,
    TimerFired,
    EventRaised,
    SubOrchestrationCompleted,
    SubOrchestrationFailed,
    ControlRequested,
    EntitySignaled,
)

_BY_TAG: dict[str, type[Event]] = {cls.TAG: cls for cls in EVENT_TYPES}
_FIELDS: dict[type[Event], tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in EVENT_TYPES
}


def _stored(cls: type[Event]) -> tuple[str, Callable[[Any], tuple[Any, ...]]]:
    """The tag and a getter of the stored fields (all but a live-only ``error``); every
    event has two or more, so the getter returns a tuple."""
    names = tuple(name for name in _FIELDS[cls] if name != "error")
    return cls.TAG, operator.attrgetter(*names)


_ENCODERS = {cls: _stored(cls) for cls in EVENT_TYPES}


def encode(event: Event) -> tuple[Any, ...]:
    """A plain tuple for storage; live-only exception objects (``error``) are dropped."""
    tag, stored = _ENCODERS[type(event)]
    return (tag, *stored(event))


def decode(row: tuple[Any, ...]) -> Event:
    """Inverse of :func:`encode`. Fields added since (each with a default, at the end of
    the stored ones) take their default in rows written before them."""
    return _BY_TAG[row[0]](*row[1:])
