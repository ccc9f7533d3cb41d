"""The Jupyter Server extension: durable_nb's HTTP management API under
``{base_url}durable-nb/api/``, behind Jupyter's own authentication.

The handlers derive from Jupyter's ``APIHandler``: an unauthenticated request gets 403
(``@tornado.web.authenticated``, which an API handler answers with 403 rather than a
redirect to the login page), a browser's cookie-authenticated POST or DELETE needs the
XSRF token (``APIHandler`` checks it; a request authenticated by token does not need
it, as for Jupyter's own API), and ``@authorized`` asks the server's authorizer for
read (GET) or write (POST, DELETE) on the resource ``durable-nb``. The work is
``http_api``'s, run in a worker thread so that store access never holds the server's
event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from durable_nb import http_api
from durable_nb.errors import DurableNbError
from durable_nb.http_api import Reply
from durable_nb.scheduler import Launcher, default_launcher, run_due
from durable_nb.server_urls import API_PATH

logger = logging.getLogger(__name__)

AUTH_RESOURCE = "durable-nb"
# A URL segment: the store and the instance id come URL-encoded, so a "/" in either is
# %2F and stays within its segment (tornado decodes the groups after matching).
_SEGMENT = r"([^/]+)"


class _Handler(APIHandler):
    auth_resource = AUTH_RESOURCE

    def initialize(self, root: Path) -> None:
        self.root = root

    @property
    def api_base(self) -> str:
        return str(url_path_join(self.base_url, API_PATH))

    def query(self) -> dict[str, str]:
        return {name: self.get_query_argument(name) for name in self.request.query_arguments}

    @property
    def absolute_api_base(self) -> str:
        """The API's URL as the client reached it (scheme and host of the request), for
        replies whose URLs a client follows as given, as Durable Functions' are."""
        return f"{self.request.protocol}://{self.request.host}{self.api_base}"

    async def send(self, work: Callable[..., Reply], *args: Any) -> None:
        reply = await asyncio.to_thread(work, *args)
        self.set_status(reply.code)
        self.set_header("Content-Type", "application/json")
        for name, value in reply.headers.items():
            self.set_header(name, value)
        await self.finish(json.dumps(reply.body))


