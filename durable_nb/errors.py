"""Every error durable_nb raises derives from one root, :class:`DurableNbError`,
grouped by cause (as httpx groups its errors): catch a group to handle every error
of that cause, a leaf for one case, or a builtin base such as ``TypeError`` as code
written before the groups existed does.

The tree (builtin bases in parentheses)::

    DurableNbError
    ├── ConfigurationError (ValueError)         a setting or argument value it cannot use
    │   └── VerbUsageError (ValueError)         a management verb's arguments do not fit
    ├── EventLoopError (RuntimeError)           cannot run on (or without) this event loop
    ├── DefinitionError (TypeError)             code that does not fit durable_nb or itself
    │   ├── ActivityNotFoundError (LookupError, TypeError)    no activity under that name
    │   │   └── OrchestratorNotFoundError (LookupError, TypeError)   no orchestrator under it
    │   ├── EntityNotFoundError (LookupError, TypeError)      no entity (or operation) so named
    │   ├── ActivityArgumentsError (TypeError)  a call the activity's signature cannot take
    │   └── OrchestratorInputError (TypeError)  input the orchestrator's signature cannot take
    ├── OrchestrationError                      a run cannot go on as its orchestrator asks
    │   ├── OrchestratorError                   waited on something not a ctx task; misused ctx
    │   ├── NonDeterminismError                 strict mode: not the call recorded there
    │   ├── EventTimeoutError (TimeoutError)    an awaited external event did not come in time
    │   └── FingerprintError (TypeError)        a value no call key or instance id can be made of
    ├── ActivityError                           a call of an activity failed, found by durable_nb
    │   ├── ActivityTimeoutError (TimeoutError) an attempt ran past its timeout
    │   ├── ActivityInterruptError              it raised KeyboardInterrupt or SystemExit
    │   ├── ActivityLostError                   the executor lost the attempt (a worker died)
    │   ├── ActivityFailedError                 stands in for an exception known by name only
    │   └── ResultNotStorableError (TypeError)  a result the store cannot serialise
    ├── InstanceError                           the instance cannot take the request now
    │   ├── InstanceNotFoundError (LookupError) the store does not have it
    │   ├── InstanceBusyError                   it is being run already (this or another kernel)
    │   ├── EntityLockedError                   a lock its critical section holds, not running
    │   ├── InstanceConflictError               its id belongs to another orchestrator
    │   ├── InstanceNotFinishedError            its result was asked for before the run ended
    │   ├── InstanceFinishedError               it has ended, so it cannot take an event
    │   ├── InstanceTerminatedError             it was terminated while the caller waited
    │   ├── InstanceInputMissingError           its input was not stored: it cannot be rewound
    │   └── SubOrchestrationEndedError          a sub-orchestration ended without completing
    └── StoreError                              the checkpoint folder cannot be opened or used

Where each case belongs, by cause:

* ``DefinitionError``: the code itself is wrong, whatever the data: a definition
  durable_nb cannot use, a name nothing is defined under, a call with arguments the
  called signature cannot take. The fix is an edit to a cell. Such calls are
  ``TypeError`` in Python, so the whole group is too. ``ActivityArgumentsError`` is
  here, not under ``ActivityError``: the activity never ran, the call site (or the
  signature) is at fault, and it is never retried.
* ``OrchestrationError``: the orchestrator's code asked for something a durable,
  replayed run cannot do, or its run cannot go on (strict replay diverged, an event
  did not come in time). ``FingerprintError`` is here: call keys and instance ids are
  what replay matches on, and an argument without a stable digest has neither.
* ``ActivityError``: one call of an activity failed for a reason durable_nb found
  (it ran too long, was lost, was interrupted, returned what cannot be stored). The
  activity's own exceptions are *not* wrapped (see below).
* ``InstanceError``: the request is fine but the instance named cannot take it now.
* ``ConfigurationError``: a value given to durable_nb (``configure()``, an
  ``instance_id``, an executor, a progress mode, an age, an event name) is not one
  it can use; ``ValueError`` as Python's own errors for bad values are.
* ``EventLoopError``: ``start()`` and ``rewind()`` need a running event loop, and
  ``run()`` cannot re-enter a loop patched by the original nest_asyncio.

Every error takes its message positionally, as any exception does, and its context
as keyword-only arguments defaulting to None, kept as attributes (None when they do
not apply or are not known): every ``DurableNbError`` has ``instance_id``; the groups
add ``activity``, ``orchestrator``, ``call`` (the call key), ``attempt``, ``timeout``,
``setting``/``value``, ``status`` or ``location`` where they apply, so
``SomeError("text")`` still works. The attributes survive pickling.

Control signals derive from ``BaseException`` so ``except Exception`` in user code
cannot swallow them::

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
    """Root of every error raised by durable_nb; ``instance_id`` names the instance
    it concerns, when there is one."""

    def __init__(self, *args: object, instance_id: str | None = None) -> None:
        super().__init__(*args)
        self.instance_id = instance_id


# ------------------------------------------------------------------ configuration


class ConfigurationError(DurableNbError, ValueError):
    """A value given to durable_nb that it cannot use: a ``configure()`` setting, an
    ``instance_id``, an executor or its name, a progress mode, an age, an event name
    or value, a management action, a ``RetryOptions`` field. ``setting`` names the
    parameter, ``value`` is what was given."""

    def __init__(
        self,
        *args: object,
        setting: str | None = None,
        value: object = None,
        instance_id: str | None = None,
    ) -> None:
        super().__init__(*args, instance_id=instance_id)
        self.setting = setting
        self.value = value


class VerbUsageError(ConfigurationError):
    """A management verb (``%durable ...``, ``durable-nb ...``) was called with
    arguments that do not fit; both turn it into a usage message."""


class EventLoopError(DurableNbError, RuntimeError):
    """The call cannot run here: it needs a running event loop (``orch.start()``,
    ``rewind``), or this loop cannot be re-entered (``orch.run()`` on a loop patched
    by the original nest_asyncio). ``RuntimeError`` as asyncio's own are."""


