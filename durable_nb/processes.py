"""Processes as the store records them: a pid on a host.

A lease names the process running an instance, and a large write names the process
writing it. Whether such a process is still running can only be checked on its own
host; leases.py and store_values.py both ask here, so neither imports the other.
"""

from __future__ import annotations

import os
import socket
from typing import Any


def this_process() -> dict[str, Any]:
    """This process as a record names it: its ``pid`` and ``host``."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def on_this_host(host: Any) -> bool:
    """Whether ``host``, as a record names it, is the host this process runs on."""
    return bool(host == socket.gethostname())


def process_exists(pid: int) -> bool:
    """Whether process ``pid`` on this host is running (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    try:  # a zombie has exited; only its parent has not collected it yet (Linux)
        with open(f"/proc/{pid}/stat") as stat_file:
            return stat_file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
