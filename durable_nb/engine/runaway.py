"""A guard against runaway orchestrators: a polling loop that lost its durable timer or
its way out schedules calls as fast as the loop turns (a Durable Functions sample with a
missing ``break`` scheduled 112,810 calls in 25 s). The engine counts each activity's
calls since the last durable timer and reports the first that reaches the limit, once a
run; the runtime turns that into a warning."""

from __future__ import annotations

# Calls of one activity in one run, with no durable timer created in between, after which
# the run is reported as a likely runaway.
RUNAWAY_CALLS = 100_000


class RunawayGuard:
    """Calls per activity since the last durable timer, against a limit (0: no limit)."""

    __slots__ = ("_counts", "_limit", "_reported")

    def __init__(self, limit: int | None) -> None:
        self._limit = limit or 0
        self._counts: dict[str, int] = {}
        self._reported = False

    def called(self, name: str) -> tuple[str, int] | None:
        """Count a call of ``name``; (name, count) the first time one reaches the limit."""
        if not self._limit or self._reported:
            return None
        count = self._counts.get(name, 0) + 1
        self._counts[name] = count
        if count < self._limit:
            return None
        self._reported = True
        return name, count

    def timer_created(self) -> None:
        """A durable timer paces what follows: counting starts afresh."""
        self._counts.clear()
