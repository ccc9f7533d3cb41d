"""What a step of the engine hands back, and how a run ended.

A step is the engine's whole answer to the events it was given: the work to carry
out (activity calls, timers to arm, children to start) and the history those
decisions imply (``events``), which the runtime appends as it is, in that order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic

from durable_nb import history
from durable_nb.engine.entity_ids import EntitySignal
from durable_nb.engine.protocols import A, O
from durable_nb.engine.tasks import ActivityCall, SubOrchestrationCall, TimerCall

_UNSET: Any = object()


class Step(Generic[A, O]):
    """What the runtime must do after the engine consumed some events.

    A plain class with slots: the engine makes one per step, so it is built by hand."""

    __slots__ = (
        "custom_status",
        "events",
        "replayed",
        "runaway",
        "scheduled",
        "signals",
        "subs",
        "timers",
        "waiting_events",
    )

    def __init__(self) -> None:
        self.scheduled: list[ActivityCall[A]] = []
        self.replayed: list[str] = []  # names answered from history
        self.timers: list[TimerCall] = []  # to arm: new ones and recorded ones
        self.subs: list[SubOrchestrationCall[O]] = []
        # One-way messages to entities, to queue before the step's history is written.
        self.signals: list[EntitySignal] = []
        self.waiting_events: list[str] = []
        self.custom_status: Any = _UNSET
        # (activity name, steps): the run called it in that many steps with no durable
        # timer created in between (engine/runaway.py); reported once per run.
        self.runaway: tuple[str, int] | None = None
        # The history this step implies (TaskScheduled, TimerCreated, CustomStatusSet,
        # ExecutionFinished), to append as it is.
        self.events: list[history.Event] = []

    def __repr__(self) -> str:
        return (
            f"Step(scheduled={self.scheduled!r}, replayed={self.replayed!r}, "
            f"timers={self.timers!r}, subs={self.subs!r}, events={self.events!r})"
        )

    @property
    def has_custom_status(self) -> bool:
        return self.custom_status is not _UNSET


@dataclass
class Outcome:
    """How a run ended."""

    status: history.Status  # completed | failed | terminated | continued_as_new | interrupted
    output: Any = None
    failure: BaseException | None = None
    message: str = ""
    new_input: tuple[tuple[Any, ...], dict[str, Any]] | None = None


def end_message(status: history.Status, failure: BaseException | None, reason: str) -> str:
    """The message an ended run records (``ExecutionFinished.message``, the record's error)."""
    if status == history.Status.TERMINATED:
        return f"terminated: {reason}"
    if status == history.Status.FAILED and failure is not None:
        return f"{type(failure).__name__}: {failure}"
    return ""


def finished_event(
    status: history.Status, message: str, calls: tuple[str, ...] | None, at: float
) -> history.ExecutionFinished:
    """The event that ends a run. ``calls`` (strict mode) is the next run's reference,
    except after an interrupted run: a partial run is no reference."""
    if status == history.Status.INTERRUPTED:
        calls = None
    return history.ExecutionFinished(at, status.value, message, calls)
