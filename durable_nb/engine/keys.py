"""Call keys: ``"{name}/{code digest[:16]}/{arguments digest}#{occurrence}"``.

The occurrence counts the calls of one name/code/arguments triple in a run, so the
n-th identical call of a run matches the n-th of the recorded run; the position
counts every call (strict mode checks names by position).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic

from durable_nb.engine.protocols import A
from durable_nb.fingerprint import KEY_SCHEME, arguments_digest


class CallKeys(Generic[A]):
    """The keys of one run's calls, in the order the orchestrator makes them."""

    __slots__ = ("_occurrences", "_prefixes", "position")

    def __init__(self) -> None:
        self._occurrences: dict[str, int] = {}
        self._prefixes: dict[A, str] = {}
        self.position = 0  # of the next call

    def prefix(self, definition: A) -> str:
        """``name/code digest[:16]/`` under this release's scheme, once per definition
        object (a cell run again during the run makes a new one)."""
        found = self._prefixes.get(definition)
        if found is None:
            digest = definition.code_digest(KEY_SCHEME)[:16]
            found = self._prefixes[definition] = f"{definition.name}/{digest}/"
        return found

    def next(self, triple: str) -> tuple[str, int, int]:
        """The key, occurrence and position of the next call of ``triple``."""
        occurrence = self._occurrences.get(triple, 0)
        self._occurrences[triple] = occurrence + 1
        position = self.position
        self.position += 1
        return f"{triple}#{occurrence}", occurrence, position


def older_triple(
    owner: str, definition: A, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Callable[[int], str]:
    """A call's ``name/code digest/arguments digest`` under an older key scheme, for the
    results an older release recorded (made only for a history that has some)."""

    def triple(scheme: int) -> str:
        digest = arguments_digest(owner, args, kwargs, scheme=scheme)
        return f"{definition.name}/{definition.code_digest(scheme)[:16]}/{digest}"

    return triple