# ------------------------------------------------------------------ definitions


class DefinitionError(DurableNbError, TypeError):
    """Code that does not fit durable_nb or itself: an activity or orchestrator
    definition durable_nb cannot use, a name nothing is registered under, or a call
    its callee's signature cannot take. ``activity`` and ``orchestrator`` name what
    is concerned."""

    def __init__(
        self,
        *args: object,
        activity: str | None = None,
        orchestrator: str | None = None,
        instance_id: str | None = None,
    ) -> None:
        super().__init__(*args, instance_id=instance_id)
        self.activity = activity
        self.orchestrator = orchestrator


class ActivityNotFoundError(DefinitionError, LookupError):
    """``ctx.call_activity`` was given a name that no activity is registered under
    (``activity``)."""


class OrchestratorNotFoundError(ActivityNotFoundError):
    """No orchestrator is defined under the name (``orchestrator``): in
    ``ctx.call_sub_orchestrator``, or for a rewind in a kernel without its cell.

    Derives from ActivityNotFoundError because releases before it raised that class
    for unknown orchestrator names too, and ``except ActivityNotFoundError`` written
    then must keep catching them."""


class EntityNotFoundError(DefinitionError, LookupError):
    """No entity is defined under the name in this kernel (run its ``%%entity`` cell,
    or define it with ``@entity``), or a class entity has no such operation. ``entity``
    is the entity's ``@name@key``."""

    def __init__(
        self, *args: object, entity: str | None = None, instance_id: str | None = None
    ) -> None:
        super().__init__(*args, instance_id=instance_id)
        self.entity = entity


