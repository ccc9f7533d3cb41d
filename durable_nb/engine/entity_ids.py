"""Naming durable entities, and the one-way messages an orchestrator sends them.

An entity is named by ``EntityId(name, key)``, as in Durable Functions: ``name`` is the
entity's definition (``@entity`` / ``%%entity``), ``key`` tells one instance of it
from another ("counter" / "user-42"). Its text form is Durable Functions' ``@name@key``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from durable_nb.errors import ConfigurationError

# The prefix of what an entity call is recorded under in history (its "activity" name):
# "@counter" reads as an entity in the widget, the calls table and the timeline, and no
# activity can be named so (activity names are Python identifiers or dotted names).
ENTITY_PREFIX = "@"

# What a message does to its entity: run an operation (a signal or a call), or take or
# give back the lock of a critical section (ctx.lock_entities).
OPERATION, LOCK, UNLOCK = "operation", "lock", "unlock"


@dataclass(frozen=True, slots=True)
class EntityId:
    """The id of one durable entity: its definition's ``name`` and a ``key``.

    ``EntityId("counter", "c1")``; ``str()`` gives Durable Functions' ``@counter@c1``
    and :meth:`parse` reads it back."""

    name: str
    key: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "@" in self.name:
            raise ConfigurationError(
                f"an entity name must be a non-empty string without '@', got {self.name!r}; "
                "use the name the entity was defined under (@entity or %%entity)",
                setting="name",
                value=self.name,
            )
        if not isinstance(self.key, str):
            raise ConfigurationError(
                f"the key of entity {self.name!r} must be a string, got {self.key!r} "
                f"({type(self.key).__name__}); use str(...) of it",
                setting="key",
                value=self.key,
            )

    def __str__(self) -> str:
        return f"@{self.name}@{self.key}"

    @classmethod
    def parse(cls, text: str) -> EntityId:
        """``@name@key`` or ``name@key`` (or ``name/key``) as an :class:`EntityId`."""
        body = text[1:] if text.startswith("@") else text
        for separator in ("@", "/"):
            name, found, key = body.partition(separator)
            if found:
                return cls(name, key)
        raise ConfigurationError(
            f"{text!r} does not name an entity; write it as @name@key (e.g. @counter@c1)",
            setting="entity",
            value=text,
        )


def as_entity_id(value: Any, where: str) -> EntityId:
    """An :class:`EntityId` from one, or from its text form; else a clear error."""
    if isinstance(value, EntityId):
        return value
    if isinstance(value, str):
        return EntityId.parse(value)
    raise ConfigurationError(
        f"{where} expects an EntityId(name, key) or its text '@name@key', got {value!r}",
        setting="entity_id",
        value=value,
    )


@dataclass(slots=True)
class EntitySignal:
    """A one-way message to an entity that a step sends: ``ctx.signal_entity``, or the
    release of a critical section's lock. ``key`` is its call key: with the instance it
    makes the message's id, so a message sent again by a replay is not applied twice."""

    key: str
    entity: EntityId
    operation: str | None  # None for a lock's release
    input: Any
    kind: str = OPERATION
