"""Durable entities (Durable Functions' aggregator pattern): defining one, and applying
an operation to its state.

An entity is a function that takes an :class:`EntityContext` (``operation_name``,
``get_input()``, ``get_state(initializer)``, ``set_state(value)``,
``set_result(value)``), or a class whose public methods are its operations (the
object's attributes are the state; ``__init__`` makes the first one). Define it with
``@durable_nb.entity`` or ``%%entity``, name one instance with
``EntityId(name, key)``, and call it from an orchestrator (``ctx.call_entity``,
``ctx.signal_entity``) or a client (``durable_nb.signal_entity``).

Applying an operation here is pure: state in, state and result out. Where the state
lives and how each message is applied once is :mod:`durable_nb.entity_worker`'s.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from durable_nb.engine.entity_ids import EntityId
from durable_nb.errors import DefinitionError, EntityNotFoundError

_UNSET: Any = object()
# An operation every class entity has unless it defines its own: forget the state. (A
# function entity forgets it with ctx.delete_state().)
DELETE = "delete"


class EntityContext:
    """What an entity function receives for one operation (Durable Functions' names)."""

    def __init__(self, entity: EntityId, operation: str, operation_input: Any, state: Any):
        self.entity_name = entity.name
        self.entity_key = entity.key
        self.operation_name = operation
        self._input = operation_input
        self._state = state  # _UNSET: the entity has none
        self._had_state = state is not _UNSET
        self._result: Any = _UNSET

    def get_input(self) -> Any:
        """The operation's input (None when it was sent without one)."""
        return self._input

    def get_state(self, initializer: Any = None) -> Any:
        """The entity's state; if it has none yet, ``initializer()`` (a callable such as
        ``lambda: 0`` or ``dict``) or ``initializer`` itself."""
        if self._state is _UNSET:
            return initializer() if callable(initializer) else initializer
        return self._state

    def set_state(self, value: Any) -> None:
        """The entity's new state, kept when the operation returns."""
        self._state = value

    def delete_state(self) -> None:
        """Forget the state: the entity no longer exists until an operation sets one."""
        self._state = _UNSET

    destruct_on_exit = delete_state  # Durable Functions' name

    @property
    def is_newly_constructed(self) -> bool:
        """True when the entity had no state before this operation."""
        return self._had_state is False

    def set_result(self, value: Any) -> None:
        """What ``ctx.call_entity`` returns to the orchestrator that called."""
        self._result = value


@dataclass(frozen=True)
class OperationResult:
    """What one operation did: whether the entity has a state, the state, the result."""

    exists: bool
    state: Any
    result: Any


class Entity:
    """A durable entity's definition: a function of an :class:`EntityContext`, or a
    class whose public methods are the operations."""

    def __init__(self, fn: Callable[..., Any] | type, *, name: str | None = None) -> None:
        is_class = inspect.isclass(fn)
        if not is_class and (not callable(fn) or _is_generator(fn)):
            raise DefinitionError(
                f"an entity must be a function taking an entity context, or a class, got "
                f"{fn!r}; entity operations run to their end (no yield, no async def)"
            )
        self.fn = fn
        self.is_class = is_class
        self.name = _checked_name(name if name is not None else fn.__name__)
        self.__doc__ = fn.__doc__

    def __repr__(self) -> str:
        return f"<entity {self.name}{' (class)' if self.is_class else ''}>"

    def operations(self) -> list[str] | None:
        """A class entity's operation names (None for a function: any name)."""
        if not self.is_class:
            return None
        return sorted(
            name
            for name, member in inspect.getmembers(self.fn, callable)
            if not name.startswith("_")
        )

    def apply(
        self, entity: EntityId, exists: bool, state: Any, operation: str, value: Any
    ) -> OperationResult:
        """Run ``operation`` with input ``value`` on ``state`` (the store's copy, made for
        this operation); raises what the operation raises, and then its store keeps the
        state it had."""
        state = state if exists else _UNSET
        if self.is_class:
            return self._apply_method(entity, state, operation, value)
        context = EntityContext(entity, operation, value, state)
        returned = self.fn(context)
        # set_result's value, else what the function returned (Durable Functions' style
        # uses set_result; returning is the plain Python way).
        result = context._result if context._result is not _UNSET else returned
        kept = context._state
        return OperationResult(kept is not _UNSET, None if kept is _UNSET else kept, result)

    def _apply_method(
        self, entity: EntityId, state: Any, operation: str, value: Any
    ) -> OperationResult:
        cls: Any = self.fn
        method = getattr(cls, operation, None) if not operation.startswith("_") else None
        if method is None or not callable(method):
            if operation == DELETE:
                return OperationResult(False, None, None)
            raise EntityNotFoundError(
                f"entity {self.name!r} ({entity}) has no operation {operation!r}; its "
                f"operations are {', '.join(self.operations() or []) or 'none'}",
                entity=str(entity),
            )
        target = cls.__new__(cls)
        if state is _UNSET:
            target.__init__()
        else:
            target.__dict__.update(state)
        bound = getattr(target, operation)
        result = bound(value) if _takes_input(bound, value) else bound()
        return OperationResult(True, dict(vars(target)), result)


def _takes_input(method: Callable[..., Any], value: Any) -> bool:
    """Whether to pass the input: the method takes a parameter, or one was sent (then a
    method without one fails as Python says)."""
    try:
        parameters = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return True
    return bool(parameters) or value is not None


def _is_generator(fn: Any) -> bool:
    return (
        inspect.isgeneratorfunction(fn)
        or inspect.iscoroutinefunction(fn)
        or inspect.isasyncgenfunction(fn)
    )


def _checked_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip() or "@" in name or "/" in name:
        raise DefinitionError(
            f"entity name {name!r} cannot be used: give a non-empty string without '@' "
            "or '/', e.g. name='Counter'"
        )
    return name


_ENTITIES: dict[str, Entity] = {}


def register_entity(definition: Entity) -> Entity:
    """Make ``definition`` the entity of its name in this kernel (latest wins)."""
    _ENTITIES[definition.name] = definition
    return definition


def find_entity(name: str) -> Entity | None:
    return _ENTITIES.get(name)


def defined_entities() -> list[str]:
    return sorted(_ENTITIES)


F = TypeVar("F", bound=Callable[..., Any])


@overload
def entity(fn: Callable[..., Any] | type, /) -> Entity: ...
@overload
def entity(*, name: str | None = None) -> Callable[[Callable[..., Any] | type], Entity]: ...
def entity(
    fn: Callable[..., Any] | type | None = None, /, *, name: str | None = None
) -> Entity | Callable[[Callable[..., Any] | type], Entity]:
    """Define a durable entity: ``@entity`` on a function of an entity context, or on a
    class whose public methods are its operations; ``@entity(name="Counter")`` registers
    it under another name."""

    def wrap(target: Callable[..., Any] | type) -> Entity:
        return register_entity(Entity(target, name=name))

    return wrap(fn) if fn is not None else wrap