class ActivityArgumentsError(DefinitionError):
    """``ctx.call_activity`` passed arguments that the activity's signature cannot
    take; ``call`` is the call's key. Not retried: the activity never ran."""

    def __init__(
        self,
        *args: object,
        activity: str | None = None,
        orchestrator: str | None = None,
        call: str | None = None,
        instance_id: str | None = None,
    ) -> None:
        super().__init__(
            *args, activity=activity, orchestrator=orchestrator, instance_id=instance_id
        )
        self.call = call


class OrchestratorInputError(DefinitionError):
    """``.run``, ``await orch(...)``, ``ctx.continue_as_new`` or ``ctx.call_sub_orchestrator``
    passed input the orchestrator's signature cannot take.

    Also a ``TypeError``: that is what Python raises for a call with arguments the
    function cannot take, and what code written before this class existed catches.
    """


# ------------------------------------------------------------------ orchestration


class OrchestrationError(DurableNbError):
    """A run that cannot go on as its orchestrator's code asks. ``orchestrator``
    names it."""

    def __init__(
        self,
        *args: object,
        orchestrator: str | None = None,
        instance_id: str | None = None,
    ) -> None:
        super().__init__(*args, instance_id=instance_id)
        self.orchestrator = orchestrator


class OrchestratorError(OrchestrationError):
    """An orchestrator yielded or awaited something that is not a durable task, or
    used a ctx method in a way a replayed run cannot (a naive datetime for a timer,
    an empty event name, the result of a task not yet finished)."""


class NonDeterminismError(OrchestrationError):
    """Strict mode: the orchestrator's calls differ from the recorded run: at call
    ``position`` it called ``activity`` where the recorded run called ``recorded``."""

    def __init__(
        self,
        *args: object,
        orchestrator: str | None = None,
        position: int | None = None,
        activity: str | None = None,
        recorded: str | None = None,
        instance_id: str | None = None,
    ) -> None:
        super().__init__(*args, orchestrator=orchestrator, instance_id=instance_id)
        self.position = position
        self.activity = activity
        self.recorded = recorded


class EventTimeoutError(OrchestrationError, TimeoutError):
    """The awaited external ``event`` did not arrive within ``timeout``."""

    def __init__(
        self,
        *args: object,
        orchestrator: str | None = None,
        event: str | None = None,
        timeout: object = None,
        instance_id: str | None = None,
    ) -> None:
        super().__init__(*args, orchestrator=orchestrator, instance_id=instance_id)
        self.event = event
        self.timeout = timeout


class FingerprintError(OrchestrationError, TypeError):
    """A value cannot be turned into a stable digest, so no call key (or instance
    id) can be made of it; ``argument`` says which one ("positional argument 0")."""

    def __init__(
        self,
        *args: object,
        orchestrator: str | None = None,
        argument: str | None = None,
        instance_id: str | None = None,
    ) -> None:
        super().__init__(*args, orchestrator=orchestrator, instance_id=instance_id)
        self.argument = argument


# ------------------------------------------------------------------ activities


class ActivityError(DurableNbError):
    """One call of an activity failed for a reason durable_nb found, not an exception
    the activity raised (those reach the orchestrator unwrapped). ``activity`` names
    it, ``call`` is the call key, ``attempt`` the attempt number (from 1)."""

    def __init__(
        self,
        *args: object,
        activity: str | None = None,
        call: str | None = None,
        attempt: int | None = None,
        instance_id: str | None = None,
    ) -> None:
        super().__init__(*args, instance_id=instance_id)
        self.activity = activity
        self.call = call
        self.attempt = attempt


class ActivityTimeoutError(ActivityError, TimeoutError):
    """An attempt of an activity ran longer than its ``timeout`` (seconds)."""

    def __init__(
        self,
        *args: object,
        activity: str | None = None,
        call: str | None = None,
        attempt: int | None = None,
        timeout: float | None = None,
        instance_id: str | None = None,
    ) -> None:
        super().__init__(
            *args, activity=activity, call=call, attempt=attempt, instance_id=instance_id
        )
        self.timeout = timeout


