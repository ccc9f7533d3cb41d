"""The HTTP management API's URLs of an instance (``h.http_urls()``), and finding the
Jupyter server a kernel belongs to.

A kernel is not told its server's URL. Every running Jupyter server writes a
``jpserver-<pid>.json`` file (url, base_url, root_dir, pid) to the runtime folder,
which a kernel it started shares (it inherits the server's environment), and a kernel is
started by its server as a child process. So the server is the one whose pid is the
kernel's parent's; failing that (a kernel started through a wrapper), the only running
server whose root holds the store. ``JPY_SESSION_NAME`` names the notebook, not the
server, so it does not help here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from durable_nb.errors import ConfigurationError

API_PATH = "durable-nb/api"


def instance_urls(api_base: str, store: str, instance_id: str) -> dict[str, str]:
    """The management URLs of one instance under ``api_base``, named as Durable
    Functions names them (``{eventName}`` and ``{text}`` are for the caller to fill)."""
    path = f"{api_base}/stores/{quote(store, safe='')}/instances/{quote(instance_id, safe='')}"
    return {
        "id": instance_id,
        "statusQueryGetUri": path,
        "sendEventPostUri": f"{path}/raiseEvent/{{eventName}}",
        "terminatePostUri": f"{path}/terminate?reason={{text}}",
        "suspendPostUri": f"{path}/suspend?reason={{text}}",
        "resumePostUri": f"{path}/resume?reason={{text}}",
        "rewindPostUri": f"{path}/rewind?reason={{text}}",
        "purgeHistoryDeleteUri": path,
    }


def running_servers() -> list[dict[str, Any]]:
    """The Jupyter servers running on this machine, as their runtime files say."""
    try:
        from jupyter_server.serverapp import list_running_servers
    except ImportError:  # no Jupyter Server installed: no server to find
        return []
    return list(list_running_servers())


def _holds(server: dict[str, Any], folder: Path) -> bool:
    root = Path(str(server.get("root_dir", ""))).expanduser().resolve()
    return folder.is_relative_to(root)


def kernel_server(
    servers: list[dict[str, Any]], store_location: str, parent_pid: int | None = None
) -> dict[str, Any] | None:
    """The server this process was started by, else the only one whose root holds the
    store; None when there is no such server, or more than one could be."""
    parent = os.getppid() if parent_pid is None else parent_pid
    for server in servers:
        if server.get("pid") == parent:
            return server
    folder = Path(store_location).resolve()
    holding = [server for server in servers if _holds(server, folder)]
    return holding[0] if len(holding) == 1 else None


def http_urls(
    store_location: str,
    instance_id: str,
    base_url: str | None = None,
    root_dir: str | None = None,
    servers: list[dict[str, Any]] | None = None,
) -> dict[str, str]:
    """The URLs of ``instance_id`` in the store at ``store_location``. ``base_url`` and
    ``root_dir``: the server's, when it cannot be found (see the module's docstring)."""
    if base_url is None or root_dir is None:
        found = kernel_server(running_servers() if servers is None else servers, store_location)
        if found is None:
            raise ConfigurationError(
                "cannot tell which Jupyter server this kernel belongs to; pass its URL and "
                'root folder: h.http_urls(base_url="http://localhost:8888/", root_dir="...")',
                setting="base_url",
                value=base_url,
                instance_id=instance_id,
            )
        base_url = str(found["url"]) if base_url is None else base_url
        root_dir = str(found["root_dir"]) if root_dir is None else root_dir
    root = Path(root_dir).expanduser().resolve()
    folder = Path(store_location).resolve()
    if not folder.is_relative_to(root):
        raise ConfigurationError(
            f"the store {folder} is outside the server's root {root}: the HTTP API only "
            "reaches stores under it",
            setting="store",
            value=store_location,
            instance_id=instance_id,
        )
    store = folder.relative_to(root).as_posix()
    return instance_urls(f"{base_url.rstrip('/')}/{API_PATH}", store, instance_id)
