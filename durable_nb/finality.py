"""When a completed instance is final: its recorded outcome is the answer.

Running or awaiting a completed instance again returns what it returned the first
time, failures its orchestrator handled included, without replaying anything. That
holds while nothing it was made of changed: the caller's input, the orchestrator's
code and the code of every activity and sub-orchestrator it called. Edit one of them
and the instance runs again over its history, so results whose call keys still match
are replayed and only the edited work runs (the notebook's edit-and-rerun loop).

What a completed run was made of is kept in its record (``completed_with``). Records
written by release 0.1.0 have none; for those it is read off the history, whose call
keys carry each activity's code digest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from durable_nb import history
from durable_nb.definitions import find_activity, find_orchestrator
from durable_nb.errors import FingerprintError
from durable_nb.fingerprint import KEY_SCHEME, SCHEMES, arguments_digest
from durable_nb.history import Status

if TYPE_CHECKING:
    from durable_nb.definitions import Activity, Orchestrator
    from durable_nb.progress import ActivityRow
    from durable_nb.store import InstanceRecord

logger = logging.getLogger(__name__)

_SUB = "sub:"
_CALL_EVENTS = (
    history.TaskScheduled,
    history.TaskCompleted,
    history.TaskFailed,
    history.SubOrchestrationCompleted,
    history.SubOrchestrationFailed,
)


def input_digest(orch: Orchestrator, arguments: dict[str, Any], scheme: int = KEY_SCHEME) -> str:
    """The digest of an orchestrator's input by name, as a caller gave it."""
    return arguments_digest(f"orchestrator {orch.name}", (), arguments, scheme=scheme)


def completed_with(
    orch: Orchestrator,
    caller_input: str,
    code_used: dict[str, Activity | Orchestrator],
    rows: dict[str, ActivityRow],
) -> dict[str, Any]:
    """What a run that just completed was made of, for its record; with its calls by
    activity, which a view of the recorded outcome shows."""
    return {
        "scheme": KEY_SCHEME,
        "input": caller_input,
        "orchestrator": orch.code_digest()[:16],
        "calls": {name: used.code_digest()[:16] for name, used in code_used.items()},
        "rows": {name: row.total for name, row in rows.items()},
    }


def _read_off_history(events: list[history.Event]) -> dict[str, Any] | None:
    """``completed_with`` of a run recorded by release 0.1.0, from its call keys
    (``name/code16/args#n``); None when the history is not such a run's."""
    scheme = next(
        (e.key_scheme for e in reversed(events) if isinstance(e, history.ExecutionStarted)), None
    )
    if scheme != 1:
        return None  # this release's run that could not keep its output: not final
    calls: dict[str, str] = {}
    for event in events:
        # Every call the run made, answered or failed (timers' keys have no digests).
        if isinstance(event, _CALL_EVENTS) and event.key.count("/") >= 2:
            name, code, _ = event.key.rsplit("/", 2)
            calls[name] = code
    return {"scheme": 1, "input": None, "orchestrator": None, "calls": calls}


def changes_since_completed(
    record: InstanceRecord,
    orch: Orchestrator,
    arguments: dict[str, Any],
    caller_input: str | None,
    read_history: Callable[[str], list[history.Event]],
) -> list[str] | None:
    """What changed since ``record`` completed: [] when its outcome is final, the
    names of what changed otherwise, None when it cannot be final (it did not
    complete, its output could not be kept, or the input cannot be digested).
    ``caller_input`` is :func:`input_digest` of ``arguments``, already computed by the
    caller (None: it could not be)."""
    if record.status != Status.COMPLETED or caller_input is None:
        return None
    made_of = record.completed_with or _read_off_history(read_history(record.instance_id))
    if made_of is None or made_of["scheme"] not in SCHEMES:
        return None
    scheme = made_of["scheme"]
    changed: list[str] = []
    try:
        if made_of["input"] is not None:
            now = caller_input if scheme == KEY_SCHEME else input_digest(orch, arguments, scheme)
            same_input = now == made_of["input"]
        else:  # 0.1.0 kept the input itself
            same_input = record.input is not None and input_digest(orch, record.input) == (
                caller_input
            )
    except FingerprintError:
        return None  # an input that cannot be digested under an older scheme
    if not same_input:
        changed.append("the input")
    if made_of["orchestrator"] not in (None, orch.code_digest(scheme)[:16]):
        changed.append(f"orchestrator {orch.name}")
    for name, code in made_of["calls"].items():
        found: Any = (
            find_orchestrator(name[len(_SUB) :]) if name.startswith(_SUB) else find_activity(name)
        )
        # A name this process has not defined cannot be compared: the code the
        # instance ran is all there is to go by.
        if found is not None and found.code_digest(scheme)[:16] != code:
            changed.append(name)
    return changed