class ActivityInterruptError(ActivityError):
    """The activity raised ``KeyboardInterrupt`` or ``SystemExit`` (its ``__cause__``):
    inside an activity those are failures of that call, not signals to the kernel."""


class ActivityLostError(ActivityError):
    """The executor lost the attempt: the Dask cluster cancelled its task
    (``client.restart()``) or its worker died. The retry policy decides what next."""


class ActivityFailedError(ActivityError):
    """Stands in for an activity's exception known only by its type name
    (``error_type``) and message: a failure read back from history, which keeps only
    those two. The message is the original's, after its type name."""

    def __init__(
        self,
        *args: object,
        activity: str | None = None,
        call: str | None = None,
        attempt: int | None = None,
        error_type: str | None = None,
        instance_id: str | None = None,
    ) -> None:
        super().__init__(
            *args, activity=activity, call=call, attempt=attempt, instance_id=instance_id
        )
        self.error_type = error_type


class ResultNotStorableError(ActivityError, TypeError):
    """An activity returned a value that cannot be written to the checkpoint store
    (or sent back from its worker process)."""


# ------------------------------------------------------------------ instances


class InstanceError(DurableNbError):
    """The instance ``instance_id`` cannot take the request in the state it is in;
    ``status`` is that state where it matters."""

    def __init__(
        self,
        *args: object,
        instance_id: str | None = None,
        status: str | None = None,
    ) -> None:
        super().__init__(*args, instance_id=instance_id)
        self.status = status


class InstanceNotFoundError(InstanceError, LookupError):
    """No instance with that id is in the store."""


class InstanceBusyError(InstanceError):
    """The instance is already being run by this or another kernel."""


class EntityLockedError(InstanceError):
    """An entity call waits on a lock that a critical section of an instance that no
    longer runs holds (it was interrupted inside the section); ``instance_id`` is that
    instance, ``entity`` the entity."""

    def __init__(
        self, *args: object, entity: str | None = None, instance_id: str | None = None
    ) -> None:
        super().__init__(*args, instance_id=instance_id)
        self.entity = entity


class InstanceConflictError(InstanceError):
    """The instance id belongs to another orchestrator: ``owner`` made it,
    ``orchestrator`` was asked to run it."""

    def __init__(
        self,
        *args: object,
        instance_id: str | None = None,
        orchestrator: str | None = None,
        owner: str | None = None,
    ) -> None:
        super().__init__(*args, instance_id=instance_id)
        self.orchestrator = orchestrator
        self.owner = owner


class InstanceNotFinishedError(InstanceError):
    """The result of an instance was requested while it is still running."""


class InstanceFinishedError(InstanceError):
    """The instance has ended (``status``: completed, failed or terminated), so an
    event raised to it would never be received."""


class InstanceTerminatedError(InstanceError):
    """The instance was terminated (``%durable terminate``, ``handle.terminate()``)."""


class InstanceInputMissingError(InstanceError):
    """The instance's input was not stored (it could not be pickled), so it cannot be
    rewound; call the orchestrator again with the same arguments instead."""


class SubOrchestrationEndedError(InstanceError):
    """A sub-orchestration (``instance_id``) ended without completing and without an
    error of its own (``status``: terminated, for one); its parent sees this error."""


# ------------------------------------------------------------------ storage


class StoreError(DurableNbError):
    """The checkpoint store at ``location`` cannot be opened, read or written."""

    def __init__(
        self,
        *args: object,
        location: str | None = None,
        instance_id: str | None = None,
    ) -> None:
        super().__init__(*args, instance_id=instance_id)
        self.location = location


# ------------------------------------------------------------------ control signals


class ContinueAsNew(BaseException):
    """Control signal: end this run and restart the instance with a new input."""

    def __init__(self, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        super().__init__("continue_as_new")
        self.new_args = args
        self.new_kwargs = kwargs


__all__ = [
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
    "VerbUsageError",
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
