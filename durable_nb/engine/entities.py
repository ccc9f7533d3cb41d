"""``ctx.call_entity``, ``ctx.signal_entity`` and ``ctx.lock_entities``: the engine's part
that talks to durable entities (:class:`EntityCalls`, a base of
:class:`~durable_nb.engine.replay.OrchestrationEngine`).

A call is an activity call of the entity's name (``@counter``): the runtime resolves
an :class:`EntityTarget` to the work that queues the operation and waits for its
result, so a call is scheduled, recorded and replayed as any call is. A signal is
one-way: the step that sends it carries an :class:`EntitySignal` for the runtime to
queue before the step's history is written, and records ``EntitySignaled`` under the
signal's call key, so a replay sends none again. Either message's id is the instance's
and the call key's, so a message queued again after a kill is recognised and applied
once.

A critical section (``ctx.lock_entities``) is a call that takes the lock of each entity
in a fixed order (so two sections never wait on each other), and gives them back with
one release signal each when its ``with`` block ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Generic

from durable_nb import history
from durable_nb.engine.entity_ids import (
    ENTITY_PREFIX,
    LOCK,
    OPERATION,
    UNLOCK,
    EntityId,
    EntitySignal,
    as_entity_id,
)
from durable_nb.engine.preview import arguments_preview
from durable_nb.engine.protocols import A, O
from durable_nb.engine.results import ResultBook
from durable_nb.engine.step import Step
from durable_nb.engine.tasks import _PENDING, Task
from durable_nb.errors import OrchestratorError
from durable_nb.fingerprint import KEY_SCHEME, arguments_digest

# What taking the locks of a critical section is called ("@" + this: "@@lock", the
# name of no entity, whose names have no "@").
LOCK_NAME = "@lock"


class EntityTarget:
    """What ``ctx.call_entity`` and ``ctx.lock_entities`` ask the runtime's activity
    resolver for: the work of an operation call on entity ``name``, or (``kind`` LOCK)
    of taking locks. The engine keys the call by the name it gets back."""

    __slots__ = ("kind", "name")

    def __init__(self, name: str, kind: str = OPERATION) -> None:
        self.name, self.kind = name, kind

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EntityTarget) and (self.name, self.kind) == (
            other.name,
            other.kind,
        )

    def __hash__(self) -> int:
        return hash((self.name, self.kind))

    def __repr__(self) -> str:
        return f"EntityTarget({self.name!r}, {self.kind!r})"


class EntityLock:
    """The locks of a critical section, held until :meth:`release` or the end of the
    ``with`` block it is used in::

        with (yield ctx.lock_entities(a, b)):
            ...
    """

    __slots__ = ("_release", "entities")

    def __init__(self, entities: tuple[EntityId, ...], release: Callable[[EntityLock], None]):
        self.entities = entities
        self._release = release

    def release(self) -> None:
        """Give the locks back (once; later calls do nothing)."""
        self._release(self)

    def __enter__(self) -> EntityLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<EntityLock {', '.join(map(str, self.entities))}>"


class LockTask(Task):
    """Completes with an :class:`EntityLock` once the lock call it wraps completes."""

    __slots__ = ("_on_locked", "child")

    def __init__(self, child: Task, on_locked: Callable[[], EntityLock]) -> None:
        super().__init__()
        self.child = child
        self._on_locked = on_locked
        if child.is_done:
            self._child_finished(child)
        else:
            child._listen(self)

    def _child_finished(self, child: Task) -> None:
        if child.is_failed:
            assert child.exception is not None
            self._fail(child.exception, child.finished_at, child.order)
        elif self._state == _PENDING:
            self._complete(self._on_locked(), child.finished_at, child.replayed, child.order)

    def __repr__(self) -> str:
        return f"<LockTask {self.child!r}>"


class EntityCalls(Generic[A, O]):
    """Entity calls of the engine's run; the engine provides what is declared."""

    instance_id: str
    name: str
    _step: Step[A, O]
    _clock: float
    _results: ResultBook
    # The entities the run's critical section holds (None: not in one).
    _held: tuple[EntityId, ...] | None

    def call_activity(self, ref: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Task:
        raise NotImplementedError

    def _next_call(self, triple: str, name: str) -> tuple[str, int, int]:
        raise NotImplementedError

    @property
    def holds_locks(self) -> bool:
        """The run is inside a critical section (the runtime releases its locks when the
        run ends so)."""
        return self._held is not None

    def call_entity(self, entity: Any, operation: Any, operation_input: Any) -> Task:
        where = "ctx.call_entity"
        target = as_entity_id(entity, where)
        self._check_operation(operation, where)
        held = self._held
        if held is not None and target not in held:
            raise OrchestratorError(
                f"orchestrator {self.name!r} (instance {self.instance_id}) called entity "
                f"{target} inside a critical section that does not lock it; lock every "
                "entity the section calls in the same ctx.lock_entities(...)",
                orchestrator=self.name,
                instance_id=self.instance_id,
            )
        arguments = (target.key, operation, operation_input)
        return self.call_activity(EntityTarget(target.name), arguments, {})

    def signal_entity(self, entity: Any, operation: Any, operation_input: Any) -> Task:
        where = "ctx.signal_entity"
        target = as_entity_id(entity, where)
        self._check_operation(operation, where)
        self._send(EntitySignal("", target, operation, operation_input, OPERATION))
        # Done already (with None), as Durable Functions' fire-and-forget task: code that
        # yields it goes straight on.
        sent = Task()
        sent._replayed(None, 0.0, 0)
        return sent

    def lock_entities(self, entities: Iterable[Any]) -> Task:
        if self._held is not None:
            raise OrchestratorError(
                f"orchestrator {self.name!r} (instance {self.instance_id}) asked for "
                f"ctx.lock_entities while its critical section holds "
                f"{', '.join(map(str, self._held))}; release it first (leave its with block)",
                orchestrator=self.name,
                instance_id=self.instance_id,
            )
        # A fixed order (by text) of distinct ids: two sections over the same entities
        # take their locks in the same order, so neither holds one the other waits for.
        ids = tuple(sorted({as_entity_id(e, "ctx.lock_entities") for e in entities}, key=str))
        if not ids:
            raise OrchestratorError(
                f"ctx.lock_entities in orchestrator {self.name!r} was given no entity; "
                "pass the EntityId of each entity the critical section uses",
                orchestrator=self.name,
                instance_id=self.instance_id,
            )
        child = self.call_activity(EntityTarget(LOCK_NAME, LOCK), tuple(map(str, ids)), {})

        def locked() -> EntityLock:
            self._held = ids
            return EntityLock(ids, self._release)

        return LockTask(child, locked)

    def _release(self, lock: EntityLock) -> None:
        if self._held != lock.entities:
            return  # released already
        self._held = None
        for entity in lock.entities:
            self._send(EntitySignal("", entity, None, None, UNLOCK))

    def _send(self, signal: EntitySignal) -> None:
        """Send ``signal`` in this step, unless history says an earlier run sent it."""
        name = ENTITY_PREFIX + signal.entity.name
        arguments = (signal.entity.key, signal.operation, signal.input)

        def owner() -> str:  # for an error message only
            return f"a signal to entity {signal.entity} (instance {self.instance_id})"

        def triple(scheme: int) -> str:
            digest = arguments_digest(owner, arguments, {}, scheme=scheme)
            return f"{name}/{signal.kind}/{digest}"

        key, occurrence, _ = self._next_call(triple(KEY_SCHEME), name)
        if self._results.find(key, triple, occurrence) is not None:
            self._step.replayed.append(name)  # sent by an earlier run: counted as cached
            return
        signal.key = key
        self._step.signals.append(signal)
        preview = arguments_preview((signal.operation, signal.input), {})
        self._step.events.append(
            history.EntitySignaled(
                self._clock, key, str(signal.entity), signal.operation, signal.kind, preview
            )
        )

    def _on_entity_signaled(self, event: history.EntitySignaled) -> None:
        # Kept with the results: found by key (under older key schemes too) as a result is.
        self._results.add(event.key, (None, event.timestamp, 0))

    def _check_operation(self, operation: Any, where: str) -> None:
        if not isinstance(operation, str) or not operation:
            raise OrchestratorError(
                f"{where} in orchestrator {self.name!r} needs the operation's name as a "
                f"non-empty string, got {operation!r}",
                orchestrator=self.name,
                instance_id=self.instance_id,
            )


__all__ = ["LOCK", "EntityCalls", "EntityLock", "EntityTarget", "LockTask"]
