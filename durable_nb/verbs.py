"""The management verbs shared by ``%durable`` and ``durable-nb``: one parser, one
implementation, so the magic and the command line never drift apart."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from durable_nb import management
from durable_nb.calls import STATUSES as CALL_STATUSES
from durable_nb.calls import call_rows, select
from durable_nb.engine.entity_ids import EntityId
from durable_nb.entities import find_entity
from durable_nb.entity_worker import client_message, worker_for
from durable_nb.errors import EntityNotFoundError, InstanceNotFoundError, VerbUsageError
from durable_nb.history import Status
from durable_nb.report import (
    calls_text,
    list_entities_text,
    list_instances_text,
    show_entity_text,
    show_instance_text,
)
from durable_nb.store import CheckpointStore

if TYPE_CHECKING:
    from durable_nb.runtime import Runtime

STATUSES = tuple(status.value for status in Status)
_SHOWN_MESSAGES = 20  # waiting messages `entity show` lists (it counts them all)


def _age(text: str) -> float:
    try:
        return management.parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_value(text: str | None) -> Any:
    """An event value from the command line: JSON if it parses, else the text itself."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def add_verbs(
    verbs: Any, store_option: Callable[[argparse.ArgumentParser], None] | None = None
) -> None:
    """Add the management verbs to an argparse subparsers object."""

    def verb(name: str, text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = verbs.add_parser(name, help=text, description=text)
        if store_option is not None:
            store_option(parser)
        return parser

    def filters(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--name", help="only instances of this orchestrator")
        parser.add_argument("--status", choices=STATUSES, help="only instances in this status")
        parser.add_argument("--older-than", type=_age, help="last updated before: 2h, 7d ...")
        parser.add_argument("--newer-than", type=_age, help="last updated within: 15m, 1d ...")

    filters(verb("list", "list instances (filters: --name, --status, --older-than, --newer-than)"))
    show = verb("show", "show one instance: status, custom status, history; --calls: its calls")
    show.add_argument("instance_id")
    show.add_argument(
        "--calls",
        action="store_true",
        help="a table of its calls: activity, key, arguments, status, attempts, started, "
        "duration, error, cached",
    )
    show.add_argument("--status", choices=CALL_STATUSES, help="with --calls: only these calls")
    show.add_argument("--activity", help="with --calls: only calls of this activity")
    timeline = verb(
        "timeline",
        "a timeline chart of an instance's calls, timers, waits and sub-orchestrations "
        "(needs matplotlib); -o writes it to a .html, .svg or .png file",
    )
    timeline.add_argument("instance_id")
    timeline.add_argument("-o", "--output", help="the file to write: run.html, run.svg, run.png")
    purge = verb("purge", "delete instances and their checkpoints: IDs, --all, or filters")
    purge.add_argument("instance_ids", nargs="*", metavar="ID")
    purge.add_argument("--all", action="store_true", help="every instance that matches")
    filters(purge)
    raise_ = verb(
        "raise",
        "raise an external event to an instance, running or not. The value is parsed as "
        "JSON first (9361 is the int 9361, true a bool, {...} a dict, '\"9361\"' the "
        "string), else sent as text; --text sends it as text as is. No value: None",
    )
    raise_.add_argument("instance_id")
    raise_.add_argument("event_name")
    raise_.add_argument("value", nargs="?", help="JSON (true, 3, {...}) or plain text")
    raise_.add_argument(
        "--text", action="store_true", help="send the value as a string, as is (no JSON)"
    )
    for action, text in (
        ("terminate", "stop an instance at its next yield, for good"),
        ("suspend", "start no new work in an instance until it is resumed"),
        ("resume", "let a suspended instance go on"),
    ):
        parser = verb(action, text)
        parser.add_argument("instance_id")
        parser.add_argument("reason", nargs="?", default="")
    verb("rewind", "run a failed instance again: successes replay, failures rerun").add_argument(
        "instance_id"
    )
    _add_entity_verbs(verb, store_option)


def _add_entity_verbs(
    verb: Callable[[str, str], argparse.ArgumentParser],
    store_option: Callable[[argparse.ArgumentParser], None] | None,
) -> None:
    entity = verb(
        "entity",
        "durable entities: list, show ENTITY, signal ENTITY OPERATION [VALUE], purge ENTITY "
        "(ENTITY is @name@key or name/key)",
    )
    actions = entity.add_subparsers(dest="entity_verb", metavar="ACTION", required=True)

    def action(name: str, text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(name, help=text, description=text)
        if store_option is not None:
            store_option(parser)
            # --store before or after the action: an absent one here must not undo the
            # `entity` parser's.
            for option in parser._actions:
                if option.dest == "store":
                    option.default = argparse.SUPPRESS
        return parser

    action("list", "every entity with a state or a queued message").add_argument(
        "--name", help="only the entities of this definition"
    )
    action("show", "an entity's state, lock and waiting messages").add_argument("entity")
    signal = action(
        "signal",
        "send an operation to an entity, one-way. It is queued durably and applied by a "
        "kernel that defines the entity: at once in a kernel that does (%%durable), else "
        "by one that defines it when it next touches the entity. VALUE is parsed as JSON "
        "first, else sent as text",
    )
    signal.add_argument("entity")
    signal.add_argument("operation")
    signal.add_argument("value", nargs="?", help="JSON (true, 3, {...}) or plain text")
    signal.add_argument("--text", action="store_true", help="send the value as a string, as is")
    action("purge", "delete an entity's state and every message to it (asks nothing)").add_argument(
        "entity"
    )


def run_verb(args: argparse.Namespace, store: CheckpointStore, runtime: Runtime | None) -> str:
    """Carry out a parsed verb; returns the text to show. ``runtime`` is the kernel's,
    when there is one (rewind can then run the instance at once)."""
    handler = _HANDLERS[args.verb]
    try:
        return handler(args, store, runtime)
    except (InstanceNotFoundError, VerbUsageError):
        raise
    except ValueError as exc:  # a ConfigurationError keeps its context
        raise VerbUsageError(
            str(exc),
            setting=getattr(exc, "setting", None),
            value=getattr(exc, "value", None),
            instance_id=getattr(exc, "instance_id", None),
        ) from None


def _list(args: argparse.Namespace, store: CheckpointStore, runtime: Runtime | None) -> str:
    return list_instances_text(_selected(args, store))


def _selected(args: argparse.Namespace, store: CheckpointStore) -> list[Any]:
    return management.select(
        store,
        name=args.name,
        status=args.status,
        older_than=args.older_than,
        newer_than=args.newer_than,
    )


def _show(args: argparse.Namespace, store: CheckpointStore, runtime: Runtime | None) -> str:
    record = store.get_instance(args.instance_id)
    if record is None:
        raise InstanceNotFoundError(
            f"no instance {args.instance_id!r} in {store.location}", instance_id=args.instance_id
        )
    events = store.read_history(args.instance_id)
    if not args.calls:
        if args.status or args.activity:
            raise VerbUsageError("--status and --activity filter the calls: add --calls")
        return show_instance_text(record, events)
    rows = select(call_rows(events), args.status, args.activity)
    return calls_text(rows)


def _timeline(args: argparse.Namespace, store: CheckpointStore, runtime: Runtime | None) -> str:
    if not args.output:
        raise VerbUsageError(
            "say where to write the timeline: -o run.html (or .svg, .png); "
            "in a notebook, %durable timeline ID shows it"
        )
    from durable_nb.timeline import chart_of

    written = chart_of(store, args.instance_id).save(args.output)
    return f"wrote the timeline of {args.instance_id} to {written}"


def _purge(args: argparse.Namespace, store: CheckpointStore, runtime: Runtime | None) -> str:
    filtered = any(
        getattr(args, f) is not None for f in ("name", "status", "older_than", "newer_than")
    )
    if args.instance_ids and (args.all or filtered):
        raise VerbUsageError("purge takes instance IDs, or --all and/or filters, not both")
    if not args.instance_ids and not (args.all or filtered):
        raise VerbUsageError("purge needs instance IDs, --all, or a filter such as --status")
    if args.instance_ids:
        ids = list(args.instance_ids)
    else:
        ids = [r.instance_id for r in _selected(args, store)]
    purged, refused = management.purge(store, ids)
    text = f"purged {len(purged)} instance(s)"
    if refused:
        text += f"; not purged: {', '.join(refused)}"
    return text


def _raise(args: argparse.Namespace, store: CheckpointStore, runtime: Runtime | None) -> str:
    value = args.value if args.text else parse_value(args.value)
    if runtime is not None:
        runtime.raise_event(args.instance_id, args.event_name, value)
    else:
        management.raise_event(store, args.instance_id, args.event_name, value)
    return f"raised {args.event_name!r} = {value!r} to {args.instance_id}"


def _control(args: argparse.Namespace, store: CheckpointStore, runtime: Runtime | None) -> str:
    if runtime is not None:
        return runtime.request(args.instance_id, args.verb, args.reason)
    return management.request(store, args.instance_id, args.verb, args.reason)


def _rewind(args: argparse.Namespace, store: CheckpointStore, runtime: Runtime | None) -> str:
    if runtime is not None:
        runtime.rewind(args.instance_id)
        return f"rewinding {args.instance_id}: successes replay, failures run again"
    return management.rewind(store, args.instance_id)


def _entity(args: argparse.Namespace, store: CheckpointStore, runtime: Runtime | None) -> str:
    entities = store.entities
    if args.entity_verb == "list":
        return list_entities_text(entities.entities(args.name))
    entity = EntityId.parse(args.entity)
    if args.entity_verb == "signal":
        return _signal(args, store, entity)
    found = entities.read(entity)
    if found is None:
        raise EntityNotFoundError(
            f"no entity {entity} in {store.location} (no state, no message); "
            "`entity list` shows those there are",
            entity=str(entity),
        )
    if args.entity_verb == "show":
        snapshot, messages = entities.waiting(entity, _SHOWN_MESSAGES)
        return show_entity_text(snapshot, messages)
    entities.purge(entity)
    removed = ["its state"] if found.exists else []
    if found.waiting:
        removed.append(f"{found.waiting} waiting message(s) (not applied)")
    removed.append("the record of the messages applied to it")
    held = f" (it was locked by {found.locked_by})" if found.locked_by else ""
    return f"purged {entity}{held}: {'; '.join(removed)}"


def _signal(args: argparse.Namespace, store: CheckpointStore, entity: EntityId) -> str:
    value = args.value if args.text else parse_value(args.value)
    message = client_message(entity, args.operation, value)
    # What durable_nb.signal_entity does (entity_client sits beside this module, so it is
    # not imported): queue it durably, then apply the queue here if this process defines
    # the entity.
    worker_for(store).send(message)
    sent = f"signaled {args.operation!r} = {value!r} to {entity}"
    outcome = store.entities.outcome(message.message_id)
    if outcome is not None:
        if outcome.failure is not None:
            failure = outcome.failure
            return f"{sent}: applied, and it failed ({failure.error_type}: {failure.message})"
        return f"{sent}: applied"
    snapshot = store.entities.read(entity)
    if find_entity(entity.name) is None:
        return (
            f"{sent}: queued ({snapshot.waiting if snapshot else 1} waiting); this process does "
            f"not define entity {entity.name!r}: a kernel that defines it (%%entity or "
            "@entity) applies it, once, when it next signals, calls or reads the entity"
        )
    holder = snapshot.locked_by if snapshot is not None else None
    return f"{sent}: queued behind the critical section of {holder or 'another process'}"


_HANDLERS: dict[str, Callable[[argparse.Namespace, CheckpointStore, Any], str]] = {
    "list": _list,
    "show": _show,
    "timeline": _timeline,
    "purge": _purge,
    "raise": _raise,
    "terminate": _control,
    "suspend": _control,
    "resume": _control,
    "rewind": _rewind,
    "entity": _entity,
}
