"""Results of earlier runs, by call key, under every key scheme that recorded them.

A call's key is ``"{name}/{code digest[:16]}/{arguments digest}#{occurrence}"``, with
digests computed by a *key scheme* (:mod:`durable_nb.fingerprint`). A history written
by an older release holds keys of its scheme (each run's ``ExecutionStarted`` says
which), so a call missing under its current key is looked up again under each older
scheme the history holds: its key recomputed there, with the same occurrence (the
calls of one triple are the calls of one triple in every scheme). Keys are reproduced,
never matched by name, so an edit made during an upgrade is still seen.

Failures are not results: they are retried, never replayed. A live run receives a
failure's exception; one recorded by another process is known by name only
(:func:`failure_known_by_name`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from durable_nb import history
from durable_nb.errors import ActivityFailedError
from durable_nb.fingerprint import KEY_SCHEME, SCHEMES

Hit = tuple[Any, float, int]  # value, completion time, position in history


class ResultBook:
    """Successful results of earlier runs, keyed by call key."""

    __slots__ = ("older_schemes", "results")

    def __init__(self) -> None:
        self.results: dict[str, Hit] = {}
        # Schemes of earlier runs other than this release's, newest first; a scheme this
        # release cannot compute (a newer one) is never looked up.
        self.older_schemes: list[int] = []

    def __bool__(self) -> bool:
        return bool(self.results)

    def add(self, key: str, hit: Hit) -> None:
        self.results[key] = hit

    def run_keyed_by(self, scheme: int) -> None:
        """An earlier run in the history keyed its calls under ``scheme``."""
        if scheme != KEY_SCHEME and scheme in SCHEMES and scheme not in self.older_schemes:
            self.older_schemes.append(scheme)
            self.older_schemes.sort(reverse=True)

    def find(self, key: str, triple: Callable[[int], str], occurrence: int) -> Hit | None:
        """The result of the call with current ``key``, or recorded under an older
        scheme where ``triple(scheme)`` is its name/code/arguments part."""
        hit = self.results.get(key)
        if hit is None and self.older_schemes:
            hit = self.find_older(triple, occurrence)
        return hit

    def find_older(self, triple: Callable[[int], str], occurrence: int) -> Hit | None:
        """The result recorded under an older scheme, newest first (:meth:`find`
        without the current key's lookup, for callers that made it)."""
        for scheme in self.older_schemes:
            hit = self.results.get(f"{triple(scheme)}#{occurrence}")
            if hit is not None:
                return hit
        return None


def failure_known_by_name(event: history.TaskFailed, instance_id: str) -> ActivityFailedError:
    """A failure whose exception object is not at hand (written by another process)."""
    return ActivityFailedError(
        f"{event.error_type}: {event.message}",
        activity=event.activity,
        call=event.key,
        attempt=event.attempts,
        error_type=event.error_type,
        instance_id=instance_id,
    )
