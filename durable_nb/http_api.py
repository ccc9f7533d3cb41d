"""The HTTP management API's work, without the web server: finding the stores under a
root folder, the JSON of an instance in the shape of Durable Functions' HTTP API, the
management verbs as (HTTP status, JSON body) replies, and starting a notebook run
(``notebook_runs``) from a request's body.

``server_extension.py`` routes requests here; everything that touches a store runs in
a worker thread there, so these functions may block. The verbs themselves are
``management``'s, the same as ``durable-nb`` and ``%durable`` run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import quote

from durable_nb import management, notebook_runs
from durable_nb.engine.entity_ids import EntityId
from durable_nb.entity_worker import client_message
from durable_nb.errors import (
    ConfigurationError,
    InstanceError,
    InstanceFinishedError,
    InstanceNotFoundError,
    StoreError,
)
from durable_nb.history import Status
from durable_nb.http_shapes import (
    RUNTIME_STATUS,
    entity_status,
    history_events,
    instance_status,
    jsonable,
)
from durable_nb.server_urls import instance_urls
from durable_nb.store import DiskCacheStore, InstanceRecord

_ENDED = {Status.COMPLETED.value, Status.FAILED.value, Status.TERMINATED.value}
_REWINDABLE = {Status.FAILED.value, Status.TERMINATED.value, Status.INTERRUPTED.value}
ACTIONS = (*management.ACTIONS, "rewind")

# Finding stores walks the server's root: bounded, so that a root holding a home folder
# or a large data tree answers quickly. Folders no store lives in are skipped.
MAX_DEPTH = 6
MAX_FOLDERS = 20_000
# The OpenAPI document of these routes, shipped in the package (tests/test_http_spec.py
# keeps it and server_extension.handlers() in step).
OPENAPI = Path(__file__).with_name("openapi.json")
_SKIPPED = frozenset(
    {".git", ".hg", ".svn", "node_modules", "__pycache__", ".ipynb_checkpoints", ".venv"}
    | {"venv", "site-packages", ".tox", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
)


@dataclass(frozen=True)
class Reply:
    """An HTTP status code and the JSON body to send with it."""

    code: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


def _error(code: int, message: str) -> Reply:
    return Reply(code, {"message": message})


def is_store(folder: Path) -> bool:
    """A store folder has diskcache's database; anything else is never opened (opening
    a folder as a store would create one)."""
    database = folder / "cache.db"
    return folder.is_dir() and database.is_file() and not database.is_symlink()


def find_stores(root: Path) -> list[str]:
    """The stores under ``root``, as paths relative to it (``.`` for the root itself),
    hidden folders included: the default store is ``.durable_nb``."""
    found: list[str] = []
    visited = 0
    for folder, subfolders, _files in os.walk(root):  # never follows symlinks
        here = Path(folder)
        visited += 1
        depth = len(here.relative_to(root).parts)
        if is_store(here):
            found.append(here.relative_to(root).as_posix())
            subfolders[:] = []  # a store's own folders hold no store
        elif depth >= MAX_DEPTH or visited >= MAX_FOLDERS:
            subfolders[:] = []
        else:
            subfolders[:] = sorted(name for name in subfolders if name not in _SKIPPED)
    return sorted(found)


def _under_root(root: Path, given: str, what: str) -> Path | Reply:
    """The resolved path ``given`` names relative to ``root``, or the reply refusing a
    path that is absolute, climbs with ``..``, or leads out of the root through a
    symlink (resolved first, so no check is fooled by one)."""
    pure = PurePosixPath(given)
    if (
        not given
        or "\x00" in given
        or "\\" in given
        or pure.is_absolute()
        or PureWindowsPath(given).anchor
        or ".." in pure.parts
    ):
        return _error(400, f"a {what} is a path relative to the server root, no '..': {given!r}")
    try:
        folder = (root / pure).resolve()
    except (OSError, RuntimeError):
        # A name longer than the file system takes (OSError) or a loop of symlinks
        # (Python 3.11 raises RuntimeError): nothing a path could name.
        return _error(404, f"no {what} {given!r} under the server root")
    if not folder.is_relative_to(root):
        return _error(404, f"no {what} {given!r} under the server root")
    return folder


def store_folder(root: Path, store: str) -> Path | Reply:
    """The folder a ``{store}`` of a URL names: inside ``root`` and a store, or the
    reply refusing it. Symlinks are followed, so one pointing out of the root is
    refused too."""
    folder = _under_root(root, store, "store")
    try:
        found = isinstance(folder, Path) and is_store(folder)
    except OSError:  # a name longer than the file system takes: no store there
        found = False
    if isinstance(folder, Path) and not found:
        return _error(404, f"no store {store!r} under the server root; GET stores lists them")
    return folder


def _with_store(root: Path, store: str, work: Callable[[DiskCacheStore], Reply]) -> Reply:
    """Open the store ``store`` names, do ``work`` and close it; durable_nb's errors
    become their HTTP replies."""
    folder = store_folder(root, store)
    if isinstance(folder, Reply):
        return folder
    try:
        opened = DiskCacheStore(folder)
    except StoreError as exc:
        return _error(500, str(exc))
    try:
        return work(opened)
    except InstanceNotFoundError as exc:
        return _error(404, str(exc))
    except InstanceFinishedError as exc:
        return _error(410, str(exc))  # DF's answer to a request an ended instance ignores
    except ConfigurationError as exc:
        return _error(400, str(exc))
    finally:
        opened.close()


def list_stores(root: Path, api_base: str) -> Reply:
    return Reply(
        200,
        [
            {"store": rel, "instancesGetUri": f"{api_base}/stores/{quote(rel, safe='')}/instances"}
            for rel in find_stores(root)
        ],
    )


def openapi_document(api_base: str) -> Reply:
    """The OpenAPI document, its ``servers`` naming this server's API, so a client (or
    schemathesis) can load it from the server and call the routes as they are served."""
    document = json.loads(OPENAPI.read_text(encoding="utf-8"))
    document["servers"] = [{"url": api_base}]
    return Reply(200, document)


def _flag(query: dict[str, str], name: str, default: bool) -> bool | Reply:
    """A yes-or-no query parameter; anything else is refused, so that a typo
    (``showInput=ture``) is not read as no."""
    value = query.get(name)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    return _error(400, f"{name} must be true or false (also 1/0, yes/no): {value!r}")


def list_instances(root: Path, store: str, query: dict[str, str]) -> Reply:
    """``durable-nb list``'s filters: ``name``, ``status``, ``older-than``, ``newer-than``
    (ages as 90s, 15m, 2h, 7d); also DF's ``runtimeStatus`` (names, comma-separated) and
    ``showInput`` (default false, as DF's list)."""

    show_input = _flag(query, "showInput", False)
    if isinstance(show_input, Reply):
        return show_input

    def work(opened: DiskCacheStore) -> Reply:
        status = query.get("status")
        if status is not None and status not in RUNTIME_STATUS:
            return _error(400, f"status must be one of {sorted(RUNTIME_STATUS)}: {status!r}")
        ages = {
            key: management.parse_age(query[key])
            for key in ("older-than", "newer-than")
            if key in query
        }
        records = management.select(
            opened,
            name=query.get("name"),
            status=status,
            older_than=ages.get("older-than"),
            newer_than=ages.get("newer-than"),
        )
        runtime = query.get("runtimeStatus")
        if runtime:
            wanted = {name.strip().lower() for name in runtime.split(",")}
            records = [r for r in records if RUNTIME_STATUS[str(r.status)].lower() in wanted]
        records.sort(key=lambda r: r.created_at)
        return Reply(200, [instance_status(r, show_input) for r in records])

    return _with_store(root, store, work)


def get_instance(root: Path, store: str, instance_id: str, query: dict[str, str]) -> Reply:
    """200 for an instance that ended (completed, failed, terminated), 202 for one that
    did not, as DF answers; 404 for none. DF's ``showInput`` (default true),
    ``showHistory`` and ``showHistoryOutput`` (default false)."""

    flags = {
        name: _flag(query, name, default)
        for name, default in (
            ("showInput", True),
            ("showHistory", False),
            ("showHistoryOutput", False),
        )
    }
    for flag in flags.values():
        if isinstance(flag, Reply):
            return flag

    def work(opened: DiskCacheStore) -> Reply:
        record = opened.get_instance(instance_id)
        if record is None:
            return _error(404, f"no instance {instance_id!r} in {store!r}")
        body = instance_status(record, bool(flags["showInput"]))
        if flags["showHistory"]:
            events = opened.read_history(instance_id)
            body["historyEvents"] = history_events(events, bool(flags["showHistoryOutput"]))
        return Reply(200 if str(record.status) in _ENDED else 202, body)

    return _with_store(root, store, work)


def raise_event(root: Path, store: str, instance_id: str, name: str, content: bytes) -> Reply:
    """The body is the event's value, as JSON (empty: null). 202, or 410 once ended."""
    value = _json_body(content, "the event's value")
    if isinstance(value, Reply):
        return value

    def work(opened: DiskCacheStore) -> Reply:
        refused = _not_for_runs(opened.get_instance(instance_id), "raiseEvent")
        if refused is not None:
            return refused
        management.raise_event(opened, instance_id, name, value)
        return Reply(202, {"message": f"raised {name!r} to {instance_id}"})

    return _with_store(root, store, work)


def _json_body(content: bytes, what: str) -> Any:
    """A request body as JSON (empty: null), or the 400 reply refusing it."""
    try:
        return json.loads(content) if content.strip() else None
    except ValueError as exc:
        return _error(400, f"{what} must be JSON: {exc}")
    except RecursionError:  # json's decoder recurses once per level of nesting
        return _error(400, f"{what} is nested too deeply to decode; send a flatter value")


# ------------------------------------------------------------------ entities
# As Durable Functions' entity routes: list, read a state, signal an operation. The
# server defines no entity, so a signal waits in the entity's queue for a kernel that
# defines it (it applies the queue the next time it touches the entity).


def list_entities(root: Path, store: str, query: dict[str, str]) -> Reply:
    """Every entity of the store (``?name=`` those of one definition)."""

    def work(opened: DiskCacheStore) -> Reply:
        return Reply(200, [entity_status(s) for s in opened.entities.entities(query.get("name"))])

    return _with_store(root, store, work)


def get_entity(root: Path, store: str, name: str, key: str) -> Reply:
    """The entity's state as the body (as DF answers), 404 while it has none."""

    def work(opened: DiskCacheStore) -> Reply:
        found = opened.entities.read(EntityId(name, key))
        if found is None or not found.exists:
            return _error(404, f"entity @{name}@{key} has no state in {store!r}")
        return Reply(200, jsonable(found.state))

    return _with_store(root, store, work)


def signal_entity(
    root: Path, store: str, name: str, key: str, operation: str, content: bytes
) -> Reply:
    """``?op=`` the operation, the body its input (JSON; empty: null): queued, 202."""
    value = _json_body(content, "the operation's input")
    if isinstance(value, Reply):
        return value
    if not operation:
        return _error(400, "give the operation to signal as ?op=NAME")

    def work(opened: DiskCacheStore) -> Reply:
        entity = EntityId(name, key)
        opened.entities.enqueue(client_message(entity, operation, value))
        return Reply(202, {"message": f"queued {operation!r} for {entity}"})

    return _with_store(root, store, work)


def act(root: Path, store: str, instance_id: str, action: str, reason: str) -> Reply:
    """terminate, suspend, resume or rewind: 202 when asked, 404 for no such instance,
    410 for an instance that ended (409 when a rewind finds it not failed, terminated
    or interrupted). A rewind here marks it pending: its notebook cell runs it."""
    if action not in ACTIONS:
        return _error(404, f"no action {action!r}: one of {ACTIONS}")

    def work(opened: DiskCacheStore) -> Reply:
        record = opened.get_instance(instance_id)
        if record is None:
            return _error(404, f"no instance {instance_id!r} in {store!r}")
        status = str(record.status)
        if action != "terminate":
            refused = _not_for_runs(record, action)
            if refused is not None:
                return refused
        if action == "rewind":
            if status not in _REWINDABLE:
                code = 410 if status in _ENDED else 409
                return _error(
                    code,
                    f"{instance_id} is {status}; only failed, terminated or "
                    "interrupted instances rewind",
                )
            return Reply(202, {"message": management.rewind(opened, instance_id)})
        if status in _ENDED:
            return _error(410, f"{instance_id} is {status}; nothing to {action}")
        return Reply(202, {"message": management.request(opened, instance_id, action, reason)})

    return _with_store(root, store, work)


def purge(root: Path, store: str, instance_id: str) -> Reply:
    """DF's purge: 200 with ``instancesDeleted``; 404 for none; 409 while it runs."""

    def work(opened: DiskCacheStore) -> Reply:
        if opened.get_instance(instance_id) is None:
            return _error(404, f"no instance {instance_id!r} in {store!r}")
        purged, refused = management.purge(opened, [instance_id])
        if refused:
            return _error(409, f"not purged: {', '.join(refused)}")
        return Reply(200, {"instancesDeleted": len(purged)})

    return _with_store(root, store, work)


# ------------------------------------------------------------------ notebook runs

RUN_FIELDS = ("notebook", "parameters", "store", "timeout")


def _not_for_runs(record: InstanceRecord | None, verb: str) -> Reply | None:
    """409 for what a notebook run does not take: events (they are for the orchestration
    instances its notebook starts, which the notebook waits on) and suspend, resume and
    rewind (a kernel cannot be paused; a run is started again instead)."""
    if record is None or record.orchestrator != notebook_runs.NOTEBOOK_RUN:
        return None
    if verb == "raiseEvent":
        advice = (
            "raise it to the orchestration instance the notebook started and waits on "
            "(GET .../instances lists them, with their orchestrator names)"
        )
    else:
        advice = "terminate it, or POST /durable-nb/api/runs again: its durable work resumes"
    return _error(409, f"{record.instance_id} is a notebook run, which takes no {verb}; {advice}")


def start_notebook_run(root: Path, content: bytes, api_base: str) -> Reply:
    """``POST runs``: the body ``{"notebook", "parameters"?, "store"?, "timeout"?}``,
    paths relative to ``root``; 202 with the run's URLs (``Location`` the status's) as
    Durable Functions' ``create_check_status_response``. The notebook must be an
    ``.ipynb`` file inside the root; the store, by default the one its kernel would use
    (``notebook_runs.default_store``), a store or a folder still to be made, inside it."""
    try:
        body = json.loads(content) if content.strip() else None
    except ValueError as exc:
        return _error(400, f"the body must be JSON: {exc}")
    if not isinstance(body, dict):
        return _error(400, 'the body must be a JSON object: {"notebook": "path/in/root.ipynb"}')
    unknown = sorted(set(body) - set(RUN_FIELDS))
    if unknown:
        return _error(400, f"unknown fields {unknown}: a run takes {list(RUN_FIELDS)}")
    given = body.get("notebook")
    if not isinstance(given, str):
        return _error(400, f'"notebook" must be a path relative to the server root: {given!r}')
    notebook = _under_root(root, given, "notebook")
    if isinstance(notebook, Reply):
        return notebook
    hidden = any(part.startswith(".") for part in notebook.relative_to(root).parts)
    if notebook.suffix != ".ipynb" or hidden or not notebook.is_file():
        return _error(404, f"no notebook {given!r} under the server root")
    store = _run_store(root, body.get("store"), notebook)
    if isinstance(store, Reply):
        return store
    parameters = body.get("parameters")
    try:
        run_id = notebook_runs.start_run(
            notebook,
            store=store,
            parameters={} if parameters is None else parameters,
            origin="http",
            timeout=body.get("timeout"),
        )
    except ConfigurationError as exc:
        return _error(400, str(exc))
    except InstanceError as exc:
        return _error(409, str(exc))
    except StoreError as exc:
        return _error(500, str(exc))
    urls = instance_urls(api_base, store.relative_to(root).as_posix(), run_id)
    return Reply(202, urls, {"Location": urls["statusQueryGetUri"]})


def _run_store(root: Path, given: Any, notebook: Path) -> Path | Reply:
    """The store a run records itself in: ``given`` (relative to the root) or the
    notebook kernel's default; a store already, or a folder to make one in (not yet
    there, or empty), never a folder of other files."""
    if given is None:
        store = notebook_runs.default_store(notebook)
        if not store.is_relative_to(root):
            return _error(
                400,
                f"the notebook's default store {store} is outside the server root (set by "
                '$DURABLE_NB_STORE); give "store", a folder under the root',
            )
    elif not isinstance(given, str):
        return _error(400, f'"store" must be a folder\'s path relative to the root: {given!r}')
    else:
        found = _under_root(root, given, "store")
        if isinstance(found, Reply):
            return found
        store = found
    if is_store(store) or not store.exists():
        return store
    if store.is_dir() and not any(store.iterdir()):
        return store
    return _error(
        400,
        f"{store.relative_to(root).as_posix()!r} is a folder that holds no store; name a "
        "store, or a folder that does not exist yet",
    )
