"""durable_nb: durable workflows for Jupyter notebooks.

Declare activities (``%%activity`` or ``@activity``) and orchestrators
(``%%orchestrator`` or ``@orchestrator``); every activity result is checkpointed
so rerunning a notebook resumes instead of redoing finished work.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the names below are, for mypy and IDEs; loaded on first use
    from durable_nb.definitions import (
        Activity,
        Orchestrator,
        activity,
        orchestrator,
    )
    from durable_nb.engine import OrchestrationContext, RetryOptions, Task
    from durable_nb.engine.entities import EntityLock
    from durable_nb.engine.entity_ids import EntityId
    from durable_nb.entities import Entity, EntityContext, entity
    from durable_nb.entity_client import EntityStateResponse, read_entity_state, signal_entity
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
        EntityLockedError,
        EntityNotFoundError,
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
    "Entity",
    "EntityContext",
    "EntityId",
    "EntityLock",
    "EntityLockedError",
    "EntityNotFoundError",
    "EntityStateResponse",
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
    "RetryOptions",
    "RunawayOrchestratorWarning",
    "Runtime",
    "SlowOrchestratorWarning",
    "StoreError",
    "SubOrchestrationEndedError",
    "Task",
    "__version__",
    "activity",
    "configure",
    "entity",
    "get_runtime",
    "load_ipython_extension",
    "orchestrator",
    "read_entity_state",
    "signal_entity",
    "unload_ipython_extension",
]


# Where each public name lives. ``import durable_nb`` loads none of them, so that
# ``import durable_nb.engine`` or ``durable_nb.history`` does not load the runtime,
# the store and diskcache (PEP 562: a module's ``__getattr__`` is called for a name
# it does not have yet).
_LAZY: dict[str, str] = {
    **dict.fromkeys(["Activity", "Orchestrator", "activity", "orchestrator"], "definitions"),
    **dict.fromkeys(["OrchestrationContext", "RetryOptions", "Task"], "engine"),
    **dict.fromkeys(["Entity", "EntityContext", "entity"], "entities"),
    **dict.fromkeys(["EntityStateResponse", "read_entity_state", "signal_entity"], "entity_client"),
    "EntityId": "engine.entity_ids",
    "EntityLock": "engine.entities",
    **dict.fromkeys(
        [
            "ActivityArgumentsError",
            "ActivityError",
            "ActivityFailedError",
            "ActivityInterruptError",
            "ActivityLostError",
            "ActivityNotFoundError",
            "ActivityTimeoutError",
            "ConfigurationError",
            "ContinueAsNew",
            "DefinitionError",
            "DurableNbError",
            "EntityLockedError",
            "EntityNotFoundError",
            "EventLoopError",
            "EventTimeoutError",
            "FingerprintError",
            "InstanceBusyError",
            "InstanceConflictError",
            "InstanceError",
            "InstanceFinishedError",
            "InstanceInputMissingError",
            "InstanceNotFinishedError",
            "InstanceNotFoundError",
            "InstanceTerminatedError",
            "NonDeterminismError",
            "OrchestrationError",
            "OrchestratorError",
            "OrchestratorInputError",
            "OrchestratorNotFoundError",
            "ResultNotStorableError",
            "StoreError",
            "SubOrchestrationEndedError",
        ],
        "errors",
    ),
    "InstanceHandle": "handles",
    "MemoryStore": "memory_store",
    "ActivityOptions": "options",
    **dict.fromkeys(
        ["RunawayOrchestratorWarning", "SlowOrchestratorWarning"], "orchestrator_warnings"
    ),
    **dict.fromkeys(["Runtime", "configure", "get_runtime"], "runtime"),
    **dict.fromkeys(["CheckpointStore", "DiskCacheStore", "InstanceRecord"], "store"),
}


if not TYPE_CHECKING:  # mypy sees the imports above, and no catch-all __getattr__

    def __getattr__(name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value  # the next lookup does not come here
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext durable_nb``: register %%activity, %%orchestrator and %durable."""
    from durable_nb.magics import register_magics

    register_magics(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext durable_nb``: remove the magics; definitions already made stay usable."""
    from durable_nb.magics import unregister_magics

    unregister_magics(ipython)


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """Jupyter Server's hook: the HTTP management API (``durable_nb.server_extension``),
    enabled by the config file the package installs."""
    return [{"module": "durable_nb.server_extension"}]
