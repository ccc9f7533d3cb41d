"""durable_nb: durable workflows for Jupyter notebooks.

Declare activities (``%%activity`` or ``@activity``) and orchestrators
(``%%orchestrator`` or ``@orchestrator``); every activity result is checkpointed
so rerunning a notebook resumes instead of redoing finished work.
"""

from __future__ import annotations

from typing import Any

from durable_nb.definitions import (
    Activity,
    Orchestrator,
    activity,
    orchestrator,
)
from durable_nb.engine import OrchestrationContext, Task
from durable_nb.errors import (
    ActivityArgumentsError,
    ActivityError,
    ActivityFailedError,
    ActivityInterruptError,
    ActivityLostError,
    ActivityNotFoundError,
    ActivityTimeoutError,
    ConfigurationError,
    ContinueAsNew,
    DefinitionError,
    DurableNbError,
    EventLoopError,
    EventTimeoutError,
    FingerprintError,
    InstanceBusyError,
    InstanceConflictError,
    InstanceError,
    InstanceFinishedError,
    InstanceInputMissingError,
    InstanceNotFinishedError,
    InstanceNotFoundError,
    InstanceTerminatedError,
    NonDeterminismError,
    OrchestrationError,
    OrchestratorError,
    OrchestratorInputError,
    OrchestratorNotFoundError,
    ResultNotStorableError,
    StoreError,
    SubOrchestrationEndedError,
)
from durable_nb.handles import InstanceHandle
from durable_nb.memory_store import MemoryStore
from durable_nb.options import ActivityOptions
from durable_nb.orchestrator_warnings import RunawayOrchestratorWarning, SlowOrchestratorWarning
from durable_nb.runtime import Runtime, configure, get_runtime
from durable_nb.store import CheckpointStore, DiskCacheStore, InstanceRecord

__version__ = "0.1.0"

__all__ = [
    "Activity",
    "ActivityArgumentsError",
    "ActivityError",
    "ActivityFailedError",
    "ActivityInterruptError",
    "ActivityLostError",
    "ActivityNotFoundError",
    "ActivityOptions",
    "ActivityTimeoutError",
    "CheckpointStore",
    "ConfigurationError",
    "ContinueAsNew",
    "DefinitionError",
    "DiskCacheStore",
    "DurableNbError",
    "EventLoopError",
    "EventTimeoutError",
    "FingerprintError",
    "InstanceBusyError",
    "InstanceConflictError",
    "InstanceError",
    "InstanceFinishedError",
    "InstanceHandle",
    "InstanceInputMissingError",
    "InstanceNotFinishedError",
    "InstanceNotFoundError",
    "InstanceRecord",
    "InstanceTerminatedError",
    "MemoryStore",
    "NonDeterminismError",
    "OrchestrationContext",
    "OrchestrationError",
    "Orchestrator",
    "OrchestratorError",
    "OrchestratorInputError",
    "OrchestratorNotFoundError",
    "ResultNotStorableError",
    "RunawayOrchestratorWarning",
    "Runtime",
    "SlowOrchestratorWarning",
    "StoreError",
    "SubOrchestrationEndedError",
    "Task",
    "__version__",
    "activity",
    "configure",
    "get_runtime",
    "load_ipython_extension",
    "orchestrator",
    "unload_ipython_extension",
]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext durable_nb``: register %%activity, %%orchestrator and %durable."""
    from durable_nb.magics import register_magics

    register_magics(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext durable_nb``: remove the magics; definitions already made stay usable."""
    from durable_nb.magics import unregister_magics

    unregister_magics(ipython)
