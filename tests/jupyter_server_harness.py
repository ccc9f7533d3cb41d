"""A real ``jupyter server`` on loopback for the HTTP tests, with the extension enabled
the way an installed package enables it: by the config file the wheel ships
(jupyter-config/jupyter_server_config.d/durable_nb.json), copied into the server's own
config folder.

    with jupyter_server(base, env={"DURABLE_NB_SCHEDULE_INTERVAL": "off"}) as server:
        code, body = server.api("GET", "stores")

The server gets private config, data and runtime folders under ``base`` (so neither the
user's settings nor other servers leak in), its log at ``base / "server.log"``, a fresh
token and a free port; the ``with`` block starts once ``/api/status`` answers, and the
server is stopped (SIGTERM, Jupyter's own clean shutdown) on leaving it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = ROOT / "jupyter-config" / "jupyter_server_config.d" / "durable_nb.json"
FOLDERS = ("config", "data", "runtime")


class Server:
    """A running server: its address, token, root, Jupyter folders, pid and log."""

    def __init__(
        self, url: str, token: str, root: Path, folders: dict[str, Path], pid: int, log: Path
    ) -> None:
        self.url, self.token, self.root = url, token, root
        self.folders, self.runtime_dir = folders, folders["runtime"]
        self.pid, self.log = pid, log

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        token: str | None = "",
        headers: dict[str, str] | None = None,
        opener: urllib.request.OpenerDirector | None = None,
    ) -> tuple[int, Any]:
        """The status and the JSON body of a request; ``token=""`` is the server's."""
        url = path if path.startswith("http") else self.url + path
        request = urllib.request.Request(url, data=body, method=method)
        if token is not None:
            request.add_header("Authorization", f"token {token or self.token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with (opener or urllib.request.build_opener()).open(request, timeout=30) as reply:
                return reply.status, _parsed(reply.read())
        except urllib.error.HTTPError as error:
            return error.code, _parsed(error.read())

    def api(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        return self.call(method, "/durable-nb/api/" + path, body)


def _parsed(content: bytes) -> Any:
    """JSON, or the text of a page (the login form)."""
    try:
        return json.loads(content or b"null")
    except ValueError:
        return content


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def jupyter_server(
    base: Path,
    root: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    program: Sequence[str] = ("-m", "jupyter_server"),
    start_timeout: float = 60,
) -> Iterator[Server]:
    """A server serving ``root`` (``base / "root"`` unless given; made if missing), its
    folders and log under ``base``, ``env`` added to this process's environment (less
    ``DURABLE_NB_STORE``), run as
    ``python <program> <server options>`` (``program`` is ``-c <source>`` for a wrapper
    that must run before Jupyter, as the fuzz's audited server)."""
    root = base / "root" if root is None else root
    root.mkdir(parents=True, exist_ok=True)
    folders = {name: base / name for name in FOLDERS}
    for folder in folders.values():
        folder.mkdir()
    (folders["config"] / "jupyter_server_config.d").mkdir()
    shutil.copy(SHIPPED_CONFIG, folders["config"] / "jupyter_server_config.d")
    token, port = secrets.token_hex(16), free_port()
    # Not this process's store setting: notebooks/conftest.py points DURABLE_NB_STORE at
    # a folder of its own for the nbval session, outside any server's root.
    inherited = {k: v for k, v in os.environ.items() if k != "DURABLE_NB_STORE"}
    full_env = {
        **inherited,
        # The work tree's package, whichever checkout is installed.
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "JUPYTER_CONFIG_DIR": str(folders["config"]),
        "JUPYTER_DATA_DIR": str(folders["data"]),
        "JUPYTER_RUNTIME_DIR": str(folders["runtime"]),
        **(env or {}),
    }
    command = [
        sys.executable,
        *program,
        "--no-browser",
        "--allow-root",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.token={token}",
        f"--ServerApp.root_dir={root}",
    ]
    log = base / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    try:
        server = Server(f"http://127.0.0.1:{port}", token, root, folders, process.pid, log)
        _wait_until_answering(server, process, start_timeout)
        yield server
    finally:
        _stop(process)


def _wait_until_answering(server: Server, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if server.call("GET", "/api/status")[0] == 200:
                return
        except OSError:  # not listening yet
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"jupyter server did not start:\n{server.log.read_text()}")
        time.sleep(0.2)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM first: Jupyter's own clean shutdown (it stops the extension's schedules,
    which test_schedule_cli checks in the log); SIGKILL only if that hangs."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
