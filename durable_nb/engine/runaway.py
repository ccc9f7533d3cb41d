"""A guard against runaway orchestrators: a polling loop that lost its durable timer or
its way out schedules calls as fast as the loop turns (a Durable Functions sample with a
missing ``break`` scheduled 112,810 calls in 25 s). Such a loop waits for each call
before it makes the next, so the engine counts, per activity, the *resumes* of the
orchestrator (each time it goes on after a yield or await) in which the activity was
called, since the last durable timer; it reports the first that reaches the limit, once
a run, and the runtime turns that into a warning. A deliberate fan-out makes all its
calls in one resume (``ctx.task_all`` of a list): it counts once, whatever its size."""

from __future__ import annotations

# Resumes of one run calling one activity, with no durable timer created in between,
# after which the run is reported as a likely runaway.
RUNAWAY_CALLS = 100_000


class RunawayGuard:
    """Resumes calling each activity since the last durable timer, against a limit (0:
    no limit)."""

    __slots__ = ("_counts", "_last", "_limit", "_reported")

    def __init__(self, limit: int | None) -> None:
        self._limit = limit or 0
        self._counts: dict[str, int] = {}
        self._last: dict[str, int] = {}  # activity -> the resume that last counted it
        self._reported = False

    def called(self, name: str, resume: int) -> tuple[str, int] | None:
        """Count a call of ``name`` made in resume number ``resume`` of the orchestrator,
        once per resume; (name, count) the first time one reaches the limit."""
        if not self._limit or self._reported or self._last.get(name) == resume:
            return None
        self._last[name] = resume
        count = self._counts.get(name, 0) + 1
        self._counts[name] = count
        if count < self._limit:
            return None
        self._reported = True
        return name, count

    def timer_created(self) -> None:
        """A durable timer paces what follows: counting starts afresh."""
        self._counts.clear()
        self._last.clear()
