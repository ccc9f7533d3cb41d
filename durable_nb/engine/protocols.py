"""What the engine needs of an activity or an orchestrator, and nothing more.

The engine keys calls by a definition's name and code digest, and binds a
sub-orchestrator's input to check it at the call. Everything else a definition has
(its function, options, executor) belongs to whoever carries out the calls, so the
engine is generic over the definition types and hands back the objects it was given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar


class ActivityDefinition(Protocol):
    """An activity as the engine sees it."""

    @property
    def name(self) -> str: ...

    def code_digest(self, scheme: int) -> str:
        """The digest of the activity's code under key scheme ``scheme``."""
        ...


class OrchestratorDefinition(ActivityDefinition, Protocol):
    """A sub-orchestrator as the engine sees it: also binds its input."""

    def bind_input(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], via: str = ...
    ) -> dict[str, Any]:
        """The input as keyword arguments; raises OrchestratorInputError if it does not fit."""
        ...


A = TypeVar("A", bound=ActivityDefinition)
O = TypeVar("O", bound=OrchestratorDefinition)  # noqa: E741 - paired with A

# Checks the input of ctx.continue_as_new at the orchestrator's line.
BindInput = Callable[[tuple[Any, ...], dict[str, Any]], object]