class StoresHandler(_Handler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        await self.send(http_api.list_stores, self.root, self.api_base)


class InstancesHandler(_Handler):
    @web.authenticated
    @authorized
    async def get(self, store: str) -> None:
        await self.send(http_api.list_instances, self.root, store, self.query())


class InstanceHandler(_Handler):
    @web.authenticated
    @authorized
    async def get(self, store: str, instance_id: str) -> None:
        await self.send(http_api.get_instance, self.root, store, instance_id, self.query())

    @web.authenticated
    @authorized
    async def delete(self, store: str, instance_id: str) -> None:
        await self.send(http_api.purge, self.root, store, instance_id)


class RaiseEventHandler(_Handler):
    @web.authenticated
    @authorized
    async def post(self, store: str, instance_id: str, name: str) -> None:
        body = self.request.body
        await self.send(http_api.raise_event, self.root, store, instance_id, name, body)


class EntitiesHandler(_Handler):
    @web.authenticated
    @authorized
    async def get(self, store: str) -> None:
        await self.send(http_api.list_entities, self.root, store, self.query())


class EntityHandler(_Handler):
    @web.authenticated
    @authorized
    async def get(self, store: str, name: str, key: str) -> None:
        await self.send(http_api.get_entity, self.root, store, name, key)

    @web.authenticated
    @authorized
    async def post(self, store: str, name: str, key: str) -> None:
        operation = self.get_query_argument("op", "")
        body = self.request.body
        await self.send(http_api.signal_entity, self.root, store, name, key, operation, body)


class ActionHandler(_Handler):
    @web.authenticated
    @authorized
    async def post(self, store: str, instance_id: str, action: str) -> None:
        reason = self.get_query_argument("reason", "")
        await self.send(http_api.act, self.root, store, instance_id, action, reason)


class OpenApiHandler(_Handler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        await self.send(http_api.openapi_document, self.api_base)


class RunsHandler(_Handler):
    """``POST runs``: start a notebook headless, recorded as an instance (202 at once)."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.request.body
        await self.send(http_api.start_notebook_run, self.root, body, self.absolute_api_base)


def handlers(base_url: str, root: Path) -> list[tuple[str, type[_Handler], dict[str, Any]]]:
    """The routes, under ``base_url``; ``root`` is the folder stores are found in."""
    instance = f"stores/{_SEGMENT}/instances/{_SEGMENT}"
    actions = "|".join(http_api.ACTIONS)
    routes: list[tuple[str, type[_Handler]]] = [
        ("stores", StoresHandler),
        ("runs", RunsHandler),
        (f"stores/{_SEGMENT}/instances", InstancesHandler),
        (instance, InstanceHandler),
        (f"{instance}/raiseEvent/{_SEGMENT}", RaiseEventHandler),
        (f"{instance}/({actions})", ActionHandler),
        (f"stores/{_SEGMENT}/entities", EntitiesHandler),
        (f"stores/{_SEGMENT}/entities/{_SEGMENT}/{_SEGMENT}", EntityHandler),
        ("openapi.json", OpenApiHandler),
    ]
    options = {"root": root}
    return [(url_path_join(base_url, API_PATH, path), cls, options) for path, cls in routes]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Called by Jupyter Server when the extension is enabled (see ``jupyter-config/``)."""
    root = Path(serverapp.root_dir).expanduser().resolve()
    web_app = serverapp.web_app
    web_app.add_handlers(".*$", handlers(web_app.settings["base_url"], root))
    serverapp.log.info("durable_nb: HTTP management API at %s", API_PATH)
    _run_schedules_while_serving(serverapp, root)


# ------------------------------------------------------------------ schedules

SCHEDULE_INTERVAL_ENV = "DURABLE_NB_SCHEDULE_INTERVAL"
DEFAULT_SCHEDULE_INTERVAL = 30.0
_OFF = {"0", "off", "no", "false", "none"}


def schedule_interval(value: str | None) -> float | None:
    """Seconds between the server's passes over the schedules of the stores under its
    root, from ``$DURABLE_NB_SCHEDULE_INTERVAL``: unset, 30; ``0`` or ``off``, none."""
    if value is None or not value.strip():
        return DEFAULT_SCHEDULE_INTERVAL
    if value.strip().lower() in _OFF:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not (math.isfinite(seconds) and seconds > 0):
        logger.warning(
            "%s=%r is not a number of seconds (or off); using %s",
            SCHEDULE_INTERVAL_ENV,
            value,
            DEFAULT_SCHEDULE_INTERVAL,
        )
        return DEFAULT_SCHEDULE_INTERVAL
    return seconds


def _schedules_pass(root: Path, launcher: Launcher) -> None:
    """Run the due ticks of every store under ``root`` (in a worker thread)."""
    for store in http_api.find_stores(root):
        try:
            run_due(root / store, launcher)
        except DurableNbError as exc:  # one store that cannot be read stops no other
            logger.warning("durable_nb: schedules of the store %s: %s", root / store, exc)


def _run_schedules_while_serving(serverapp: Any, root: Path) -> None:
    """A task on the server's loop runs the schedules of the stores under ``root`` every
    few seconds (store work in a thread), from when the loop starts until the server
    shuts down."""
    interval = schedule_interval(os.environ.get(SCHEDULE_INTERVAL_ENV))
    if interval is None:
        serverapp.log.info("durable_nb: schedules are not run (%s is off)", SCHEDULE_INTERVAL_ENV)
        return
    launcher = default_launcher()
    tasks: list[asyncio.Task[None]] = []

    async def passes() -> None:
        while True:
            try:
                await asyncio.to_thread(_schedules_pass, root, launcher)
            except Exception:  # a pass that fails is told, and the next one tries again
                serverapp.log.exception("durable_nb: a pass over the schedules failed")
            await asyncio.sleep(interval)

    def start() -> None:
        tasks.append(asyncio.get_running_loop().create_task(passes()))
        serverapp.log.info("durable_nb: running schedules every %s s", interval)

    # A function-style extension gets no stop hook from Jupyter Server; its shutdown
    # awaits cleanup_extensions() before stopping the loop, so the task ends there.
    cleanup_extensions = serverapp.cleanup_extensions

    async def stop_then_cleanup() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        serverapp.log.info("durable_nb: stopped running schedules")
        await cleanup_extensions()

    serverapp.cleanup_extensions = stop_then_cleanup
    serverapp.io_loop.add_callback(start)
