"""Warnings about orchestrators that misbehave without failing: a step that holds the
event loop (``time.sleep`` or I/O in the orchestrator), and a runaway polling loop
(one activity called very many times with no durable timer in between)."""

from __future__ import annotations

import time
import warnings

SLOW_STEP_SECONDS = 1.0
# What a step may take besides, per call it schedules or answers from history: a
# 100,000-call fan-out's first step legitimately takes seconds (the engine's own work
# is 15-20 µs per call on an idle machine, 2-3x that on a busy one).
SLOW_STEP_SECONDS_PER_CALL = 50e-6


class SlowOrchestratorWarning(UserWarning):
    """An orchestrator step blocked the event loop (time.sleep, I/O in the orchestrator)."""


class RunawayOrchestratorWarning(UserWarning):
    """An orchestrator called one activity very many times with no durable timer in
    between: most likely a polling loop missing its ``break`` or its ``create_timer``."""


def warn_if_slow(
    orchestrator: str, instance_id: str, what: str, started: float, calls: int = 0
) -> None:
    """Warn when one step of the orchestrator, begun at ``started`` (monotonic), held the
    event loop for long: that is time.sleep or real work in the orchestrator, which
    belongs in an activity. ``calls``: how many calls the step scheduled or answered
    from history; each one is allowed a little time."""
    spent = time.monotonic() - started
    if spent > SLOW_STEP_SECONDS + calls * SLOW_STEP_SECONDS_PER_CALL:
        warnings.warn(
            f"orchestrator {orchestrator!r} (instance {instance_id}) held the event loop "
            f"for {spent:.1f} s in one step ({what}); never time.sleep or do I/O in an "
            "orchestrator: use ctx.create_timer and activities",
            SlowOrchestratorWarning,
            stacklevel=3,
        )


def warn_runaway(orchestrator: str, instance_id: str, activity: str, calls: int) -> None:
    """Warn (the engine reports it once per run) that the orchestrator called
    ``activity`` ``calls`` times with no durable timer in between."""
    warnings.warn(
        f"orchestrator {orchestrator!r} (instance {instance_id}) called activity "
        f"{activity!r} {calls} times with no durable timer in between: a polling loop "
        "missing its break, or with no wait? Add `yield ctx.create_timer(...)` between "
        "polls, or raise the limit with durable_nb.configure(runaway_calls=N) "
        "(0 turns this check off)",
        RunawayOrchestratorWarning,
        stacklevel=4,
    )
