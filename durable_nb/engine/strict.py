"""Strict mode: the same calls in the same order as the last run that ended.

The default matching is by call key, which tolerates edits. Strict mode adds a check
by position against the calls the last finished run recorded in its
``ExecutionFinished`` event.
"""

from __future__ import annotations

from durable_nb.errors import NonDeterminismError


def check_position(
    orchestrator: str,
    instance_id: str,
    reference: tuple[str, ...] | None,
    position: int,
    name: str,
) -> None:
    """Raise NonDeterminismError if the recorded run called another activity at ``position``."""
    if reference is None or position >= len(reference) or reference[position] == name:
        return
    raise NonDeterminismError(
        f"orchestrator {orchestrator!r} (instance {instance_id}) called activity "
        f"{name!r} at call position {position}, but the recorded run called "
        f"{reference[position]!r} there. Strict mode requires the same calls in the "
        "same order; drop strict=True to match results by call key, or start afresh "
        "with fresh=True.",
        orchestrator=orchestrator,
        position=position,
        activity=name,
        recorded=reference[position],
        instance_id=instance_id,
    )
