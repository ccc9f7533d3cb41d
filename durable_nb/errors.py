"""Every error durable_nb raises derives from one root, :class:`DurableNbError`.

The tree::

    DurableNbError
    ├── DefinitionError          an activity or orchestrator that cannot be used as written
    ├── ActivityNotFoundError    ctx.call_activity named an activity that is not registered
    ├── FingerprintError         an argument that cannot be digested into a stable call key
    ├── OrchestratorError        an orchestrator that waited on something other than a ctx task
    ├── OrchestratorInputError   input the orchestrator's signature cannot take (also TypeError)
    ├── NonDeterminismError      strict mode: the call at a position is not the one recorded
    ├── ActivityTimeoutError     one attempt of an activity ran past its timeout (also TimeoutError)
    ├── ResultNotStorableError   an activity result the store cannot serialise
    ├── InstanceNotFinishedError a handle's result was asked for before the run ended
    ├── InstanceBusyError        the instance is already being run (by this or another kernel)
    ├── InstanceNotFoundError    a management verb named an instance the store does not have
    ├── EventTimeoutError        ctx.wait_for_external_event waited past its timeout
    ├── InstanceTerminatedError  the instance was terminated while the caller waited on it
    └── StoreError               the checkpoint folder cannot be opened or used

Control signals derive from ``BaseException`` so ``except Exception`` in user code
cannot swallow them:

    ContinueAsNew                raised by ctx.continue_as_new() to restart the instance

Activity failures are *not* wrapped: the original exception reaches the
orchestrator's ``yield``/``await`` so ``try/except ValueError`` works, with the
activity name, attempt count, instance and call key attached as attributes
(``durable_activity``, ``durable_attempts``, ``durable_instance``,
``durable_call``) and as a note on the traceback.
"""

from __future__ import annotations

import sys


class DurableNbError(Exception):
    """Root of every error raised by durable_nb."""


class DefinitionError(DurableNbError, TypeError):
    """An activity or orchestrator definition that durable_nb cannot use."""


class ActivityNotFoundError(DurableNbError, LookupError):
    """``ctx.call_activity`` was given a name that no activity is registered under."""


class ActivityArgumentsError(DurableNbError, TypeError):
    """``ctx.call_activity`` passed arguments that the activity's signature cannot take."""


class OrchestratorInputError(DurableNbError, TypeError):
    """``.run``, ``await orch(...)``, ``ctx.continue_as_new`` or ``ctx.call_sub_orchestrator``
    passed input the orchestrator's signature cannot take.

    Also a ``TypeError``: that is what Python raises for a call with arguments the
    function cannot take, and what code written before this class existed catches.
    """


class FingerprintError(DurableNbError, TypeError):
    """An activity argument cannot be turned into a stable digest."""


class OrchestratorError(DurableNbError):
    """An orchestrator yielded or awaited something that is not a durable task."""


class NonDeterminismError(DurableNbError):
    """Strict mode: the orchestrator's calls differ from the recorded run."""


class ActivityTimeoutError(DurableNbError, TimeoutError):
    """An attempt of an activity ran longer than its ``timeout``."""


class ResultNotStorableError(DurableNbError, TypeError):
    """An activity returned a value that cannot be written to the checkpoint store."""


class InstanceNotFinishedError(DurableNbError):
    """The result of an instance was requested while it is still running."""


class InstanceBusyError(DurableNbError):
    """The instance is already being run by this or another kernel."""


class InstanceNotFoundError(DurableNbError, LookupError):
    """No instance with that id is in the store."""


class EventTimeoutError(DurableNbError, TimeoutError):
    """An awaited external event did not arrive in time."""


class InstanceTerminatedError(DurableNbError):
    """The instance was terminated (``%durable terminate``, ``handle.terminate()``)."""


class StoreError(DurableNbError):
    """The checkpoint store cannot be opened, read or written."""


class ContinueAsNew(BaseException):
    """Control signal: end this run and restart the instance with a new input."""

    def __init__(self, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        super().__init__("continue_as_new")
        self.new_args = args
        self.new_kwargs = kwargs


__all__ = [
    "ActivityNotFoundError",
    "ActivityTimeoutError",
    "ContinueAsNew",
    "DefinitionError",
    "DurableNbError",
    "EventTimeoutError",
    "FingerprintError",
    "InstanceBusyError",
    "InstanceNotFinishedError",
    "InstanceNotFoundError",
    "InstanceTerminatedError",
    "NonDeterminismError",
    "OrchestratorError",
    "ResultNotStorableError",
    "StoreError",
]


def add_note(error: BaseException, note: str) -> None:
    """``error.add_note(note)``; on Python 3.10, which has no such method (nor shows
    notes), the note is still kept in ``__notes__`` where 3.11 would put it."""
    try:
        if sys.version_info >= (3, 11):
            error.add_note(note)
        else:
            error.__notes__ = [*getattr(error, "__notes__", ()), note]
    except (AttributeError, TypeError):  # exceptions with __slots__, or odd __notes__
        pass
