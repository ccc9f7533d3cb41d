"""How an activity's failure reaches the orchestrator: a call that does not fit the
activity's signature is explained (and not retried), KeyboardInterrupt or SystemExit
raised inside an activity is a failure of that activity, and every failure carries
where it happened, as attributes and as a traceback note."""

from __future__ import annotations

from typing import TYPE_CHECKING

from durable_nb.errors import (
    ActivityArgumentsError,
    ActivityInterruptError,
    DurableNbError,
    add_note,
)

if TYPE_CHECKING:
    from durable_nb.definitions import ScheduledCall


def explain_bad_arguments(
    call: ScheduledCall, error: BaseException, instance_id: str
) -> BaseException:
    """A TypeError because the call does not fit the activity's signature becomes an
    ActivityArgumentsError saying which call, and is not retried (nor is it the
    activity's fault)."""
    if not isinstance(error, TypeError) or isinstance(error, DurableNbError):
        return error
    why = call.activity.arguments_mismatch(call.args, call.kwargs)
    if why is None:
        return error
    explained = ActivityArgumentsError(
        f"activity {call.activity.name!r} (instance {instance_id}, call "
        f"{call.key}) cannot take the arguments it was called with: {why}. Fix the "
        "ctx.call_activity(...) call in the orchestrator, or the activity's signature.",
        activity=call.activity.name,
        call=call.key,
        instance_id=instance_id,
    )
    explained.__cause__ = error
    return explained


def as_activity_error(
    exc: BaseException, call: ScheduledCall, attempt: int, instance_id: str
) -> BaseException:
    """KeyboardInterrupt or SystemExit raised *inside* an activity are failures of that
    activity, not signals to this process; everything else is passed through as is."""
    if isinstance(exc, Exception):
        return exc
    name = call.activity.name
    error = ActivityInterruptError(
        f"activity {name!r} raised {type(exc).__name__}; activities must signal failure "
        "with an Exception, so it was recorded as a failure",
        activity=name,
        call=call.key,
        attempt=attempt,
        instance_id=instance_id,
    )
    error.__cause__ = exc
    return error


def annotate(error: BaseException, name: str, attempts: int, instance_id: str, key: str) -> None:
    """Attach where the failure happened, as attributes and as a traceback note."""
    context = {
        "durable_activity": name,
        "durable_attempts": attempts,
        "durable_instance": instance_id,
        "durable_call": key,
    }
    for attribute, value in context.items():
        try:
            setattr(error, attribute, value)
        except AttributeError:  # exceptions with __slots__
            break
    tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
    add_note(error, f"durable_nb: activity {name!r} failed after {tries} (instance {instance_id})")
