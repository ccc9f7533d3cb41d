"""One runner per instance: a lease in the store with an owner and a heartbeat.

A run takes the instance's lease before it replays and renews it every
``HEARTBEAT`` seconds. Another kernel that wants the same instance is refused while
the holder is alive; a holder that is dead (its process is gone, on this host) or
silent (no heartbeat for ``TTL`` seconds, on any host) is taken over.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from durable_nb.errors import InstanceBusyError
from durable_nb.processes import on_this_host, process_exists, this_process

if TYPE_CHECKING:
    from durable_nb.store import CheckpointStore

logger = logging.getLogger(__name__)

HEARTBEAT = 2.0
TTL = 15.0

# Takes the lease from its expected owner (None: nobody) with what goes with it; True
# when taken (LeaseKeeper.acquire).
Taker = Callable[[str | None, dict[str, Any]], bool]

# Each run's hold of a lease is named host:pid:serial. The serial starts at random, as a
# pid can come back after a restart: one draw per process, not a uuid4 per run.
_serials = itertools.count(int.from_bytes(os.urandom(4), "big"))


def holder_alive(lease: dict[str, Any], now: float, ttl: float = TTL) -> bool:
    """Whether the lease's owner still counts as running the instance."""
    if now - float(lease.get("heartbeat", 0.0)) > ttl:
        return False  # silent
    if on_this_host(lease.get("host")):
        return process_exists(int(lease.get("pid", -1)))
    return True


def describe(lease: dict[str, Any], now: float) -> str:
    since = _dt.datetime.fromtimestamp(float(lease.get("since", 0.0))).strftime("%H:%M:%S")
    beat = now - float(lease.get("heartbeat", 0.0))
    return (
        f"pid {lease.get('pid')} on host {lease.get('host')}, since {since} "
        f"(last heartbeat {beat:.1f} s ago)"
    )


class LeaseKeeper:
    """Takes, renews and gives back the lease of one instance for one run."""

    def __init__(self, store: CheckpointStore, instance_id: str, ttl: float = TTL) -> None:
        self.store = store
        self.instance_id = instance_id
        self.ttl = ttl
        serial = next(_serials) & 0xFFFFFFFF
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{serial:08x}"
        self._since = 0.0
        self._last_renewal = 0.0
        self.held = False

    def _lease(self, now: float) -> dict[str, Any]:
        return {
            "owner": self.owner,
            **this_process(),
            "since": self._since,
            "heartbeat": now,
        }

    async def acquire_waiting(self, patience: float, take: Taker | None = None) -> None:
        """Take the lease, waiting up to ``patience`` seconds for a live holder to finish
        (``take``: as :meth:`acquire`)."""
        deadline = time.monotonic() + patience
        while True:
            try:
                self.acquire(take)
                return
            except InstanceBusyError:
                if time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def acquire(self, take: Taker | None = None) -> None:
        """Take the lease, or raise InstanceBusyError naming the live holder.

        ``take(expected, lease)`` takes it instead of a plain swap from ``expected``, so
        that what must be written with it is (a run's record): True when it did."""
        for attempt in range(6):  # lost races with another taker are retried
            now = time.time()
            # Most instances have no lease when a run starts (the last run gave it back):
            # the first attempt takes it as free, without reading it; a lease there makes
            # the swap fail, and the next attempt reads whose it is.
            current = self.store.get_lease(self.instance_id) if attempt else None
            if current is not None and holder_alive(current, now, self.ttl):
                raise InstanceBusyError(
                    f"instance {self.instance_id!r} is being run by {describe(current, now)}; "
                    "wait for that run to end, or stop that kernel (its lease is taken over "
                    f"{self.ttl:g} s after its last heartbeat)",
                    instance_id=self.instance_id,
                )
            if current is not None:
                logger.info("taking over the lease of %s from %s", self.instance_id, current)
            self._since = now
            expected = current["owner"] if current is not None else None
            lease = self._lease(now)
            if (
                take(expected, lease)
                if take is not None
                else self.store.swap_lease(self.instance_id, expected, lease)
            ):
                self.held, self._last_renewal = True, now
                return
        raise InstanceBusyError(
            f"instance {self.instance_id!r}: could not take its lease (others keep taking it)",
            instance_id=self.instance_id,
        )

    def renew_if_due(self) -> bool:
        """Renew every HEARTBEAT seconds; False if the lease was taken from us."""
        now = time.time()
        if not self.held or now - self._last_renewal < HEARTBEAT:
            return True
        if self.store.swap_lease(self.instance_id, self.owner, self._lease(now)):
            self._last_renewal = now
            return True
        self.held = False
        return False

    def given_back(self) -> None:
        """The lease went back with the run's last write (``CheckpointStore.close_run``)."""
        self.held = False

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                self.store.swap_lease(self.instance_id, self.owner, None)
            except Exception:
                logger.warning("could not release the lease of %s", self.instance_id, exc_info=True)
