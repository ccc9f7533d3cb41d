"""The pure replay engine: tasks, the ctx API and the replay driver."""

from __future__ import annotations

from durable_nb.engine.context import OrchestrationContext
from durable_nb.engine.protocols import ActivityDefinition, OrchestratorDefinition
from durable_nb.engine.replay import OrchestrationEngine
from durable_nb.engine.retry_options import RetryOptions
from durable_nb.engine.step import Outcome, Step
from durable_nb.engine.tasks import (
    ActivityCall,
    ActivityTask,
    EventTask,
    SubOrchestrationCall,
    SubOrchestrationTask,
    Task,
    TimerCall,
    TimerTask,
    WhenAll,
    WhenAny,
)

__all__ = [
    "ActivityCall",
    "ActivityDefinition",
    "ActivityTask",
    "EventTask",
    "OrchestrationContext",
    "OrchestrationEngine",
    "OrchestratorDefinition",
    "Outcome",
    "RetryOptions",
    "Step",
    "SubOrchestrationCall",
    "SubOrchestrationTask",
    "Task",
    "TimerCall",
    "TimerTask",
    "WhenAll",
    "WhenAny",
]
