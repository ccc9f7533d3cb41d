"""The pure replay engine: tasks, the ctx API and the replay driver."""

from __future__ import annotations

from durable_nb.engine.context import OrchestrationContext
from durable_nb.engine.replay import OrchestrationEngine, Step
from durable_nb.engine.tasks import ActivityCall, ActivityTask, Task, WhenAll, WhenAny

__all__ = [
    "ActivityCall",
    "ActivityTask",
    "OrchestrationContext",
    "OrchestrationEngine",
    "Step",
    "Task",
    "WhenAll",
    "WhenAny",
]
