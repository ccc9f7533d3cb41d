"""The folder of a checkpoint store: where it is, that it stays private, and opening
diskcache in it even while another process is setting the same folder up."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

from durable_nb.errors import StoreError

logger = logging.getLogger(__name__)

STORE_ENV = "DURABLE_NB_STORE"
DEFAULT_FOLDER = ".durable_nb"


def check_private(path: Path) -> None:
    """Refuse a folder others can write to: loading a pickle from it would run their code."""
    info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022 or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
        raise StoreError(
            f"the checkpoint store at {path.resolve()} can be written by other users "
            f"(mode {mode:o}, owner uid {info.st_uid}); whoever can write there could make "
            "this kernel run their code when it loads checkpoints. If you trust its "
            f"contents, make it yours and private (chmod 700 {path}), or use another folder.",
            location=str(path.resolve()),
        )
    if mode & 0o077:
        path.chmod(0o700)  # readable by others: ours, so make it private


def default_location() -> Path:
    """``$DURABLE_NB_STORE`` if set, else ``.durable_nb`` in the working directory."""
    return Path(os.environ.get(STORE_ENV) or DEFAULT_FOLDER)


_OPEN_RETRY_SECONDS = 30.0


def open_cache(path: Path, disk: type) -> Any:
    """diskcache's Cache in ``path``, its values written by ``disk``.

    Setting a folder up runs statements that SQLite refuses at once ("database is
    locked", without waiting for its timeout) while another process sets up the same
    new folder, as two kernels started together do: those are retried for a while
    instead of failing the run."""
    import diskcache

    deadline = time.monotonic() + _OPEN_RETRY_SECONDS
    delay = 0.02
    while True:
        try:
            # eviction_policy='none': the default policy would silently evict
            # checkpoints once the cache passes its 1 GB size limit.
            # tag_index: an instance's large results share a tag, so purge deletes them
            # with a few indexed statements.
            return diskcache.Cache(
                str(path),
                eviction_policy="none",
                tag_index=True,
                disk=disk,
            )
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
            logger.debug("store %s is being set up by another process; retrying", path)
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
